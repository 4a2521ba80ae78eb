"""``drope-lens report``: every experiment on a RoPE/DroPE pair, saved step by step.

Each step's result is written atomically to ``<out>/parts/<step>.json`` as soon as it finishes,
with a fingerprint of its options. A rerun with the same options skips finished steps, so an
interrupted report resumes where it stopped. ``results.json``, ``report.md``, ``figures/`` and
``views/`` are (re)built from the parts at the end.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from drope_lens.options import (
    DEFAULT_STEPS,
    NOT_IN_QUICK,
    OPTIONAL_STEPS,
    REPORT_STEPS,
    ReportOptions,
)
from drope_lens.runs.store import PartStore

STEPS = REPORT_STEPS  # the name the report modules and older callers use

__all__ = ["run_report", "ReportOptions", "StepOutcome", "STEPS", "OPTIONAL_STEPS", "NOT_IN_QUICK", "DEFAULT_STEPS"]


@dataclass
class StepOutcome:
    step: str
    status: str  # "ran", "resumed", "skipped"
    seconds: float
    result: Optional[dict] = field(default=None, repr=False)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_report(pair, out_dir, options: Optional[ReportOptions] = None, *, progress: bool = True) -> dict:
    """Run (or resume) every step on ``pair`` and write the results folder. Returns results.json's dict."""
    from drope_lens.report import steps as step_impl
    from drope_lens.report.build import build_outputs

    options = options or ReportOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from drope_lens.runs.provenance import pair_identity
    from drope_lens.runs.store import ResultsLock

    with ResultsLock(out, say=_say):
        return _run_locked(pair, out, options, progress, pair_identity(pair), step_impl, build_outputs)


def _run_locked(
    pair, out: Path, options: "ReportOptions", progress: bool, identity: dict, step_impl, build_outputs
) -> dict:
    store = PartStore(out)
    outcomes: dict[str, StepOutcome] = {}
    context: dict = {}
    optional = tuple(s for s in OPTIONAL_STEPS if s in options.steps and not (options.quick and s in NOT_IN_QUICK))
    for step in STEPS + optional:
        if step not in options.steps:
            outcomes[step] = StepOutcome(step, "skipped", 0.0)
            continue
        opts = step_options = options.step_options(step)
        saved, why = store.check(step, opts, identity)
        if why:
            _say(f"[{step}] not reused: {why}")
        if saved is not None:
            _say(f"[{step}] already done, reusing {store.path(step)}")
            outcomes[step] = StepOutcome(step, "resumed", store.seconds(step) or 0.0, saved)
            context[step] = saved
            continue
        _say(f"[{step}] running ...")
        fn: Callable = getattr(step_impl, f"run_{step}")
        t0 = time.perf_counter()
        result = fn(pair, options, context, progress=progress)
        seconds = time.perf_counter() - t0
        store.save(step, step_options, result, seconds, identity)
        _say(f"[{step}] done in {seconds:.1f} s")
        outcomes[step] = StepOutcome(step, "ran", seconds, result)
        context[step] = result
    return build_outputs(pair, out, options, outcomes)
