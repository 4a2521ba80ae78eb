"""Zeroing massive Q/K channels vs random channels (the study's Exp 2), and the RoPE/DroPE comparison.

Protocol (:func:`run_disruption`):

1. Identify massive channels on ``identify_texts`` with :func:`~drope_lens.analysis.massive.detect_massive`
   and aggregate them over texts (default ``"mean_norm"``: threshold the text-mean of M, the study's
   rule), separately for Q and K (pre-RoPE by default; ``rotary="post"`` for Jin's tensors).
2. Perplexity on ``eval_texts``: baseline, massive channels zeroed (at every position, BOS included),
   and for each of ``n_seeds`` seeds a random control with the same count per layer and tensor,
   drawn from the non-massive channels (:func:`~drope_lens.hooks.selection.random_control`).
3. Statistics (:mod:`drope_lens.analysis.stats`): percentage increases, ``M - R = mean(massive%) -
   mean(random%)``, paired t-test massive vs random over seeds (degenerate by design: massive% is the
   same number for every seed), Cohen's d = mean(diff)/std(diff) with ddof 0 (study) and 1, seeded
   bootstrap CIs of the random mean and of M - R.

Deviations from the study, all switchable: evaluation texts are disjoint from identification texts
by default (``eval_on_identify=True`` reproduces the study's reuse of the same texts); the random
control excludes massive channels (``exclude_massive=False`` reproduces the overlap); random draws
use a seeded ``torch.Generator`` per seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from drope_lens.analysis import stats
from drope_lens.analysis.massive import detect_massive
from drope_lens.analysis.perplexity import PerplexityResult, perplexity
from drope_lens.hooks.selection import ChannelSelection, random_control
from drope_lens.hooks.zeroing import zero_channel_hooks
from drope_lens.loading.forward import model_label, to_batch
from drope_lens.loading.tokens import TokenBatch
from drope_lens.options import DEFAULT_BATCH_SIZE, DisruptionOptions

Inputs = Union[Sequence[str], TokenBatch, torch.Tensor]  # texts, or token ids (models without a tokenizer)


@dataclass
class DisruptionResult:
    """Everything :func:`run_disruption` measured for one model."""

    model: str
    position_encoding: str
    settings: dict
    massive_counts: dict[str, list[int]]  # per layer, per tensor
    base_ppl: float
    massive_ppl: float
    seeds: list[int]
    random_ppls: list[float]
    n_eval_texts: int
    n_eval_targets: int
    random_overlap: list[int] = field(default_factory=list)  # channels shared with the massive set

    # -- derived statistics ---------------------------------------------------------------------
    @property
    def massive_pct(self) -> float:
        return float(stats.percent_increase(self.massive_ppl, self.base_ppl))

    @property
    def massive_pcts(self) -> np.ndarray:
        """massive% repeated once per seed (constant: zeroing the massive set is deterministic)."""
        return np.full(len(self.seeds), self.massive_pct)

    @property
    def random_pcts(self) -> np.ndarray:
        return stats.percent_increase(self.random_ppls, self.base_ppl)

    @property
    def diffs(self) -> np.ndarray:
        return self.massive_pcts - self.random_pcts

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_pcts))

    @property
    def random_std(self) -> float:
        """Population std (ddof=0) of random% over seeds, like the study."""
        return float(np.std(self.random_pcts))

    @property
    def m_minus_r(self) -> float:
        return self.massive_pct - self.random_mean

    @property
    def n_massive(self) -> int:
        return int(sum(sum(c) for c in self.massive_counts.values()))

    def paired(self) -> dict:
        return stats.paired_test(self.massive_pcts, self.random_pcts)

    def cohens_d(self, ddof: int = 0) -> float:
        return stats.cohens_d(self.diffs, ddof=ddof)

    def ci_random_mean(self) -> tuple[float, float]:
        s = self.settings
        return stats.bootstrap_ci(
            self.random_pcts, confidence=s["confidence"], n_resamples=s["n_resamples"], seed=s["bootstrap_seed"]
        )

    def ci_m_minus_r(self) -> tuple[float, float]:
        s = self.settings
        return stats.bootstrap_ci(
            self.diffs, confidence=s["confidence"], n_resamples=s["n_resamples"], seed=s["bootstrap_seed"]
        )

    # -- export -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        paired = self.paired()
        return {
            "model": self.model,
            "position_encoding": self.position_encoding,
            "settings": self.settings,
            "n_massive": self.n_massive,
            "massive_counts_per_layer": self.massive_counts,
            "n_eval_texts": self.n_eval_texts,
            "n_eval_targets": self.n_eval_targets,
            "base_ppl": self.base_ppl,
            "massive_ppl": self.massive_ppl,
            "random_ppls": self.random_ppls,
            "seeds": self.seeds,
            "random_overlap_with_massive": self.random_overlap,
            "massive_pct": self.massive_pct,
            "random_pcts": self.random_pcts.tolist(),
            "random_mean_pct": self.random_mean,
            "random_std_pct": self.random_std,
            "m_minus_r": self.m_minus_r,
            "paired_t": paired["t"],
            "paired_p": paired["p"],
            "paired_df": paired["df"],
            "cohens_d_ddof0": self.cohens_d(0),
            "cohens_d_ddof1": self.cohens_d(1),
            "ci_random_mean_pct": list(self.ci_random_mean()),
            "ci_m_minus_r": list(self.ci_m_minus_r()),
            "notes": (
                "massive% is constant over seeds (deterministic zeroing), so the paired t-test "
                "is a one-sample test of M - random_s; Cohen's d = mean(diff)/std(diff) with "
                "ddof 0 (study) and 1."
            ),
        }

    def to_dataframe(self):
        """One row per seed: random PPL and %, massive %, their difference."""
        import pandas as pd

        return pd.DataFrame(
            {
                "model": self.model,
                "seed": self.seeds,
                "base_ppl": self.base_ppl,
                "massive_ppl": self.massive_ppl,
                "random_ppl": self.random_ppls,
                "massive_pct": self.massive_pcts,
                "random_pct": self.random_pcts,
                "diff": self.diffs,
            }
        )

    def summary(self) -> str:
        p = self.paired()
        lo, hi = self.ci_m_minus_r()
        return (
            f"{self.model}: {self.n_massive} massive Q/K channels; PPL {self.base_ppl:.3f} -> "
            f"{self.massive_ppl:.3f} zeroed ({self.massive_pct:+.1f}%), random "
            f"{self.random_mean:+.2f} ± {self.random_std:.2f}% over {len(self.seeds)} seeds; "
            f"M-R = {self.m_minus_r:.1f} (CI {lo:.1f}..{hi:.1f}), paired t = {p['t']:.3g}, "
            f"p = {p['p']:.3g}, d = {self.cohens_d(0):.3g}"
        )


@dataclass
class DisruptionComparison:
    """RoPE vs DroPE/NoPE: how much more the RoPE model relies on its massive channels."""

    rope: DisruptionResult
    drope: DisruptionResult
    equal_var: bool = True

    @property
    def ratio(self) -> float:
        """``rope M-R / drope M-R`` (the study's "82x")."""
        return self.rope.m_minus_r / self.drope.m_minus_r if self.drope.m_minus_r != 0 else float("nan")

    def independent(self) -> dict:
        """``ttest_ind(rope diffs, drope diffs)`` (Student by default, like the study)."""
        return stats.independent_test(self.rope.diffs, self.drope.diffs, equal_var=self.equal_var)

    def to_dict(self) -> dict:
        ind = self.independent()
        return {
            "rope": self.rope.to_dict(),
            "drope": self.drope.to_dict(),
            "ratio_m_minus_r": self.ratio,
            "independent_t": ind["t"],
            "independent_p": ind["p"],
            "equal_var": self.equal_var,
        }

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for role, r in (("rope", self.rope), ("drope", self.drope)):
            rows.append(
                {
                    "role": role,
                    "model": r.model,
                    "n_massive": r.n_massive,
                    "base_ppl": r.base_ppl,
                    "massive_ppl": r.massive_ppl,
                    "massive_pct": r.massive_pct,
                    "random_mean_pct": r.random_mean,
                    "random_std_pct": r.random_std,
                    "m_minus_r": r.m_minus_r,
                    "paired_t": r.paired()["t"],
                    "paired_p": r.paired()["p"],
                    "cohens_d": r.cohens_d(0),
                }
            )
        return pd.DataFrame(rows)

    def summary(self) -> str:
        ind = self.independent()
        return (
            f"{self.rope.summary()}\n{self.drope.summary()}\nM-R ratio RoPE/DroPE = {self.ratio:.2f}; "
            f"independent t = {ind['t']:.3g}, p = {ind['p']:.3g}"
        )


def run_disruption(
    model,
    options: Optional[DisruptionOptions] = None,
    *,
    identify_texts: Optional[Inputs] = None,
    eval_texts: Optional[Inputs] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = 512,
    massive: Optional[ChannelSelection] = None,
    baseline: Optional[PerplexityResult] = None,
    progress: bool = False,
    **overrides,
) -> DisruptionResult:
    """Zero massive Q/K channels vs ``n_seeds`` random controls and measure perplexity.

    Defaults: identify on the built-in ``"identify"`` split, evaluate on the disjoint built-in
    ``"eval"`` split (:func:`drope_lens.data.texts.builtin_split`); seeds ``first_seed ..
    first_seed + n_seeds - 1`` (the study: 42..51). ``eval_on_identify=True`` evaluates on the
    identification texts, as the study did. Inputs are texts, or a :class:`TokenBatch` / id tensor
    (for models without a tokenizer). See the module docstring for the statistics.

    Work already done elsewhere can be passed in: ``massive``, the channels to zero (then
    ``identify_texts`` only labels the result), and ``baseline``, the perplexity of ``eval_texts``
    without hooks (checked against their token counts).

    ``options``: :class:`~drope_lens.options.DisruptionOptions` (λ, scope, rotary, tensors,
    aggregate, seeds, overlap, bootstrap); keyword arguments override its fields.
    """
    from drope_lens.data.texts import builtin_split
    from drope_lens.progress import progress_bar

    o = DisruptionOptions.resolve(options, overrides)
    threshold, scope, rotary, tensors, aggregate = o.threshold, o.scope, o.rotary, o.tensors, o.aggregate
    n_seeds, first_seed, eval_on_identify, exclude_massive = (
        o.n_seeds,
        o.first_seed,
        o.eval_on_identify,
        o.exclude_massive,
    )
    confidence, n_resamples, bootstrap_seed = o.confidence, o.n_resamples, o.bootstrap_seed
    split = builtin_split()
    identify_texts = _inputs(identify_texts) if identify_texts is not None else split["identify"]
    if eval_on_identify:
        if eval_texts is not None:
            raise ValueError("Pass either eval_texts or eval_on_identify=True, not both.")
        eval_texts = identify_texts
    eval_texts = _inputs(eval_texts) if eval_texts is not None else split["eval"]

    given = massive is not None
    if massive is None:
        found = detect_massive(model, identify_texts, o.massive(), top=0, batch_size=batch_size, max_length=max_length)
        massive = found.selection(aggregate)
    elif massive.rotary != rotary or set(massive.tensors) != set(tensors):
        raise ValueError(
            f"The given selection is {massive.rotary}-RoPE on {massive.tensors}; this run "
            f"asks for rotary={rotary!r}, tensors={tuple(tensors)}."
        )
    if massive.total() == 0:
        raise ValueError(
            f"No massive channels at threshold {threshold} ({aggregate}); nothing to zero. "
            "Lower the threshold or use other identification texts."
        )
    seeds = list(range(first_seed, first_seed + n_seeds))
    ppl_kw: dict[str, Any] = dict(batch_size=batch_size, max_length=max_length)
    if baseline is None:
        base = perplexity(model, eval_texts, **ppl_kw)
    else:
        base = _checked_baseline(model, baseline, eval_texts, max_length)
    zeroed = perplexity(model, eval_texts, fwd_hooks=zero_channel_hooks(massive), **ppl_kw)
    random_ppls, overlap = [], []
    for seed in progress_bar(seeds, what="random controls", model=model, enabled=progress):
        control = random_control(massive, seed=seed, exclude_selected=exclude_massive)
        overlap.append(control.overlap(massive))
        random_ppls.append(perplexity(model, eval_texts, fwd_hooks=zero_channel_hooks(control), **ppl_kw).ppl)
    settings = dict(
        threshold=threshold,
        scope=scope,
        rotary=rotary,
        tensors=list(tensors),
        aggregate=aggregate,
        eval_on_identify=eval_on_identify,
        exclude_massive=exclude_massive,
        max_length=max_length,
        n_identify_texts=len(identify_texts),
        first_seed=first_seed,
        confidence=confidence,
        n_resamples=n_resamples,
        bootstrap_seed=bootstrap_seed,
        selection="given" if given else "detected",
        baseline="given" if baseline is not None else "measured",
    )
    if given:  # describe the selection actually used
        settings.update({k: massive.meta[k] for k in ("threshold", "scope", "aggregate") if k in massive.meta})
    return DisruptionResult(
        model=model_label(model),
        position_encoding=getattr(model.cfg, "position_encoding", "rope"),
        settings=settings,
        massive_counts=massive.counts(),
        base_ppl=base.ppl,
        massive_ppl=zeroed.ppl,
        seeds=seeds,
        random_ppls=random_ppls,
        n_eval_texts=len(eval_texts),
        n_eval_targets=base.n_targets,
        random_overlap=overlap,
    )


def _inputs(inputs):
    """Texts become a list; a TokenBatch or id tensor passes through (``perplexity`` and
    ``detect_massive`` take either)."""
    return inputs if isinstance(inputs, (TokenBatch, torch.Tensor)) else list(inputs)


def _checked_baseline(model, baseline: PerplexityResult, eval_texts, max_length) -> PerplexityResult:
    expected = [int(n) - 1 for n in to_batch(model, eval_texts, max_length=max_length).lengths]
    if list(baseline.per_text_targets) != expected:
        raise ValueError(
            "The given baseline perplexity was not measured on these eval texts (token "
            f"counts {list(baseline.per_text_targets)[:5]}... vs {expected[:5]}...). "
            "Pass the baseline of exactly eval_texts with the same max_length."
        )
    return baseline


def compare_disruption(
    rope_result: DisruptionResult, drope_result: DisruptionResult, *, equal_var: bool = True
) -> DisruptionComparison:
    """Compare the RoPE model's disruption with its DroPE/NoPE twin's (ratio of M-R, t-test of diffs)."""
    if len(rope_result.seeds) < 2 or len(drope_result.seeds) < 2:
        raise ValueError("Both results need >= 2 seeds.")
    return DisruptionComparison(rope_result, drope_result, equal_var=equal_var)
