"""Layer ablations (study Exp 6, §8): one layer's MLP / attention / both / BOS-only, with perplexity.

Conditions at layer ``N`` (the study: ``N = 1``):

* ``mlp``: ``blocks.N.hook_mlp_out`` zeroed at every position;
* ``attn``: ``blocks.N.hook_attn_out`` (the attention module's output, after ``W_O``) zeroed;
* ``both``: both;
* ``bos_only``: MLP and attention output zeroed at absolute position 0 only
  (:class:`~drope_lens.hooks.positions.PositionTracker`: KV-cache decode steps are never touched;
  the study's hook hit index 0 of every call, B3).

Hooks from :func:`layer_ablation_hooks` compose with ``model.generate`` and the knowledge tasks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from drope_lens.analysis.perplexity import PerplexityResult, perplexity
from drope_lens.hooks.bos import check_layer
from drope_lens.hooks.positions import zero_bos_hooks
from drope_lens.hooks.types import FwdHooks
from drope_lens.loading.forward import model_label
from drope_lens.options import DEFAULT_BATCH_SIZE

ABLATIONS = ("mlp", "attn", "both", "bos_only")


def _zero_all(x: torch.Tensor, hook) -> torch.Tensor:
    return torch.zeros_like(x)


def layer_ablation_hooks(model, layer: int, condition: str) -> FwdHooks:
    """Hooks for one condition of :data:`ABLATIONS` at ``layer``."""
    check_layer(model, layer)
    if condition not in ABLATIONS:
        raise ValueError(f"Unknown condition {condition!r}; choose one of {ABLATIONS}.")
    mlp, attn = f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.hook_attn_out"
    if condition == "mlp":
        return [(mlp, _zero_all)]
    if condition == "attn":
        return [(attn, _zero_all)]
    if condition == "both":
        return [(mlp, _zero_all), (attn, _zero_all)]
    return zero_bos_hooks([mlp, attn])


@dataclass
class LayerAblation:
    """Perplexity of each ablation condition at one layer."""

    model: str
    layer: int
    ppl: dict[str, PerplexityResult]
    tasks: Optional[dict[str, Any]] = None
    options: dict[str, Any] = field(default_factory=dict)

    def ratios(self) -> dict[str, float]:
        base = self.ppl["baseline"].ppl
        return {k: v.ppl / base for k, v in self.ppl.items()}

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            **{f"ppl_{k}": v.ppl for k, v in self.ppl.items()},
            **{f"ratio_{k}": r for k, r in self.ratios().items() if k != "baseline"},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "ppl": {k: v.to_dict() for k, v in self.ppl.items()},
            "ratios": self.ratios(),
            "tasks": self.tasks,
            "summary": self.summary(),
            "options": self.options,
        }

    def to_dataframe(self):
        import pandas as pd

        r = self.ratios()
        return pd.DataFrame(
            [
                {"model": self.model, "layer": self.layer, "condition": k, "ppl": v.ppl, "ratio_to_baseline": r[k]}
                for k, v in self.ppl.items()
            ]
        )


def layer_ablation(
    model,
    inputs,
    *,
    layer: int = 1,
    conditions=ABLATIONS,
    baseline: Optional[PerplexityResult] = None,
    tasks: Optional[dict] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
) -> LayerAblation:
    """Perplexity on ``inputs`` for the baseline and each condition at ``layer``.

    ``tasks``: optional keyword arguments for :func:`drope_lens.tasks.run_tasks` (e.g. ``{"n": 8}``);
    each condition's hooks are then also run on the knowledge tasks.
    """
    check_layer(model, layer)
    for c in conditions:
        if c not in ABLATIONS:
            raise ValueError(f"Unknown condition {c!r}; choose from {ABLATIONS}.")
    kw: dict[str, Any] = dict(batch_size=batch_size, max_length=max_length)
    ppl = {"baseline": baseline or perplexity(model, inputs, **kw)}
    for c in conditions:
        ppl[c] = perplexity(model, inputs, fwd_hooks=layer_ablation_hooks(model, layer, c), **kw)
    task_out = None
    if tasks is not None:
        task_out = _run_tasks(model, layer, conditions, tasks)
    return LayerAblation(
        model=model_label(model),
        layer=layer,
        ppl=ppl,
        tasks=task_out,
        options={"conditions": list(conditions), "max_length": max_length},
    )


def _run_tasks(model, layer: int, conditions, kwargs: dict) -> dict[str, Any]:
    from drope_lens.tasks import run_tasks
    from drope_lens.tasks.conditions import Condition

    conds: list[Any] = ["baseline"]
    conds += [
        Condition(
            name=f"layer{layer}_{c}",
            make_hooks=functools.partial(layer_ablation_hooks, layer=layer, condition=c),
            batch_safe=True,
            info={"layer": layer, "ablation": c},
        )
        for c in conditions
    ]
    return run_tasks(model, conditions=conds, **kwargs).to_dict()
