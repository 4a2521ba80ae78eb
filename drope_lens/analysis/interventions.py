"""The study's Exp 4: phase profile and perplexity under each intervention condition.

:func:`phase_experiment` measures the baseline profile, finds the BOS spike layer, and runs every
condition of :data:`~drope_lens.hooks.conditions.CONDITIONS` — BOS-MLP ablation at the spike layer,
Q/K mean replacement, both combined (hooks from :func:`~drope_lens.hooks.conditions.condition_hooks`)
— with the perplexity of each (and optionally its profile).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from drope_lens.analysis.perplexity import perplexity
from drope_lens.analysis.profile import PhaseProfile
from drope_lens.analysis.profile_pass import Inputs, measure, phase_profile
from drope_lens.errors import DropeLensInputError
from drope_lens.hooks.bos import mlp_out_mean
from drope_lens.hooks.conditions import NEEDS_BOS, QkSettings, condition_hooks, qk_settings
from drope_lens.loading.backend import Model
from drope_lens.options import DEFAULT_BATCH_SIZE, PhaseOptions


@dataclass
class ConditionResult:
    name: str
    ppl: Optional[dict] = None  # PerplexityResult.to_dict()
    profile: Optional[PhaseProfile] = None

    def to_dict(self, *, per_text: bool = False) -> dict[str, Any]:
        return {
            "name": self.name,
            "ppl": self.ppl,
            "profile": None if self.profile is None else self.profile.to_dict(per_text=per_text),
        }


@dataclass
class PhaseExperiment:
    """Baseline phase profile + perplexity (and optionally profile) under each condition."""

    baseline: PhaseProfile
    bos_layer: Optional[int]
    spike_rule: str
    bos_mode: str
    conditions: dict[str, ConditionResult] = field(default_factory=dict)
    qk_kwargs: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self, *, per_text: bool = False) -> dict[str, Any]:
        return {
            "baseline": self.baseline.to_dict(per_text=per_text),
            "bos_layer": self.bos_layer,
            "spike_rule": self.spike_rule,
            "bos_mode": self.bos_mode,
            "qk_kwargs": self.qk_kwargs,
            "wall_s": round(self.wall_s, 3),
            "conditions": {k: v.to_dict(per_text=per_text) for k, v in self.conditions.items()},
        }

    def to_dataframe(self):
        """One row per condition: perplexity, its ratio to baseline, and profile headlines if any."""
        import pandas as pd

        base = (self.conditions.get("baseline") or ConditionResult("baseline")).ppl
        rows = []
        for name, res in self.conditions.items():
            row: dict[str, Any] = {"condition": name}
            if res.ppl is not None:
                row.update(ppl=res.ppl.get("ppl"), nll_sum=res.ppl.get("nll_sum"), n_targets=res.ppl.get("n_targets"))
                if base is not None:
                    row["ppl_ratio"] = res.ppl["ppl"] / base["ppl"]
            if res.profile is not None:
                s = res.profile.summary()
                row.update(
                    mean_sink_rate=s["mean_sink_rate"],
                    max_bos_ratio=s["max_bos_ratio"],
                    min_entropy_sq=s["min_entropy_sq"],
                )
            rows.append(row)
        return pd.DataFrame(rows)


@torch.no_grad()
def phase_experiment(
    model: Model,
    inputs: Inputs,
    options: Optional[PhaseOptions] = None,
    *,
    ppl_texts: Optional[Inputs] = None,
    bos_layer: Optional[int] = None,
    qk_kwargs: QkSettings = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    progress: bool = False,
    **overrides,
) -> PhaseExperiment:
    """Phase profile + per-condition perplexity (baseline, bos_mlp, qk, combined).

    ``options``: :class:`~drope_lens.options.PhaseOptions` (the profile's ``tau``, BOS row, last
    layer, attention, ...; ``conditions``, ``spike_rule``, ``bos_mode``, ``study_compatible``,
    ``profile_conditions``); keyword arguments override its fields. The BOS-MLP layer is
    ``bos_layer`` or else the baseline spike layer by ``spike_rule`` (``"argmax"``, the study's
    code, by default). ``bos_mode="mean"`` replaces the BOS MLP output by the mean MLP output over
    the non-BOS tokens of ``inputs``. Perplexity is computed on ``ppl_texts`` (default: ``inputs``,
    as the study's Exp 4). ``qk_kwargs`` (a :class:`~drope_lens.options.MeanReplacementOptions` or a
    dict of its keywords) go to the Q/K mean replacement hooks.
    """
    t0 = time.perf_counter()
    o = PhaseOptions.resolve(options, overrides)
    conditions, spike_rule, bos_mode = o.conditions, o.spike_rule, o.bos_mode
    study_compatible, profile_conditions = o.study_compatible, o.profile_conditions
    kw = dict(batch_size=batch_size, max_length=max_length, progress=progress, **o.profile_kwargs())
    same_texts = ppl_texts is None  # PPL on the profile's texts: one pass gives both
    want_base_ppl = "baseline" in conditions and same_texts
    baseline, base_ppl = measure(model, inputs, profile=True, ppl=want_base_ppl, **kw)
    assert baseline is not None  # measure(profile=True)
    needs_bos = any(c in NEEDS_BOS for c in conditions)
    if bos_layer is None and needs_bos:
        bos_layer = baseline.spike_layer(spike_rule)
        if bos_layer is None:
            raise DropeLensInputError(
                f"No spike layer by rule {spike_rule!r} (no layer's BOS ratio exceeds "
                f"{baseline.spike_threshold}); pass bos_layer explicitly."
            )
    mean_vec = None
    if needs_bos and bos_mode == "mean":
        assert bos_layer is not None  # set above when needs_bos
        mean_vec = mlp_out_mean(model, inputs, bos_layer, batch_size=batch_size, max_length=max_length)
    exp = PhaseExperiment(
        baseline=baseline,
        bos_layer=bos_layer,
        spike_rule=spike_rule,
        bos_mode=bos_mode,
        qk_kwargs=qk_settings(qk_kwargs),
    )
    for cond in conditions:
        if cond == "baseline" and base_ppl is not None:
            exp.conditions[cond] = ConditionResult(cond, ppl=base_ppl.to_dict(), profile=baseline)
            continue
        hooks = condition_hooks(
            model,
            cond,
            bos_layer=bos_layer,
            bos_mode=bos_mode,
            bos_mean_vector=mean_vec,
            study_compatible=study_compatible,
            qk_kwargs=qk_kwargs,
        )
        want_prof = profile_conditions and cond != "baseline"
        if ppl_texts is None:  # same_texts
            prof, ppl = measure(model, inputs, profile=want_prof, ppl=True, fwd_hooks=hooks, **kw)
        else:
            ppl = perplexity(model, ppl_texts, fwd_hooks=hooks, batch_size=batch_size, max_length=max_length)
            prof = phase_profile(model, inputs, fwd_hooks=hooks, **kw) if want_prof else None
        assert ppl is not None  # measure(ppl=True)
        exp.conditions[cond] = ConditionResult(
            cond, ppl=ppl.to_dict(), profile=baseline if cond == "baseline" else prof
        )
    exp.wall_s = time.perf_counter() - t0
    return exp
