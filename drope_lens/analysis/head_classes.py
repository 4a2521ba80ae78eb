"""Attention-head classes and profiles (study Exp 7, §8), on the models' real attention.

Per text, layer and head, from ``hook_pattern`` (post-RoPE, fp32; the study's Exp 7 used pre-RoPE
manual scores clamped to ±100 — bug B1), over the text's real tokens ``A[q, k]``:

* ``entropy`` = mean over query rows of ``−Σ_k A ln A`` (``0 ln 0 = 0``; no clamp);
* ``bos`` = mean over query rows of ``A[q, 0]`` (rows 1…T−1 by default; ``include_bos_row``);
* ``local`` = mean over rows ``q ≥ 1`` of ``Σ_{k=max(0,q−w)}^{q−1} A[q, k]`` (the previous ``w`` = 5
  keys, self excluded, BOS included when inside the window — the study's definition);
* ``decay[d]`` = mean over rows ``q ≥ d`` of ``A[q, q−d]`` for ``d < max_distance`` (distance profile).

Heads are classified on the text-mean metrics by :func:`classify_heads` (the study's rule):
sink if ``bos ≥ sink_threshold``; else local if ``local ≥ local_threshold``; else distributed if the
entropy exceeds the layer's median head entropy; else mixed. The pattern functions are pure, so they
are tested on constructed patterns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from drope_lens.analysis import sinks
from drope_lens.frames import cell_frame
from drope_lens.hooks.types import FwdHook
from drope_lens.loading.forward import hooked_passes, model_label, to_batch
from drope_lens.options import DEFAULT_BATCH_SIZE, DEFAULT_TAU
from drope_lens.validation import check_batch_size

CLASSES = ("sink", "local", "distributed", "mixed")
#: The study's local-head threshold (attention share within the window); sink heads use τ (DEFAULT_TAU).
LOCAL_THRESHOLD = 0.3


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    """NaN-ignoring mean; all-NaN slices (distances beyond every text) stay NaN without a warning."""
    n = (~np.isnan(a)).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(a, axis) / np.maximum(n, 1), np.nan)


def pattern_metrics(
    pattern: Float[torch.Tensor, "head q k"],
    *,
    window: int = 5,
    max_distance: int = 50,
    include_bos_row: bool = False,
) -> dict[str, torch.Tensor]:
    """Entropy, BOS attention, local mass ``[head]`` and the decay profile ``[head, distance]``.

    ``pattern`` is one text's attention over its ``T`` real tokens (causal rows summing to 1).
    Distances ``d ≥ T`` have no row and are NaN in the profile.
    """
    if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2]:
        raise ValueError(f"pattern must be [head, T, T], got {tuple(pattern.shape)}")
    if window < 1 or max_distance < 1:
        raise ValueError("window and max_distance must be >= 1")
    p = pattern.double()
    H, T, _ = p.shape
    ent = -torch.special.xlogy(p, p).sum(-1)  # [head, q]
    entropy = ent.mean(-1)
    start = 0 if include_bos_row else 1
    if T - start < 1:
        raise ValueError("A text of length 1 has no query row without the BOS row.")
    bos = p[:, start:, 0].mean(-1)
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    win = ((k < q) & (k >= q - window)).to(p.dtype)  # previous `window` keys, self excluded
    local = (p * win).sum(-1)[:, 1:].mean(-1) if T > 1 else torch.full((H,), float("nan"), dtype=p.dtype)
    decay = torch.full((H, max_distance), float("nan"), dtype=p.dtype)
    for d in range(min(max_distance, T)):
        decay[:, d] = torch.diagonal(p, offset=-d, dim1=1, dim2=2).mean(-1)
    return {"entropy": entropy, "bos": bos, "local": local, "decay": decay}


def classify_heads(
    bos: Float[torch.Tensor, "layer head"],
    local: Float[torch.Tensor, "layer head"],
    entropy: Float[torch.Tensor, "layer head"],
    *,
    sink_threshold: float = DEFAULT_TAU,
    local_threshold: float = LOCAL_THRESHOLD,
) -> Int[torch.Tensor, "layer head"]:
    """Class index into :data:`CLASSES` per head (the study's rule; median = the layer's heads)."""
    bos, local, entropy = (torch.as_tensor(x, dtype=torch.float64) for x in (bos, local, entropy))
    if not (bos.shape == local.shape == entropy.shape) or bos.ndim != 2:
        raise ValueError("bos, local and entropy must all be [layer, head]")
    med = torch.quantile(entropy, 0.5, dim=-1, keepdim=True)  # true median (np.median)
    cls = torch.full(bos.shape, 3, dtype=torch.long)
    cls[entropy > med] = 2
    cls[local >= local_threshold] = 1
    cls[bos >= sink_threshold] = 0
    return cls


@dataclass
class HeadClasses:
    """Per-head attention metrics (per text) and the classes of the text-mean metrics."""

    model: str
    entropy: Float[np.ndarray, "text layer head"]
    bos: Float[np.ndarray, "text layer head"]
    local: Float[np.ndarray, "text layer head"]
    decay: Float[np.ndarray, "layer head distance"]  # mean over texts (NaN-aware)
    classes: Int[np.ndarray, "layer head"]
    options: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {c: int((self.classes == i).sum()) for i, c in enumerate(CLASSES)}

    def layer_counts(self) -> Int[np.ndarray, "layer class"]:
        return np.stack([(self.classes == i).sum(-1) for i in range(len(CLASSES))], -1)

    def summary(self) -> dict[str, Any]:
        n = self.classes.size
        c = self.counts()
        return {
            "model": self.model,
            "n_heads": n,
            **c,
            **{f"{k}_share": v / n for k, v in c.items()},
            "mean_bos": float(self.bos.mean()),
            "mean_local": float(self.local.mean()),
            "mean_entropy": float(self.entropy.mean()),
            "layer_bos": self.bos.mean((0, 2)).tolist(),
            "layer_local": self.local.mean((0, 2)).tolist(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "classes_names": list(CLASSES),
            "classes": self.classes.tolist(),
            "entropy": self.entropy.mean(0).tolist(),
            "bos": self.bos.mean(0).tolist(),
            "local": self.local.mean(0).tolist(),
            "decay_layer_mean": _nanmean(self.decay, 1).tolist(),
            "summary": self.summary(),
            "options": self.options,
        }

    def to_dataframe(self):
        """One row per (layer, head): text-mean metrics and the class."""
        names = np.asarray(CLASSES, dtype=object)[self.classes]
        columns = {"class": names, "bos": self.bos, "local": self.local, "entropy": self.entropy}
        return cell_frame(self.model, ("layer", "head"), columns)


@torch.no_grad()
def head_classes(
    model,
    inputs,
    *,
    sink_threshold: float = DEFAULT_TAU,
    local_threshold: float = LOCAL_THRESHOLD,
    window: int = 5,
    max_distance: int = 50,
    include_bos_row: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    fwd_hooks: Sequence[FwdHook] = (),
) -> HeadClasses:
    """Head metrics from ``hook_pattern`` per text, and the study's classes (see module docstring)."""
    for name, v in (("sink_threshold", sink_threshold), ("local_threshold", local_threshold)):
        sinks.check_tau(v, name)
    check_batch_size(batch_size)
    batch = to_batch(model, inputs, max_length=max_length)
    n, L, H = len(batch), model.cfg.n_layers, model.cfg.n_heads
    ent, bos, loc = (np.full((n, L, H), np.nan) for _ in range(3))
    decay_sum = np.zeros((L, H, max_distance))
    decay_n = np.zeros((L, H, max_distance))
    lengths = batch.lengths.tolist()
    state: dict[str, Any] = {}

    def collect(pattern: torch.Tensor, hook) -> None:
        layer = hook.layer()
        idx = state["idx"]
        sinks.check_pattern(pattern, torch.tensor([lengths[i] for i in idx]), layer)
        for row, text in enumerate(idx):
            m = lengths[text]
            met = pattern_metrics(
                pattern[row, :, :m, :m], window=window, max_distance=max_distance, include_bos_row=include_bos_row
            )
            ent[text, layer], bos[text, layer], loc[text, layer] = (
                met[k].cpu().numpy() for k in ("entropy", "bos", "local")
            )
            d = met["decay"].cpu().numpy()
            ok = ~np.isnan(d)
            decay_sum[layer][ok] += d[ok]
            decay_n[layer] += ok

    hooks = list(fwd_hooks) + [(f"blocks.{li}.attn.hook_pattern", collect) for li in range(L)]
    hooked_passes(model, batch, hooks, state, batch_size=batch_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        decay = decay_sum / decay_n
    decay[decay_n == 0] = np.nan
    classes = classify_heads(
        torch.from_numpy(bos.mean(0)),
        torch.from_numpy(loc.mean(0)),
        torch.from_numpy(ent.mean(0)),
        sink_threshold=sink_threshold,
        local_threshold=local_threshold,
    ).numpy()
    return HeadClasses(
        model=model_label(model),
        entropy=ent,
        bos=bos,
        local=loc,
        decay=decay,
        classes=classes,
        options={
            "sink_threshold": sink_threshold,
            "local_threshold": local_threshold,
            "window": window,
            "max_distance": max_distance,
            "include_bos_row": include_bos_row,
            "max_length": max_length,
            "attention": "native hook_pattern (fp32)",
        },
    )
