"""The report's experiments. Each ``run_<step>(pair, options, context)`` returns a JSON-able dict."""

from __future__ import annotations

import json
from typing import Any

from drope_lens.report.store import _to_jsonable


def _plain(obj: Any) -> Any:
    """JSON round trip: what is saved is exactly what later steps and the report read."""
    return json.loads(json.dumps(obj, default=_to_jsonable, allow_nan=True))


def _texts(options) -> list[str]:
    from drope_lens.data.texts import builtin_texts

    texts = builtin_texts()
    return texts[::2] if options.quick else texts


def run_massive(pair, options, context, *, progress: bool = True) -> dict:
    """Massive Q/K/V values of both models on the built-in texts (study definition, pre-RoPE)."""
    from drope_lens.analysis.massive import detect_massive

    texts = _texts(options)
    out = {"n_texts": len(texts)}
    for role, model in pair.items():
        res = detect_massive(model, texts, threshold=options.threshold,
                             batch_size=options.batch_size, max_length=options.max_length,
                             progress=progress)
        out[role] = res.to_dict()
        out[role]["mean_norm_map"] = {  # [layer, head*d_head] text-mean M, for the channel map view
            t: res.norms(t).mean(0).flatten(1).tolist() for t in ("q", "k")
        }
    return _plain(out)


def run_disruption(pair, options, context, *, progress: bool = True) -> dict:
    """Zero massive Q/K channels vs seeded random controls; M-R, tests, RoPE/DroPE ratio."""
    from drope_lens.analysis.disruption import compare_disruption, run_disruption

    results = {}
    for role, model in pair.items():
        results[role] = run_disruption(
            model, n_seeds=options.n_seeds, threshold=options.threshold,
            batch_size=options.batch_size, max_length=options.max_length, progress=progress,
        )
    return _plain(compare_disruption(results["rope"], results["drope"]).to_dict())


def run_phase(pair, options, context, *, progress: bool = True) -> dict:
    """Phase profile (native fp32 attention) + PPL under baseline / BOS-MLP / Q/K / combined."""
    from drope_lens.analysis.phase import phase_experiment

    texts = _texts(options)
    out = {"n_texts": len(texts)}
    for role, model in pair.items():
        exp = phase_experiment(model, texts, batch_size=options.batch_size,
                               max_length=options.max_length, profile_conditions=not options.quick,
                               progress=progress)
        out[role] = exp.to_dict()
    return _plain(out)


def run_tasks(pair, options, context, *, progress: bool = True) -> dict:
    """Parametric vs contextual tasks under each condition; BOS-MLP at each model's spike layer."""
    from drope_lens.tasks import compare_tasks, run_tasks

    phase = context.get("phase") or {}
    results = {}
    for role, model in pair.items():
        bos_layer = (phase.get(role) or {}).get("bos_layer")
        kwargs = dict(seed=options.seed, bos_layer=bos_layer, batch_size=options.batch_size,
                      passkey_lengths=tuple(options.passkey_lengths), progress=progress)
        if options.task_n is not None:
            kwargs["n"] = options.task_n
        elif options.quick:
            kwargs["n"] = {"cities": 40, "sports": 40, "sentiment": 40, "passkey": 8}
        results[role] = run_tasks(model, **kwargs)
    return _plain(compare_tasks(results["rope"], results["drope"]).to_dict())
