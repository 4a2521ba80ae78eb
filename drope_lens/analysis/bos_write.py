"""BOS write (study Exp 5, §8): how much each head writes from the BOS value into the stream.

Per text, layer ``l`` and head ``h``, on the real tokens:

* ``v_norm = ‖v[0, kv(h)]‖₂``: the pre-attention value vector at BOS (``hook_v``; with GQA the head's
  KV head);
* ``attn`` = mean over query rows 1…T−1 of ``A[q, 0]`` from ``hook_pattern`` (the real post-RoPE
  attention, fp32; the study used pre-RoPE scores clamped at ±100, B1);
* ``write = attn · v_norm``. Layer values are head means, then text means (the study's).

BOS-V ablation (:func:`bos_v_ablation_hooks`): ``hook_v`` at absolute position 0 set to zero, at
one layer (the spike layer: arg-max of the mean BOS ratio ``‖x₀‖ / mean ‖xₜ‖`` of the residual,
measured in the same pass) or at all layers; :func:`bos_write_experiment` adds perplexity for each.
Decode steps of a KV cache are never touched (:class:`~drope_lens.hooks.positions.PositionTracker`);
the cached BOS value stays ablated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union, cast

import numpy as np
import torch
from jaxtyping import Float, Int

from drope_lens.analysis import bos_metrics, sinks
from drope_lens.analysis.perplexity import PerplexityResult, perplexity
from drope_lens.frames import cell_frame
from drope_lens.hooks.bos import check_layer
from drope_lens.hooks.positions import zero_bos_hooks
from drope_lens.hooks.types import FwdHook, FwdHooks
from drope_lens.loading.forward import hooked_passes, model_label, to_batch
from drope_lens.options import DEFAULT_BATCH_SIZE
from drope_lens.validation import check_batch_size


def bos_write_from(
    pattern: Float[torch.Tensor, "batch head q k"],
    v: Float[torch.Tensor, "batch pos kv_head d_head"],
    lengths: Int[torch.Tensor, " batch"],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(attn, v_norm, write)``, each ``[batch, head]`` float64, for one layer's pattern and values."""
    H, G = pattern.shape[1], v.shape[2]
    if H % G:
        raise ValueError(f"{H} query heads are not a multiple of {G} KV heads")
    attn = sinks.sink_scores(pattern, lengths, include_bos_row=False)
    v_norm = v[:, 0].double().norm(dim=-1).repeat_interleave(H // G, dim=1)
    return attn, v_norm, attn * v_norm


def bos_v_ablation_hooks(model, layers: Union[int, Sequence[int], str] = "all") -> FwdHooks:
    """Hooks zeroing ``blocks.{l}.attn.hook_v`` at absolute position 0 (one layer, a list, or ``"all"``)."""
    if layers == "all":
        layers = list(range(model.cfg.n_layers))
    elif isinstance(layers, int):
        layers = [layers]
    layers = [check_layer(model, li) for li in cast(Sequence[int], layers)]
    return zero_bos_hooks([f"blocks.{li}.attn.hook_v" for li in layers])


@dataclass
class BosWrite:
    """BOS value norms, attention to BOS and their product per text, layer and head."""

    model: str
    v_norm: Float[np.ndarray, "text layer head"]
    attn: Float[np.ndarray, "text layer head"]
    write: Float[np.ndarray, "text layer head"]
    bos_ratio: Float[np.ndarray, "text layer"]
    ppl: dict[str, PerplexityResult] = field(default_factory=dict)  # baseline, spike, all
    options: dict[str, Any] = field(default_factory=dict)

    def layer_means(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).mean(-1).mean(0) for k in ("v_norm", "attn", "write")}

    @property
    def spike_layer(self) -> int:
        return int(np.argmax(self.bos_ratio.mean(0)))

    def summary(self) -> dict[str, Any]:
        lm = self.layer_means()
        out = {
            "model": self.model,
            "mean_v_norm": float(lm["v_norm"].mean()),
            "mean_attn": float(lm["attn"].mean()),
            "mean_write": float(lm["write"].mean()),
            "max_write_layer": int(np.argmax(lm["write"])),
            "max_write": float(lm["write"].max()),
            "spike_layer": self.spike_layer,
        }
        if self.ppl:
            base = self.ppl["baseline"].ppl
            out.update({f"ppl_{k}": v.ppl for k, v in self.ppl.items()})
            out.update({f"ppl_ratio_{k}": v.ppl / base for k, v in self.ppl.items() if k != "baseline"})
        return out

    def to_dict(self) -> dict[str, Any]:
        lm = self.layer_means()
        return {
            "model": self.model,
            **{f"layer_{k}": v.tolist() for k, v in lm.items()},
            "head_write": self.write.mean(0).tolist(),
            "bos_ratio": self.bos_ratio.mean(0).tolist(),
            "ppl": {k: v.to_dict() for k, v in self.ppl.items()},
            "summary": self.summary(),
            "options": self.options,
        }

    def to_dataframe(self):
        """One row per (layer, head), text means."""
        return cell_frame(self.model, ("layer", "head"), {k: getattr(self, k) for k in ("v_norm", "attn", "write")})


@torch.no_grad()
def bos_write(
    model,
    inputs,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    fwd_hooks: Sequence[FwdHook] = (),
) -> BosWrite:
    """BOS write per text, layer and head, and the BOS ratio per layer, in one pass per batch."""
    check_batch_size(batch_size)
    batch = to_batch(model, inputs, max_length=max_length)
    if int(batch.lengths.min()) < 2:
        raise ValueError("Every text needs at least 2 tokens (BOS + one query).")
    n, L, H = len(batch), model.cfg.n_layers, model.cfg.n_heads
    v_norm, attn, write = (np.full((n, L, H), np.nan) for _ in range(3))
    ratio = np.full((n, L), np.nan)
    state: dict[str, Any] = {}

    def stash_v(v: torch.Tensor, hook) -> None:
        state["v"] = v.detach()

    def on_pattern(pattern: torch.Tensor, hook) -> None:
        layer, idx, lengths = hook.layer(), state["idx"], state["batch"].lengths.to(pattern.device)
        sinks.check_pattern(pattern, lengths, layer)
        a, vn, w = bos_write_from(pattern, state.pop("v"), lengths)
        attn[idx, layer], v_norm[idx, layer], write[idx, layer] = a.cpu().numpy(), vn.cpu().numpy(), w.cpu().numpy()

    def on_resid(resid: torch.Tensor, hook) -> None:
        bos, other = bos_metrics.bos_norms(resid, state["batch"].lengths.to(resid.device))
        ratio[state["idx"], hook.layer()] = (bos / other).cpu().numpy()

    hooks = list(fwd_hooks)
    for li in range(L):
        hooks += [
            (f"blocks.{li}.attn.hook_v", stash_v),
            (f"blocks.{li}.attn.hook_pattern", on_pattern),
            (f"blocks.{li}.hook_resid_post", on_resid),
        ]
    hooked_passes(model, batch, hooks, state, batch_size=batch_size)
    return BosWrite(
        model=model_label(model),
        v_norm=v_norm,
        attn=attn,
        write=write,
        bos_ratio=ratio,
        options={"max_length": max_length, "attention": "native hook_pattern (fp32)", "rows": "1..T-1"},
    )


def bos_write_experiment(
    model,
    inputs,
    ppl_inputs=None,
    *,
    spike_layer: Optional[int] = None,
    baseline: Optional[PerplexityResult] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
) -> BosWrite:
    """:func:`bos_write` plus perplexity on ``ppl_inputs`` (default ``inputs``): baseline, BOS-V
    zeroed at the spike layer (default: this pass's arg-max BOS ratio) and at all layers."""
    res = bos_write(model, inputs, batch_size=batch_size, max_length=max_length)
    ppl_inputs = inputs if ppl_inputs is None else ppl_inputs
    spike = res.spike_layer if spike_layer is None else check_layer(model, spike_layer)
    kw: dict[str, Any] = dict(batch_size=batch_size, max_length=max_length)
    res.ppl = {
        "baseline": baseline or perplexity(model, ppl_inputs, **kw),
        "spike": perplexity(model, ppl_inputs, fwd_hooks=bos_v_ablation_hooks(model, spike), **kw),
        "all": perplexity(model, ppl_inputs, fwd_hooks=bos_v_ablation_hooks(model, "all"), **kw),
    }
    res.options["ablation_layer"] = spike
    return res
