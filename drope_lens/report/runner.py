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

from drope_lens.errors import DropeLensInputError
from drope_lens.options import (
    DEFAULT_THRESHOLD,
    FORMATS,
    SCORING,
    DisruptionOptions,
    Options,
    Scoring,
    TaskFormat,
)
from drope_lens.report.store import PartStore
from drope_lens.validation import check_threshold

STEPS = ("massive", "phase", "disruption", "tasks")  # run order: later steps reuse earlier ones
#: Run only when named (--steps ...,extended,context), after the core steps.
OPTIONAL_STEPS = ("extended", "context")
#: Optional steps too long for --quick: skipped there even when named.
NOT_IN_QUICK = ("context",)
#: What runs without --steps.
DEFAULT_STEPS = STEPS


@dataclass(frozen=True)
class ReportOptions(Options):
    """What the report runs (frozen; ``replace(...)`` gives a changed copy). ``quick`` shrinks every
    experiment (for smoke runs and CI): at most 3 seeds, texts cut at 128 tokens, 5 evaluation
    texts, a few task items, passkey at 128 tokens -- applied when the object is built, so
    ``opts.replace(quick=True)`` is the shrunk copy of ``opts``."""

    quick: bool = False
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD
    n_seeds: int = DisruptionOptions.default("n_seeds")
    max_length: int = 512
    batch_size: int = 8
    task_n: Optional[int] = None
    #: Choice-task protocol: contextual calibration, zero-shot, cities/sports as two-way completions
    #: (measured on the embedded pair: see README and benchmarks/README.md).
    task_scoring: Scoring = "calibrated"
    n_shot: int = 0
    task_format: TaskFormat = "completion"
    passkey_lengths: tuple[int, ...] = (256,)
    steps: tuple[str, ...] = DEFAULT_STEPS

    def __post_init__(self) -> None:
        self._set("steps", tuple(self.steps))
        self._set("passkey_lengths", tuple(self.passkey_lengths))
        unknown = [s for s in self.steps if s not in STEPS + OPTIONAL_STEPS]
        if unknown:
            raise DropeLensInputError(f"Unknown report steps {unknown}; choose from {list(STEPS + OPTIONAL_STEPS)}.")
        self._set("threshold", check_threshold(self.threshold, "threshold"))
        for name in ("n_seeds", "max_length", "batch_size"):
            if getattr(self, name) < (2 if name == "n_seeds" else 1):
                raise DropeLensInputError(
                    f"{name} must be >= {2 if name == 'n_seeds' else 1}, got {getattr(self, name)}"
                )
        if self.task_n is not None and self.task_n < 1:
            raise DropeLensInputError(f"task_n must be >= 1, got {self.task_n}")
        if self.task_scoring not in SCORING:
            raise DropeLensInputError(f"task_scoring must be one of {SCORING}, got {self.task_scoring!r}")
        if isinstance(self.n_shot, bool) or not isinstance(self.n_shot, int) or self.n_shot < 0:
            raise DropeLensInputError(f"n_shot must be an int >= 0, got {self.n_shot!r}")
        if self.task_format not in FORMATS:
            raise DropeLensInputError(f"task_format must be one of {FORMATS}, got {self.task_format!r}")
        if self.task_format == "completion" and self.task_scoring == "study":
            raise DropeLensInputError(
                "task_format 'completion' needs log-prob scoring ('logprob' or "
                "'calibrated'); use task_format 'yes_no' with scoring 'study'."
            )
        if not self.passkey_lengths or min(self.passkey_lengths) < 1:
            raise DropeLensInputError(
                f"passkey_lengths must be positive token counts, got {list(self.passkey_lengths)}"
            )
        if self.quick:  # idempotent caps, so replace() on a quick object keeps them
            self._set("n_seeds", min(self.n_seeds, 3))
            self._set("max_length", min(self.max_length, 128))
            self._set("passkey_lengths", tuple(p for p in self.passkey_lengths if p <= 128) or (128,))

    def analysis_options(self, step: str):
        """The options object of ``step``'s analysis (:mod:`drope_lens.options`), or None (extended).
        ``context``: :data:`~drope_lens.options.REPORT_CONTEXT` (its lengths are cut to the pair's
        ``n_ctx`` when the step runs)."""
        from drope_lens import options as o
        from drope_lens.options import MassiveOptions, PhaseOptions, TaskOptions
        from drope_lens.tasks.sizes import QUICK_N, REPORT_N

        if step == "massive":
            return MassiveOptions(threshold=self.threshold)
        if step == "disruption":
            return DisruptionOptions(threshold=self.threshold, n_seeds=self.n_seeds)
        if step == "phase":
            return PhaseOptions(profile_conditions=not self.quick)
        if step == "tasks":
            n = (
                {task: self.task_n for task in REPORT_N}
                if self.task_n is not None
                else dict(QUICK_N if self.quick else REPORT_N)
            )
            return TaskOptions(
                seed=self.seed,
                n=n,
                scoring=self.task_scoring,
                n_shot=self.n_shot,
                task_format=self.task_format,
                passkey_lengths=tuple(self.passkey_lengths),
            )
        if step == "context":
            return o.REPORT_CONTEXT.replace(seed=self.seed, threshold=self.threshold)
        return None

    def step_options(self, step: str) -> dict:
        """What identifies a saved part: the shared sizes and every field of the step's analysis options."""
        common = {"quick": self.quick, "seed": self.seed, "max_length": self.max_length, "batch_size": self.batch_size}
        analysis = self.analysis_options(step)
        return {**common, **(analysis.to_dict() if analysis is not None else {})}


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
    from drope_lens.report.provenance import pair_identity
    from drope_lens.report.store import ResultsLock

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
