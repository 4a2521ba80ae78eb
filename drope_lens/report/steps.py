"""The report's experiments. Each ``run_<step>(pair, options, context)`` returns a JSON-able dict.

Steps share work through ``context`` (the saved results of earlier steps, also when resumed):
the massive step saves the channels found on the identification texts, the phase step saves the
per-text baseline NLL of the evaluation texts, and the disruption step reuses both instead of
running those passes again. Without them (``--steps disruption``) it measures them itself.
"""

from __future__ import annotations

from typing import Any, Optional

from drope_lens.jsonio import plain


def text_sets(options) -> dict[str, list[str]]:
    """The built-in texts each step uses.

    ``massive``: every built-in text (quick: the 5 identification texts); ``identify``: one text per
    genre, where the channels to zero are found; ``eval``: the held-out texts of the phase profile
    and its perplexities (quick: one per genre); ``disruption``: one held-out text per genre (a
    subset of ``eval``: 2 + ``n_seeds`` perplexity passes are the report's largest cost).
    """
    from drope_lens.data.texts import builtin_split, builtin_texts

    split = builtin_split()
    return {
        "massive": split["identify"] if options.quick else builtin_texts(),
        "identify": split["identify"],
        "eval": split["eval"][::2] if options.quick else split["eval"],
        "disruption": split["eval"][::2],
    }


def _positions(sub: list[str], full: list[str]) -> Optional[list[int]]:
    try:
        return [full.index(t) for t in sub]
    except ValueError:
        return None


def run_massive(pair, options, context, *, progress: bool = True) -> dict:
    """Massive Q/K/V values of both models on the built-in texts (study definition, pre-RoPE)."""
    from drope_lens.analysis.massive import detect_massive

    sets = text_sets(options)
    idx = _positions(sets["identify"], sets["massive"])
    out: dict[str, Any] = {"n_texts": len(sets["massive"])}
    for role, model in pair.items():
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
    for role, model in pair.items():
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
    for role, model in pair.items():
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
    for role, model in pair.items():
        bos_layer = (phase.get(role) or {}).get("bos_layer")
        results[role] = run_tasks(  # type: ignore[call-arg]  # options= comes from takes_options
            model,
            bos_layer=bos_layer,
            batch_size=options.batch_size,
            progress=progress,
            options=options.analysis_options("tasks"),
        )
    return plain(compare_tasks(results["rope"], results["drope"]).to_dict())


from drope_lens.report.extended import run_extended  # noqa: E402,F401  (optional step)


def run_context(pair, options, context, *, progress: bool = True) -> dict:
    """The context-length experiment on both models (passkey by depth, PPL, sinks, BOS, massive)."""
    from drope_lens.analysis.context import pair_context_experiment

    o = options.analysis_options("context")  # drope_lens.options.REPORT_CONTEXT, the report's seed and λ
    n_ctx = min(int(pair.rope.cfg.n_ctx), int(pair.drope.cfg.n_ctx))
    lengths = [n for n in o.lengths if n <= n_ctx] or [n_ctx]
    res = pair_context_experiment(pair, lengths, o, batch_size=min(options.batch_size, 3), progress=progress)
    return plain(res.to_dict())
