"""``drope-lens report``: every experiment on a RoPE/DroPE pair, saved step by step.

Each step's result is written atomically to ``<out>/parts/<step>.json`` as soon as it finishes,
with a fingerprint of its options. A rerun with the same options skips finished steps, so an
interrupted report resumes where it stopped. ``results.json``, ``report.md``, ``report.html``,
``figures/`` and ``views/`` are (re)built from the parts at the end.

What it prints (stderr): one line per finished step (``✓ massive  41 s``, or ``reused`` for a
step resumed from its part), why a saved part is not reused, and ``verbose`` adds a line as each
step starts.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

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


def step_line(step: str, detail: str) -> str:
    """``✓ massive        41 s``: the one line a finished step prints."""
    return f"✓ {step:<11} {detail}"


def run_report(
    pair, out_dir, options: Optional[ReportOptions] = None, *, progress: bool = True, verbose: bool = False
) -> dict:
    """Run (or resume) every step on ``pair`` and write the results folder. Returns results.json's dict."""
    from drope_lens.report.build import build_outputs

    options = options or ReportOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from drope_lens.runs.provenance import pair_identity
    from drope_lens.runs.store import ResultsLock

    with ResultsLock(out, say=_say):
        outcomes = _run_steps(pair, out, options, progress, verbose, pair_identity(pair))
        t0 = time.perf_counter()
        results = build_outputs(pair, out, options, outcomes)
        _say(step_line("pages", f"{time.perf_counter() - t0:.0f} s (figures, views, report.md, report.html)"))
        return results


def _run_steps(pair, out: Path, options: ReportOptions, progress: bool, verbose: bool, identity: dict) -> dict:
    from drope_lens.report.steps import planned_steps, step_function

    store = PartStore(out)
    outcomes: dict[str, StepOutcome] = {}
    context: dict = {}
    for step, runs in planned_steps(options):
        if not runs:
            outcomes[step] = StepOutcome(step, "skipped", 0.0)
            continue
        opts = options.step_options(step)
        saved, why = store.check(step, opts, identity)
        if why:
            _say(f"[{step}] not reused: {why}")
        if saved is not None:
            _say(step_line(step, f"reused ({store.path(step).relative_to(out)})"))
            outcomes[step] = StepOutcome(step, "resumed", store.seconds(step) or 0.0, saved)
            context[step] = saved
            continue
        if verbose:
            _say(f"[{step}] running ...")
        t0 = time.perf_counter()
        result = step_function(step)(pair, options, context, progress=progress)
        seconds = time.perf_counter() - t0
        store.save(step, opts, result, seconds, identity)
        _say(step_line(step, f"{seconds:.0f} s"))
        outcomes[step] = StepOutcome(step, "ran", seconds, result)
        context[step] = result
    return outcomes
