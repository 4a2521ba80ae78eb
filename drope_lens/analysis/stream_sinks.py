"""Sink statistics streamed from q/k in query chunks: no ``[head, T, T]`` pattern is ever built.

The phase analysis needs one column of each attention pattern, ``A[q, 0]`` (attention of query row
``q`` to BOS), for the sink score and Gu et al.'s importance (:mod:`drope_lens.analysis.sinks`).
With ``lse_q = logsumexp_k s[q, k]`` over the keys row ``q`` may see, ``A[q, 0] = exp(s[q, 0] − lse_q)``.
:class:`SinkStream` hooks ``hook_rot_q`` and ``hook_rot_k`` (the post-rotary, post-q/k-norm
tensors the attention itself uses; the hooks run after any intervention on those hook points),
computes the fp32 scores ``q·k / attn_scale`` for ``chunk`` query rows at a time with the causal
mask and the text's length (right padding), repeats K heads for GQA, and keeps ``A[:, :, q, 0]``:
memory O(batch × head × chunk × T) per layer instead of O(T²), and the model itself runs the fast
attention path (:mod:`drope_lens.loading.surface`) because nobody hooks ``hook_pattern``.
Scores with NaN/inf raise :class:`~drope_lens.errors.NonFiniteError` naming the layer.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from jaxtyping import Float, Int

from drope_lens.errors import NonFiniteError
from drope_lens.loading.surface import attention_scale

#: Scores held at once per layer (elements of ``[batch, head, chunk, T]`` fp32): 64 MiB.
DEFAULT_BUDGET = 1 << 24


def first_column(
    q: Float[torch.Tensor, "batch pos head d_head"],
    k: Float[torch.Tensor, "batch pos kv_head d_head"],
    lengths: Int[torch.Tensor, " batch"],
    attn_scale: float,
    *,
    layer: int = -1,
    chunk: Optional[int] = None,
) -> Float[torch.Tensor, "batch head pos"]:
    """``A[b, h, q, 0]`` of causal ``softmax(q kᵀ / attn_scale)`` restricted to each text's keys.

    Rows at or past a text's length (padding) are returned but meaningless. fp32 throughout.
    """
    B, T, H, D = q.shape
    qf = q.float().transpose(1, 2)  # [B, H, T, D]
    kf = k.float()
    if kf.shape[2] != H:
        kf = kf.repeat_interleave(H // kf.shape[2], dim=2)
    kf = kf.transpose(1, 2)  # [B, H, T, D]
    if chunk is None:
        chunk = max(1, min(T, DEFAULT_BUDGET // max(1, B * H * T)))
    key_pos = torch.arange(T, device=q.device)
    key_real = key_pos[None, :] < lengths.to(q.device)[:, None]  # [B, T]
    out = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    for start in range(0, T, chunk):
        stop = min(T, start + chunk)
        qc = qf[:, :, start:stop]  # [B, H, c, D]
        # only keys < stop can be seen by these rows
        scores = torch.matmul(qc, kf[:, :, :stop].transpose(-1, -2)) / attn_scale  # [B, H, c, stop]
        if not bool(torch.isfinite(scores.sum())) and not bool(torch.isfinite(scores).all()):
            raise NonFiniteError(
                f"Layer {layer}: attention scores contain NaN/inf (query rows {start}..{stop - 1}). "
                "Keep cfg.fp32_attention=True, load in float32 or bfloat16 and check your hooks."
            )
        rows = torch.arange(start, stop, device=q.device)
        visible = (key_pos[None, :stop] <= rows[:, None])[None, None] & key_real[:, None, None, :stop]
        scores = scores.masked_fill(~visible, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # [B, H, c]
        s0 = scores[..., 0]  # key 0 is visible to every row
        out[:, :, start:stop] = torch.exp(s0 - lse)
        del scores
    return out


class SinkStream:
    """Hook pair per layer that hands ``A[:, :, q, 0]`` of each layer to ``sink(column, layer)``.

    ``lengths`` must be set (``set_lengths``) before every forward pass.
    """

    def __init__(self, model, sink: Callable[[torch.Tensor, int], None], *, chunk: Optional[int] = None):
        self.model, self.sink, self.chunk = model, sink, chunk
        self.lengths: Optional[torch.Tensor] = None
        self._q: dict[int, torch.Tensor] = {}

    def set_lengths(self, lengths: torch.Tensor) -> None:
        self.lengths = lengths

    def _rot_q(self, q: torch.Tensor, hook) -> None:
        self._q[hook.layer()] = q.detach()

    def _rot_k(self, k: torch.Tensor, hook) -> None:
        layer = hook.layer()
        q = self._q.pop(layer)
        if self.lengths is None:
            raise RuntimeError("SinkStream.set_lengths must be called before the forward pass.")
        if q.shape[1] != k.shape[1]:
            raise ValueError("Streaming sink scores need a full forward pass (no KV cache).")
        scale = attention_scale(self.model, layer)
        col = first_column(q, k.detach(), self.lengths, scale, layer=layer, chunk=self.chunk)
        self.sink(col, layer)

    def hooks(self) -> list[tuple[str, Callable]]:
        out = []
        for layer in range(self.model.cfg.n_layers):
            out += [(f"blocks.{layer}.attn.hook_rot_q", self._rot_q), (f"blocks.{layer}.attn.hook_rot_k", self._rot_k)]
        return out
