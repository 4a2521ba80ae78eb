"""The report's experiments. Each ``run_<step>(pair, options, context)`` returns a JSON-able dict.

Steps share work through ``context`` (the saved results of earlier steps, also when resumed):
the massive step saves the channels found on the identification texts, the phase step saves the
per-text baseline NLL of the evaluation texts, and the disruption step reuses both instead of
running those passes again. Without them (``--steps disruption``) it measures them itself.
"""

from __future__ import annotations

from typing import Any, Callable

from drope_lens.jsonio import plain
from drope_lens.options import NOT_IN_QUICK, OPTIONAL_STEPS, REPORT_STEPS
from drope_lens.report.extended import run_extended
from drope_lens.report.texts import each_model, text_sets
from drope_lens.report.texts import positions as _positions


def run_massive(pair, options, context, *, progress: bool = True) -> dict:
    """Massive Q/K/V values of both models on the built-in texts (study definition, pre-RoPE)."""
    from drope_lens.analysis.massive import detect_massive

    sets = text_sets(options)
    idx = _positions(sets["identify"], sets["massive"])
    out: dict[str, Any] = {"n_texts": len(sets["massive"])}
    for role, model in each_model(pair):
        res = detect_massive(
            model,
            sets["massive"],
            options.analysis_options("massive"),
            batch_size=options.batch_size,
            max_length=options.max_length,
            progress=progress,
        )
        out[role] = res.to_dict()
        out[role]["mean_norm_map"] = {  # [layer, head*d_head] text-mean M, for the channel map view
            t: res.norms(t).mean(0).flatten(1).tolist() for t in ("q", "k")
        }
        if idx is not None:  # the disruption step zeroes these (study rule: threshold the text mean)
            out[role]["identify_selection"] = res.subset(idx).selection("mean_norm", ("q", "k")).to_dict()
    return plain(out)


def run_phase(pair, options, context, *, progress: bool = True) -> dict:
    """Phase profile (native fp32 attention) + PPL under baseline / BOS-MLP / Q/K / combined.

    Each condition is one pass over the evaluation texts giving its perplexity and (full report)
    its profile together.
    """
    from drope_lens.analysis.interventions import phase_experiment

    texts = text_sets(options)["eval"]
    out: dict[str, Any] = {"n_texts": len(texts)}
    for role, model in each_model(pair):
        exp = phase_experiment(
            model,
            texts,
            options.analysis_options("phase"),
            batch_size=options.batch_size,
            max_length=options.max_length,
            progress=progress,
        )
        out[role] = exp.to_dict()
    return plain(out)


def _shared_inputs(role: str, context: dict, sets: dict) -> dict:
    """Channels and baseline perplexity already measured by earlier steps, if any."""
    from drope_lens.analysis.perplexity import PerplexityResult
    from drope_lens.hooks.selection import ChannelSelection

    kw: dict = {}
    sel = ((context.get("massive") or {}).get(role) or {}).get("identify_selection")
    if sel is not None:
        kw["massive"] = ChannelSelection.from_dict(sel)
    base = ((((context.get("phase") or {}).get(role) or {}).get("conditions") or {}).get("baseline") or {}).get("ppl")
    idx = _positions(sets["disruption"], sets["eval"])
    if base is not None and idx is not None:
        kw["baseline"] = PerplexityResult.from_dict(base).subset(idx)
    return kw


def run_disruption(pair, options, context, *, progress: bool = True) -> dict:
    """Zero massive Q/K channels vs seeded random controls; M-R, tests, RoPE/DroPE ratio."""
    from drope_lens.analysis.disruption import compare_disruption, run_disruption

    sets = text_sets(options)
    results = {}
    for role, model in each_model(pair):
        results[role] = run_disruption(
            model,
            options.analysis_options("disruption"),
            identify_texts=sets["identify"],
            eval_texts=sets["disruption"],
            batch_size=options.batch_size,
            max_length=options.max_length,
            progress=progress,
            **_shared_inputs(role, context, sets),
        )
    return plain(compare_disruption(results["rope"], results["drope"]).to_dict())


def run_tasks(pair, options, context, *, progress: bool = True) -> dict:
    """Parametric vs contextual tasks under each condition; BOS-MLP at each model's spike layer."""
    from drope_lens.tasks import compare_tasks, run_tasks

    phase = context.get("phase") or {}
    results = {}
    for role, model in each_model(pair):
        bos_layer = (phase.get(role) or {}).get("bos_layer")
        results[role] = run_tasks(  # type: ignore[call-arg]  # options= comes from takes_options
            model,
            bos_layer=bos_layer,
            batch_size=options.batch_size,
            progress=progress,
            options=options.analysis_options("tasks"),
        )
    return plain(compare_tasks(results["rope"], results["drope"]).to_dict())


def run_context(pair, options, context, *, progress: bool = True) -> dict:
    """The context-length experiment on both models (passkey by depth, PPL, sinks, BOS, massive)."""
    from drope_lens.analysis.context import pair_context_experiment

    o = options.analysis_options("context")  # drope_lens.options.REPORT_CONTEXT, the report's seed and λ
    n_ctx = min(int(pair.rope.cfg.n_ctx), int(pair.drope.cfg.n_ctx))
    lengths = [n for n in o.lengths if n <= n_ctx] or [n_ctx]
    res = pair_context_experiment(pair, lengths, o, batch_size=min(options.batch_size, 3), progress=progress)
    return plain(res.to_dict())


# ---------------------------------------------------------------------------------------------- the step list
#: Every step of the report, in run order: the core steps, then the optional ones (names from
#: :mod:`drope_lens.options`). This module owns the list; each step is ``run_<name>`` above.
STEP_ORDER: tuple[str, ...] = REPORT_STEPS + OPTIONAL_STEPS


def step_function(step: str) -> Callable[..., dict]:
    """``run_<step>`` of this module, looked up when called (so a test can replace one)."""
    if step not in STEP_ORDER:
        raise KeyError(f"not a report step: {step!r}; the steps are {STEP_ORDER}")
    return globals()[f"run_{step}"]


def planned_steps(options) -> list[tuple[str, bool]]:
    """``(step, runs)`` for every step the report lists, in run order: the core steps always (skipped
    ones too, so results.json names them), an optional step only when named (never ``context`` with ``quick``)."""
    out = []
    for step in STEP_ORDER:
        runs = step in options.steps and not (options.quick and step in NOT_IN_QUICK)
        if step in REPORT_STEPS or runs:
            out.append((step, runs))
    return out


__all__ = [
    "STEP_ORDER",
    "planned_steps",
    "step_function",
    "text_sets",
    "run_massive",
    "run_phase",
    "run_disruption",
    "run_tasks",
    "run_extended",
    "run_context",
]
