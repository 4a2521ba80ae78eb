"""The peers' measurements and the study's Exp 5–9 on one model, in one call (CLI and report).

:func:`run_extended` runs, on the same texts: residual massive activations (Sun et al.) with the
set-to-zero / set-to-mean perplexities, BOS write with the BOS-V ablations (Exp 5), layer ablations
(Exp 6), head classes (Exp 7) and layer norms / attention fractions (Exp 8–9). Every attention
quantity is the model's real ``hook_pattern`` (fp32), every BOS hook acts at absolute position 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from drope_lens.analysis.bos_write import BosWrite, bos_write_experiment
from drope_lens.analysis.head_classes import HeadClasses, head_classes
from drope_lens.analysis.layer_ablation import LayerAblation, layer_ablation
from drope_lens.analysis.layer_norms import LayerNorms, layer_norms
from drope_lens.analysis.perplexity import PerplexityResult, perplexity
from drope_lens.analysis.residual import (
    ResidualIntervention,
    ResidualMassive,
    residual_intervention,
    residual_massive_activations,
)
from drope_lens.options import DEFAULT_BATCH_SIZE

EXPERIMENTS = ("residual", "bos_write", "layer_ablation", "head_classes", "layer_norms")


@dataclass
class Extended:
    """The five results of :func:`run_extended` (``None`` for the experiments not run)."""

    model: str
    residual: Optional[ResidualMassive] = None
    residual_intervention: Optional[ResidualIntervention] = None
    bos_write: Optional[BosWrite] = None
    layer_ablation: Optional[LayerAblation] = None
    head_classes: Optional[HeadClasses] = None
    layer_norms: Optional[LayerNorms] = None
    note: Optional[str] = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model}
        for name in ("residual", "bos_write", "layer_ablation", "head_classes", "layer_norms"):
            r = getattr(self, name)
            if r is not None:
                out[name] = r.summary()
        if self.residual_intervention is not None:
            out["residual_intervention"] = self.residual_intervention.to_dataframe().to_dict("records")
        if self.note:
            out["note"] = self.note
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "note": self.note}
        for name in ("residual", "residual_intervention", "bos_write", "layer_ablation", "head_classes", "layer_norms"):
            r = getattr(self, name)
            out[name] = None if r is None else r.to_dict()
        return out

    def to_dataframe(self):
        """One row per (experiment, metric) of the scalar summaries."""
        import pandas as pd

        rows = []
        for exp, s in self.summary().items():
            if isinstance(s, dict):
                rows += [
                    {"model": self.model, "experiment": exp, "metric": k, "value": v}
                    for k, v in s.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                ]
        return pd.DataFrame(rows)


def run_extended(
    model,
    texts: Sequence[str],
    ppl_texts: Optional[Sequence[str]] = None,
    *,
    experiments: Sequence[str] = EXPERIMENTS,
    top_k: int = 5,
    ablation_layer: int = 1,
    baseline: Optional[PerplexityResult] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = 256,
) -> Extended:
    """Run ``experiments`` on ``model``: measurements on ``texts``, perplexities on ``ppl_texts``
    (default ``texts``). ``baseline``: an already measured perplexity of ``ppl_texts``."""
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"Unknown experiments {unknown}; choose from {list(EXPERIMENTS)}.")
    from drope_lens.loading.forward import model_label

    ppl_texts = list(texts if ppl_texts is None else ppl_texts)
    kw: dict[str, Any] = dict(batch_size=batch_size, max_length=max_length)
    base = baseline or perplexity(model, ppl_texts, **kw)
    res = Extended(model=model_label(model))
    if "residual" in experiments:
        res.residual = residual_massive_activations(model, texts, top_k=top_k, **kw)
        try:
            res.residual_intervention = residual_intervention(model, ppl_texts, res.residual, baseline=base, **kw)
        except ValueError as exc:  # no massive activation to intervene on: say so
            res.note = str(exc)
    if "bos_write" in experiments:
        res.bos_write = bos_write_experiment(model, texts, ppl_texts, baseline=base, **kw)
    if "layer_ablation" in experiments:
        res.layer_ablation = layer_ablation(model, ppl_texts, layer=ablation_layer, baseline=base, **kw)
    if "head_classes" in experiments:
        res.head_classes = head_classes(model, texts, **kw)
    if "layer_norms" in experiments:
        res.layer_norms = layer_norms(model, texts, **kw)
    return res
