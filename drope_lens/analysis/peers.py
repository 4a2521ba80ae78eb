"""The rest of the peers' toolboxes.

* Gu et al. 2025: the importance of **every** key position ``j``,
  ``α_j = 1/(T−j) Σ_{q≥j} A[q, j]`` (the mean over the queries that can see it; ``j = 0`` is the
  first-token importance of :func:`drope_lens.analysis.sinks.gu_importance`), and per-token norm
  curves ``‖h_t‖``, ``‖k_t‖``, ``‖v_t‖`` by position (:func:`key_importance`).
* The study's similarity of the massive-value matrices ``M`` of the two models of a pair
  (:func:`massive_similarity`): per layer the Jaccard index of the massive sets, the cosine and the
  Spearman correlation of the flattened text-mean ``M``, and per model the concentration entropy
  ``−Σ p ln p`` with ``p = M / ΣM`` and ``max(M) / mean(M)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float

from drope_lens.analysis import sinks
from drope_lens.frames import cell_frame
from drope_lens.hooks.types import FwdHook
from drope_lens.loading.forward import hooked_passes, model_label, to_batch
from drope_lens.options import DEFAULT_BATCH_SIZE


def key_importance_from(pattern: Float[torch.Tensor, "head q k"]) -> Float[torch.Tensor, "head k"]:
    """Gu et al.'s ``α_j`` for every key ``j`` of one text's real ``[head, T, T]`` pattern (float64)."""
    if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2]:
        raise ValueError(f"pattern must be [head, T, T], got {tuple(pattern.shape)}")
    T = pattern.shape[-1]
    col = pattern.double().sum(1)  # Σ_q A[q, j]; causal rows q < j are 0
    return col / torch.arange(T, 0, -1, dtype=torch.float64, device=pattern.device)


@dataclass
class KeyImportance:
    """Per layer, head and key position (< ``max_positions``): text-mean importance; norm curves."""

    model: str
    importance: Float[np.ndarray, "layer head pos"]  # NaN where no text is that long
    resid_norm: Float[np.ndarray, "layer pos"]
    k_norm: Float[np.ndarray, "layer pos"]
    v_norm: Float[np.ndarray, "layer pos"]
    n_texts: Float[np.ndarray, " pos"]
    options: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        imp = self.importance
        first = imp[:, :, 0]
        rest = np.nanmean(imp[:, :, 1:], axis=-1) if imp.shape[-1] > 1 else np.full(first.shape, np.nan)
        return {
            "model": self.model,
            "mean_first_importance": float(first.mean()),
            "mean_other_importance": float(np.nanmean(rest)),
            "bos_resid_norm_ratio": (self.resid_norm[:, 0] / np.nanmean(self.resid_norm[:, 1:], -1)).tolist(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "importance_head_mean": np.nanmean(self.importance, 1).tolist(),
            "resid_norm": self.resid_norm.tolist(),
            "k_norm": self.k_norm.tolist(),
            "v_norm": self.v_norm.tolist(),
            "n_texts": self.n_texts.tolist(),
            "summary": self.summary(),
            "options": self.options,
        }

    def to_dataframe(self):
        """One row per (layer, position): head-mean importance and the three norms."""
        columns = {"importance": np.nanmean(self.importance, 1)}
        columns.update({k: getattr(self, k) for k in ("resid_norm", "k_norm", "v_norm")})
        return cell_frame(self.model, ("layer", "position"), columns)


@torch.no_grad()
def key_importance(
    model,
    inputs,
    *,
    max_positions: int = 64,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    fwd_hooks: Sequence[FwdHook] = (),
) -> KeyImportance:
    """Gu et al.'s key importance at every position and per-token ‖h‖, ‖k‖, ‖v‖ (pre-RoPE k)."""
    if max_positions < 1 or batch_size < 1:
        raise ValueError("max_positions and batch_size must be >= 1")
    batch = to_batch(model, inputs, max_length=max_length)
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, max_positions
    sums = {k: np.zeros(s) for k, s in (("imp", (L, H, P)), ("resid", (L, P)), ("k", (L, P)), ("v", (L, P)))}
    count = np.zeros(P)
    lengths = batch.lengths.tolist()
    for n in lengths:
        count[: min(n, P)] += 1
    state: dict[str, Any] = {}

    def on_pattern(pattern, hook):
        layer = hook.layer()
        sinks.check_pattern(pattern, torch.tensor([lengths[i] for i in state["idx"]]), layer)
        for row, text in enumerate(state["idx"]):
            m = lengths[text]
            a = key_importance_from(pattern[row, :, :m, :m])[:, :P].cpu().numpy()
            sums["imp"][layer, :, : a.shape[1]] += a

    def on_norm(x, hook, key):
        layer = hook.layer()
        tok = x.reshape(x.shape[0], x.shape[1], -1).double().norm(dim=-1)
        for row, text in enumerate(state["idx"]):
            m = min(lengths[text], P)
            sums[key][layer, :m] += tok[row, :m].cpu().numpy()

    hooks = list(fwd_hooks)
    for li in range(L):
        hooks += [
            (f"blocks.{li}.attn.hook_pattern", on_pattern),
            (f"blocks.{li}.hook_resid_post", lambda x, hook: on_norm(x, hook, "resid")),
            (f"blocks.{li}.attn.hook_k", lambda x, hook: on_norm(x, hook, "k")),
            (f"blocks.{li}.attn.hook_v", lambda x, hook: on_norm(x, hook, "v")),
        ]
    hooked_passes(model, batch, hooks, state, batch_size=batch_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = {k: v / count for k, v in sums.items()}
    for v in mean.values():
        v[..., count == 0] = np.nan
    return KeyImportance(
        model=model_label(model),
        importance=mean["imp"],
        resid_norm=mean["resid"],
        k_norm=mean["k"],
        v_norm=mean["v"],
        n_texts=count,
        options={"max_positions": P, "max_length": max_length, "k": "hook_k (pre-RoPE)"},
    )


# --------------------------------------------------------------------------------------- M similarity
def concentration(m: Float[torch.Tensor, "... n"]) -> dict[str, torch.Tensor]:
    """Entropy ``−Σ p ln p`` of ``p = m / Σm`` and ``max(m) / mean(m)`` along the last axis."""
    m = m.double()
    p = m / m.sum(-1, keepdim=True)
    return {"entropy": -torch.special.xlogy(p, p).sum(-1), "max_over_mean": m.max(-1).values / m.mean(-1)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@dataclass
class MassiveSimilarity:
    """Per layer and tensor: Jaccard of the massive sets, cosine and Spearman of the text-mean M."""

    models: tuple[str, str]
    tensors: tuple[str, ...]
    jaccard: dict[str, list[float]]
    cosine: dict[str, list[float]]
    spearman: dict[str, list[float]]
    entropy: dict[str, tuple[list[float], list[float]]]
    max_over_mean: dict[str, tuple[list[float], list[float]]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "tensors": list(self.tensors),
            "jaccard": self.jaccard,
            "cosine": self.cosine,
            "spearman": self.spearman,
            "entropy": {t: list(map(list, v)) for t, v in self.entropy.items()},
            "max_over_mean": {t: list(map(list, v)) for t, v in self.max_over_mean.items()},
        }

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for t in self.tensors:
            for li in range(len(self.cosine[t])):
                rows.append(
                    {
                        "tensor": t,
                        "layer": li,
                        "jaccard": self.jaccard[t][li],
                        "cosine": self.cosine[t][li],
                        "spearman": self.spearman[t][li],
                        "entropy_a": self.entropy[t][0][li],
                        "entropy_b": self.entropy[t][1][li],
                        "max_over_mean_a": self.max_over_mean[t][0][li],
                        "max_over_mean_b": self.max_over_mean[t][1][li],
                    }
                )
        return pd.DataFrame(rows)


def massive_similarity(a, b, *, tensors=None) -> MassiveSimilarity:
    """Compare two :class:`~drope_lens.analysis.massive.MassiveValues` (same texts, same shapes).

    Massive sets: the text-mean M thresholded at λ × its layer mean (``aggregate_mask("mean_norm")``).
    Jaccard is NaN for a layer where neither model has a massive channel.
    """
    tensors = tuple(tensors or [t for t in a.tensors if t in b.tensors])
    jac, cos, spear, ent, mom = {}, {}, {}, {}, {}
    for t in tensors:
        ma, mb = a.norms(t).mean(0).flatten(1).double(), b.norms(t).mean(0).flatten(1).double()  # [layer, n]
        if ma.shape != mb.shape:
            raise ValueError(f"{t}: M shapes differ {tuple(ma.shape)} vs {tuple(mb.shape)}")
        sa, sb = a.aggregate_mask(t).flatten(1), b.aggregate_mask(t).flatten(1)
        inter, union = (sa & sb).sum(-1).double(), (sa | sb).sum(-1).double()
        jac[t] = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan"))).tolist()
        cos[t] = torch.nn.functional.cosine_similarity(ma, mb, dim=-1).tolist()
        spear[t] = [_spearman(ma[li].numpy(), mb[li].numpy()) for li in range(ma.shape[0])]
        ca, cb = concentration(ma), concentration(mb)
        ent[t] = (ca["entropy"].tolist(), cb["entropy"].tolist())
        mom[t] = (ca["max_over_mean"].tolist(), cb["max_over_mean"].tolist())
    return MassiveSimilarity(
        models=(a.model_label, b.model_label),
        tensors=tensors,
        jaccard=jac,
        cosine=cos,
        spearman=spear,
        entropy=ent,
        max_over_mean=mom,
    )
