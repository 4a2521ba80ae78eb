"""Jin-style mean replacement of Q/K(/V) dims as TransformerLens hooks, KV-cache decode steps included.

:func:`mean_replace` is the replacement of one activation; :func:`qk_mean_replacement_hooks` (see its
docstring for the decode policy) and :func:`mean_replacement_hooks` build the hooks. Token
statistics use the real-token mask declared with :func:`~drope_lens.hooks.mask.real_token_mask`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from jaxtyping import Bool, Float

from drope_lens.hooks.mask import current_real_mask
from drope_lens.hooks.points import check_layers, hook_name
from drope_lens.hooks.positions import PositionTracker
from drope_lens.hooks.types import FwdHooks, HookFn
from drope_lens.options import DECODE_MODES, MeanReplacementOptions, takes_options  # noqa: F401  (re-exported)

_D = MeanReplacementOptions.default


def mean_replace(
    x: Float[torch.Tensor, "batch pos head d_head"],
    real: Bool[torch.Tensor, "batch pos"],
    *,
    k: int,
    threshold: Optional[float] = None,
    largest: bool = True,
) -> tuple[torch.Tensor, Bool[torch.Tensor, "batch head d_head"], torch.Tensor]:
    """Jin-style replacement of one forward's activation: ``(new_x, selected, means)``.

    Per sequence and head: the ``k`` dims with the largest L2 norm over real tokens are selected
    (with ``threshold``: only those whose norm also exceeds ``threshold`` x the head's mean norm,
    the study's J-B) and set, at every real position, to that channel's mean over the real tokens
    (BOS included). Norms and means are computed in float32, the mean cast back to ``x.dtype``.
    ``largest=False`` selects the ``k`` dims with the *smallest* norms instead (Jin et al.'s control).
    """
    if not largest and threshold is not None:
        raise ValueError("threshold gates the largest dims; it cannot be combined with largest=False.")
    xf = x.float()
    w = real.to(xf.dtype)[:, :, None, None]
    norms = (xf * xf * w).sum(1).sqrt()  # [b, h, d]
    top = norms.topk(k, dim=-1, largest=largest).indices
    selected = torch.zeros_like(norms, dtype=torch.bool).scatter_(-1, top, True)
    if threshold is not None:
        selected &= norms > threshold * norms.mean(-1, keepdim=True)
    means = ((xf * w).sum(1) / w.sum(1).clamp_min(1.0)).to(x.dtype)
    where = selected[:, None] & real[:, :, None, None]
    return torch.where(where, means[:, None], x), selected, means


class _MeanReplacement:
    """Shared state of one :func:`mean_replacement_hooks` call."""

    def __init__(self, tracker: PositionTracker, *, k: int, threshold, decode: str, rotary: str, largest: bool = True):
        self.tracker, self.k, self.threshold, self.decode, self.rotary = tracker, k, threshold, decode, rotary
        self.largest = largest
        self.prefill: dict[str, tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.has_layer0 = False

    def guard(self, k: torch.Tensor, hook=None) -> None:
        """At layer 0's hook_rot_k (after the tracker): refuse what layer 0 could not handle."""
        tr = self.tracker
        if tr.offset > 0 and self.decode == "raise":
            raise RuntimeError(
                "Mean replacement was set up with decode='raise' and a KV-cache decode step arrived. "
                "Use decode='skip' (perturb the prompt only, like the study and Jin) or run without cache."
            )
        if tr.offset > 0 and tr.n_new > 1 and self.has_layer0:
            raise NotImplementedError(
                f"A {tr.n_new}-token continuation on a KV cache (offset {tr.offset}) reached "
                "mean-replacement hooks. Layer 0's hook_q/hook_k fire before TransformerLens "
                "reveals the cache offset, so only one-token decode steps (model.generate) and "
                "cache-free passes are supported. Feed the continuation one token at a time."
            )

    def hook(self, layer: int, tensor: str) -> HookFn:
        full_sequence_k = self.rotary == "post" and tensor == "k"

        def fn(x: torch.Tensor, hook=None):
            if layer == 0 and not full_sequence_k:
                # Fires before the tracker knows this pass's offset. A 1-token pass is left as is
                # (replacing a channel by its mean over one token is the identity); a multi-token
                # pass is a prefill, since multi-token cache continuations are refused by guard().
                decode_step = False
                if x.shape[1] == 1:
                    return None
            else:
                decode_step = self.tracker.offset > 0
            if not decode_step:
                new, selected, means = mean_replace(
                    x, current_real_mask(x), k=self.k, threshold=self.threshold, largest=self.largest
                )
                if full_sequence_k:
                    self.prefill[hook.name if hook is not None else str(layer)] = (
                        x.shape[1],
                        selected,
                        means,
                        current_real_mask(x),
                    )
                return new
            if not full_sequence_k:
                return None  # decode="skip": new tokens untouched; pre-RoPE cached keys stay perturbed
            # post-RoPE K on a decode step: TransformerLens caches the *pre-rotary* k and hook_rot_k
            # sees cached + new positions, so re-apply the prefill replacement to the prompt part.
            key = hook.name if hook is not None else str(layer)
            if key not in self.prefill:
                raise RuntimeError(
                    f"{key}: decode step without a recorded prefill. Run the prompt through the "
                    "model under these hooks first (model.generate does)."
                )
            n_prompt, selected, means, real = self.prefill[key]
            if x.shape[0] != selected.shape[0] or x.shape[1] < n_prompt:
                raise RuntimeError(f"{key}: decode step does not continue the recorded prompt.")
            where = selected[:, None] & real[:, :, None, None]
            head = torch.where(where, means[:, None], x[:, :n_prompt])
            return torch.cat([head, x[:, n_prompt:]], dim=1)

        return fn


@takes_options(MeanReplacementOptions)
def mean_replacement_hooks(
    model,
    *,
    tensors: Sequence[str] = _D("tensors"),
    k: int = _D("k"),
    rotary: str = _D("rotary"),
    layers: Optional[Sequence[int]] = _D("layers"),
    decode: str = _D("decode"),
    threshold: Optional[float] = _D("threshold"),
    largest: bool = _D("largest"),
) -> FwdHooks:
    """Jin-style mean replacement on the given tensors; see :func:`qk_mean_replacement_hooks`.

    ``options=``: a :class:`~drope_lens.options.MeanReplacementOptions` filling the keywords left
    out (keywords given override it). ``largest=False``: replace the ``k`` smallest-norm dims
    instead (Jin et al.'s control)."""
    d_head = model.cfg.d_head
    if not isinstance(k, int) or not 1 <= k <= d_head:
        raise ValueError(f"k must be an integer in 1..d_head={d_head}, got {k!r}")
    # the other checks (the str choices become its Literal fields)
    o = MeanReplacementOptions(
        tensors=tensors,  # type: ignore[arg-type]
        k=k,
        rotary=rotary,  # type: ignore[arg-type]
        layers=layers,  # type: ignore[arg-type]
        decode=decode,  # type: ignore[arg-type]
        threshold=threshold,
        largest=largest,
    )
    tensors, k, rotary, decode, threshold, largest = o.tensors, o.k, o.rotary, o.decode, o.threshold, o.largest
    layers = check_layers(model, o.layers)
    tracker = PositionTracker()
    state = _MeanReplacement(tracker, k=k, threshold=threshold, decode=decode, rotary=rotary, largest=largest)
    hooks: FwdHooks = list(tracker.hooks())
    state.has_layer0 = 0 in layers
    hooks.append(("blocks.0.attn.hook_rot_k", state.guard))
    for layer in layers:
        for t in tensors:
            hooks.append((hook_name(layer, t, rotary), state.hook(layer, t)))
    return hooks


def qk_mean_replacement_hooks(model, options: Optional[MeanReplacementOptions] = None, **kwargs) -> FwdHooks:
    """Jin-style mean replacement on Q and K of all (or the given) layers.

    ``options`` (a :class:`~drope_lens.options.MeanReplacementOptions`) and the keywords (which
    override it) are those of :func:`mean_replacement_hooks` except ``tensors``: ``k`` (1),
    ``rotary`` (``"pre"``), ``layers`` (all), ``decode`` (``"skip"``), ``threshold`` (None),
    ``largest`` (True).

    On every full (prefill / cache-free) pass, per sequence and head, the ``k`` dims with the largest
    L2 norm over the real tokens are replaced at every real position by that channel's mean over the
    real tokens (BOS included, padding excluded; see :func:`~drope_lens.hooks.mask.real_token_mask`).
    ``threshold`` (e.g. 5.0) adds the study's J-B gate: replace only dims whose norm exceeds ``threshold`` x the head's
    mean norm. With ``threshold=None`` this is the study's J-A (``rotary="pre"``: ``hook_q/hook_k``,
    the study) or Jin's own variant (``rotary="post"``: ``hook_rot_q/hook_rot_k``).
    Differences from the study: dims and means are per sequence (the study took the dims from batch
    element 0 and the mean over the whole padded batch) and means are accumulated in float32.

    KV-cache decode steps (``decode="skip"``, the study's and Jin's behaviour): generated tokens are
    never perturbed, the prompt stays perturbed. Pre-RoPE, TransformerLens caches ``k`` after
    ``hook_k``, so the cached prompt keys are the perturbed ones. Post-RoPE, the cache holds the
    un-rotated, unperturbed keys and ``hook_rot_k`` sees all positions again on each step, so the
    prefill's replacement (same dims, same means) is re-applied to the prompt positions. Either way
    cached generation equals the cache-free computation that perturbs only the prompt positions.
    Decode steps are recognised with :class:`~drope_lens.hooks.positions.PositionTracker` (whose
    hooks are in the returned list), not by their length. Multi-token continuations on a cache are
    refused (layer 0 cannot tell them from a prompt). ``decode="raise"`` refuses any decode step.
    ``largest=False`` replaces the ``k`` smallest-norm dims instead (Jin et al.'s control).
    """
    if options is not None:
        if not isinstance(options, MeanReplacementOptions):
            raise TypeError(f"options must be a MeanReplacementOptions, got {type(options).__name__}")
        kwargs = {**options.qk_kwargs(), **kwargs}
    return mean_replacement_hooks(model, tensors=("q", "k"), **kwargs)
