"""Typed, frozen options of each analysis: the one place their choices, defaults and checks live.

One module, imported by the analyses, the report and the CLI alike, and free of torch: the CLI
builds (and so validates) these objects before it imports any model code, so a bad option is
refused in well under a second. Each choice is a ``Literal`` type; its tuple of values (e.g.
:data:`CONDITIONS`) is read from it, and the analyses re-export those tuples under their old names.

>>> opts = MassiveOptions(threshold=3.0, tensors=("q", "k"))
>>> detect_massive(model, texts, options=opts)          # or keyword overrides: threshold=3.0
>>> opts.to_dict(), opts.replace(scope="head")
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, TypeVar, Union

from drope_lens.errors import DropeLensInputError
from drope_lens.validation import check_batch_size, check_choice, check_layer, check_tau, check_threshold

TensorName = Literal["q", "k", "v"]
Scope = Literal["layer", "head"]
Rotary = Literal["pre", "post"]
Aggregate = Literal["mean_norm", "pooled", "union"]
ConditionName = Literal["baseline", "bos_mlp", "qk", "combined"]
SpikeRule = Literal["argmax", "first_above"]
BosMode = Literal["zero", "mean"]
LastLayer = Literal["resid", "final_norm"]
AttentionSource = Literal["native", "pre_rope_manual"]
TaskName = Literal["cities", "sports", "sentiment", "passkey"]
Scoring = Literal["logprob", "calibrated", "study"]
TaskFormat = Literal["yes_no", "completion"]
SinkSource = Literal["stream", "pattern"]
DecodeMode = Literal["skip", "raise"]

TENSORS: tuple[str, ...] = typing.get_args(TensorName)
SCOPES: tuple[str, ...] = typing.get_args(Scope)
ROTARY_MODES: tuple[str, ...] = typing.get_args(Rotary)
AGGREGATES: tuple[str, ...] = typing.get_args(Aggregate)
#: The study's Exp-4 conditions (see :mod:`drope_lens.hooks.conditions`).
CONDITIONS: tuple[str, ...] = typing.get_args(ConditionName)
SPIKE_RULES: tuple[str, ...] = typing.get_args(SpikeRule)
BOS_MODES: tuple[str, ...] = typing.get_args(BosMode)
LAST_LAYER_MODES: tuple[str, ...] = typing.get_args(LastLayer)
ATTENTION_SOURCES: tuple[str, ...] = typing.get_args(AttentionSource)
TASKS: tuple[str, ...] = typing.get_args(TaskName)
SCORING: tuple[str, ...] = typing.get_args(Scoring)
FORMATS: tuple[str, ...] = typing.get_args(TaskFormat)
#: Native sink scores streamed from ``hook_rot_q/k`` in query chunks (O(chunk·T)) or read from ``hook_pattern`` (O(T²)).
SINK_SOURCES: tuple[str, ...] = typing.get_args(SinkSource)
#: Mean replacement on KV-cache decode steps: leave generated tokens alone (the study's, Jin's) or refuse.
DECODE_MODES: tuple[str, ...] = typing.get_args(DecodeMode)

#: What :func:`~drope_lens.track.pipeline.track` can measure per checkpoint, and its default.
MetricGroup = Literal["ppl", "massive", "sinks", "bos", "disruption", "passkey"]
METRIC_GROUPS: tuple[str, ...] = typing.get_args(MetricGroup)
DEFAULT_METRICS = METRIC_GROUPS
#: Massive-value λ (Jin et al.; the study): M > λ · mean(M).
DEFAULT_THRESHOLD = 5.0
#: Sink-rate threshold τ (inclusive ``≥``) and Gu et al.'s ε (strict ``>``): the study's 0.3 both.
DEFAULT_TAU = 0.3
DEFAULT_GU_EPS = 0.3
#: Texts per forward pass of every analysis (``batch_size=`` keywords, ``--batch-size``).
DEFAULT_BATCH_SIZE = 8


def scaled_n(n: int) -> dict[str, int]:
    """``n`` cities and sports items, half as many sentiment, a quarter as many passkeys (each >= 1)."""
    return {"cities": n, "sports": n, "sentiment": max(1, n // 2), "passkey": max(1, n // 4)}


#: Items per task (passkey: per length) of :func:`~drope_lens.tasks.runner.run_tasks` and ``drope-lens tasks``.
DEFAULT_N = {"cities": 200, "sports": 100, "sentiment": 100, "passkey": 20}
#: The report's tasks step (passkey: per length), sized for the 2-core CPU budget.
REPORT_N = {"cities": 100, "sports": 60, "sentiment": 48, "passkey": 12}
#: ``drope-lens report --quick``.
QUICK_N = scaled_n(8)


def check_tensors(tensors: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """A non-empty subset of :data:`TENSORS` without duplicates, as a tuple."""
    tensors = (tensors,) if isinstance(tensors, str) else tuple(tensors)
    if not tensors:
        raise ValueError("tensors is empty; pass a subset of ('q', 'k', 'v').")
    for t in tensors:
        check_choice("tensor", t, TENSORS)
    if len(set(tensors)) != len(tensors):
        raise ValueError(f"tensors has duplicates: {tensors}")
    return tensors


def check_conditions(conditions: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """Condition names (a name or a sequence) -> a tuple, every one of :data:`CONDITIONS`."""
    conditions = (conditions,) if isinstance(conditions, str) else tuple(conditions)
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise DropeLensInputError(f"Unknown condition(s) {unknown}; choose from {CONDITIONS}.")
    return conditions


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise DropeLensInputError(f"{name} must be an int >= {lo}, got {value!r}")


def field_default(cls: Any, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (an options class or e.g. ``Recipe``)."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


OptionsT = TypeVar("OptionsT", bound="Options")
F = TypeVar("F", bound=Callable[..., Any])


def takes_options(cls: type["Options"]) -> Callable[[F], F]:
    """Give a function whose keyword defaults are ``cls``'s an ``options=`` keyword: the fields of
    ``options`` fill every such keyword the call leaves out; keywords given override them. The
    signature (and so its defaults) is unchanged."""

    def wrap(func: F) -> F:
        sig = inspect.signature(func)
        names = [f.name for f in dataclasses.fields(cls) if f.name in sig.parameters]

        @functools.wraps(func)
        def call(*args: Any, options: Optional["Options"] = None, **kwargs: Any) -> Any:
            if options is not None:
                if not isinstance(options, cls):
                    raise TypeError(f"options must be a {cls.__name__}, got {type(options).__name__}")
                given = sig.bind_partial(*args, **kwargs).arguments
                kwargs.update({n: getattr(options, n) for n in names if n not in given})
            return func(*args, **kwargs)

        params = list(sig.parameters.values())
        at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
        params.insert(
            at,
            inspect.Parameter(
                "options", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=f"Optional[{cls.__name__}]"
            ),
        )
        call.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return wrap


@dataclass(frozen=True)
class Options:
    """Base of every options object: ``to_dict()`` (JSON-able), ``replace(**changes)``, ``resolve``."""

    def _set(self, name: str, value: Any) -> None:  # normalisation inside a frozen __post_init__
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        return {
            f.name: list(v)
            if isinstance(v := getattr(self, f.name), tuple)
            else (dict(v) if isinstance(v, Mapping) else v)
            for f in dataclasses.fields(self)
        }

    def replace(self: OptionsT, **changes: Any) -> OptionsT:
        """A copy with ``changes`` (validated again); an unknown name is a ``TypeError``."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def resolve(cls: type[OptionsT], options: Optional[OptionsT], overrides: Mapping[str, Any]) -> OptionsT:
        """``options`` (default: ``cls()``) with the keyword ``overrides`` an analysis was called with."""
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options must be a {cls.__name__}, got {type(options).__name__}")
        base = cls() if options is None else options
        return dataclasses.replace(base, **overrides) if overrides else base

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (for CLI defaults and help)."""
        return field_default(cls, name)

    @classmethod
    def choices(cls, name: str) -> tuple:
        """The allowed values of a ``Literal`` field (or of a tuple of them)."""
        hint = typing.get_type_hints(cls)[name]
        while typing.get_origin(hint) in (tuple, Union):
            hint = next(a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis)
        return typing.get_args(hint)


@dataclass(frozen=True)
class MassiveOptions(Options):
    """:func:`~drope_lens.analysis.massive.detect_massive`: M > ``threshold`` · mean over the layer
    (``scope="layer"``) or head; pre-RoPE ``hook_q/k/v`` (``rotary="pre"``) or post-RoPE; ``top``
    channels listed; ``context_length`` for the rotary bands (None: ``n_ctx``)."""

    threshold: float = DEFAULT_THRESHOLD
    scope: Scope = "layer"
    rotary: Rotary = "pre"
    tensors: tuple[TensorName, ...] = TENSORS  # type: ignore[assignment]
    top: int = 20
    context_length: Optional[int] = None

    def __post_init__(self) -> None:
        self._set("threshold", check_threshold(self.threshold))
        check_choice("scope", self.scope, SCOPES)
        check_choice("rotary", self.rotary, ROTARY_MODES)
        self._set("tensors", check_tensors(self.tensors))
        if self.top < 0:
            raise DropeLensInputError(f"top must be >= 0, got {self.top}")


@dataclass(frozen=True)
class DisruptionOptions(Options):
    """:func:`~drope_lens.analysis.disruption.run_disruption`: channels found as in
    :class:`MassiveOptions` and combined over the identification texts by ``aggregate``; random
    controls with seeds ``first_seed ..`` (``n_seeds`` of them); bootstrap settings."""

    threshold: float = DEFAULT_THRESHOLD
    scope: Scope = "layer"
    rotary: Rotary = "pre"
    tensors: tuple[TensorName, ...] = ("q", "k")
    aggregate: Aggregate = "mean_norm"
    n_seeds: int = 10
    first_seed: int = 42
    eval_on_identify: bool = False
    exclude_massive: bool = True
    confidence: float = 0.95
    n_resamples: int = 9999
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        self._set("threshold", check_threshold(self.threshold))
        check_choice("scope", self.scope, SCOPES)
        check_choice("rotary", self.rotary, ROTARY_MODES)
        self._set("tensors", check_tensors(self.tensors))
        check_choice("aggregate", self.aggregate, AGGREGATES)
        if self.n_seeds < 2:
            raise ValueError(f"n_seeds must be >= 2 for the t-test and the bootstrap, got {self.n_seeds}")

    def massive(self) -> MassiveOptions:
        """The channel definition, as :class:`MassiveOptions`."""
        return MassiveOptions(threshold=self.threshold, scope=self.scope, rotary=self.rotary, tensors=self.tensors)


@dataclass(frozen=True)
class MeanReplacementOptions(Options):
    """:func:`~drope_lens.hooks.mean_replacement.mean_replacement_hooks` (Jin-style Q/K mean
    replacement, the ``qk`` condition): the ``k`` largest-norm dims per head (``largest=False``: the
    smallest, Jin's control) of ``tensors``, pre- or post-RoPE, on ``layers`` (None: all), gated by
    ``threshold`` x the head's mean norm (None: no gate, the study's J-A; 5.0: J-B), ``decode``
    policy on KV-cache steps. ``k <= d_head`` and the layers are checked against the model."""

    tensors: tuple[TensorName, ...] = ("q", "k")
    k: int = 1
    rotary: Rotary = "pre"
    layers: Optional[tuple[int, ...]] = None
    decode: DecodeMode = "skip"
    threshold: Optional[float] = None
    largest: bool = True

    def __post_init__(self) -> None:
        self._set("tensors", check_tensors(self.tensors))
        check_choice("rotary", self.rotary, ROTARY_MODES)
        check_choice("decode", self.decode, DECODE_MODES)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"threshold must be > 0 (or None for no gate), got {self.threshold}")
        if not self.largest and self.threshold is not None:
            raise ValueError("threshold gates the largest dims; it cannot be combined with largest=False.")
        if self.layers is not None:
            self._set("layers", (self.layers,) if isinstance(self.layers, int) else tuple(self.layers))

    def qk_kwargs(self) -> dict:
        """The ``qk_kwargs`` of the ``qk`` condition (every field but ``tensors``, which is Q and K)."""
        if self.tensors != ("q", "k"):
            raise DropeLensInputError(f"the qk condition replaces Q and K; got tensors={self.tensors}")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tensors"}


@dataclass(frozen=True)
class BosAblationOptions(Options):
    """:func:`~drope_lens.hooks.bos.bos_mlp_ablation_hooks` (the ``bos_mlp`` condition): ``layer``
    (None: the model's BOS spike layer, where an analysis finds it), ``mode`` (``"zero"`` or
    ``"mean"``), ``study_compatible`` (ablate index 0 of every call, decode steps included: bug B3)."""

    layer: Optional[int] = None
    mode: BosMode = "zero"
    study_compatible: bool = False

    def __post_init__(self) -> None:
        if self.layer is not None:
            check_layer(None, self.layer)
        check_choice("mode", self.mode, BOS_MODES)


def check_profile_options(
    tau: float, gu_eps: float, last_layer: str, attention: str, sinks_from: str = "stream"
) -> None:
    """The phase profile's choices (shared by :class:`PhaseOptions` and ``phase_profile``)."""
    check_choice("sinks_from", sinks_from, SINK_SOURCES)
    check_tau(tau)
    check_tau(gu_eps, "gu_eps")
    check_choice("last_layer", last_layer, LAST_LAYER_MODES)
    check_choice("attention", attention, ATTENTION_SOURCES)


@dataclass(frozen=True)
class PhaseOptions(Options):
    """:func:`~drope_lens.analysis.profile_pass.phase_profile` (``tau`` inclusive, Gu's ``gu_eps``
    strict, whether query row 0 counts, last layer, attention source, BOS spike threshold, sink
    scores streamed or read from the full ``T×T`` pattern) and
    :func:`~drope_lens.analysis.interventions.phase_experiment` (conditions, BOS-MLP layer rule and
    mode, the study's index-0 bug, profiles under each condition)."""

    tau: float = DEFAULT_TAU
    gu_eps: float = DEFAULT_GU_EPS
    include_bos_row: bool = False
    last_layer: LastLayer = "resid"
    attention: AttentionSource = "native"
    spike_threshold: float = 2.0
    sinks_from: SinkSource = "stream"
    conditions: tuple[ConditionName, ...] = CONDITIONS  # type: ignore[assignment]
    spike_rule: SpikeRule = "argmax"
    bos_mode: BosMode = "zero"
    study_compatible: bool = False
    profile_conditions: bool = False

    def __post_init__(self) -> None:
        self._set("conditions", check_conditions(self.conditions))
        check_choice("spike rule", self.spike_rule, SPIKE_RULES)
        check_profile_options(self.tau, self.gu_eps, self.last_layer, self.attention, self.sinks_from)
        check_choice("mode", self.bos_mode, BOS_MODES)

    def bos_ablation(self, layer: Optional[int] = None) -> BosAblationOptions:
        """The BOS-MLP ablation of the ``bos_mlp`` / ``combined`` conditions at ``layer``."""
        return BosAblationOptions(layer=layer, mode=self.bos_mode, study_compatible=self.study_compatible)

    def profile_kwargs(self) -> dict:
        """The ``phase_profile`` keywords."""
        return {k: getattr(self, k) for k in PROFILE_FIELDS}


#: The :class:`PhaseOptions` fields that ``phase_profile`` takes.
PROFILE_FIELDS = ("tau", "include_bos_row", "last_layer", "attention", "gu_eps", "spike_threshold", "sinks_from")


def check_task_protocol(scoring: str, n_shot: int, task_format: str, *, prefix: str = "") -> None:
    """The choice-task protocol (shared by :class:`TaskOptions`, :class:`ReportOptions` -- whose fields
    are named ``task_<name>``: ``prefix="task_"`` -- and ``run_tasks``)."""
    check_choice(f"{prefix}scoring", scoring, SCORING)
    _check_int("n_shot", n_shot, 0)
    check_choice(f"{prefix}format" if prefix else "task_format", task_format, FORMATS)
    if task_format == "completion" and scoring == "study":
        raise DropeLensInputError(
            f"{prefix or 'task_'}format='completion' needs log-prob scoring ('logprob' or 'calibrated'); "
            "the study's generation + parsing reads Yes/No answers."
        )


def check_passkey_lengths(lengths: Sequence[int]) -> tuple[int, ...]:
    """Passkey prompt lengths in tokens: a non-empty sequence of positive ints, as a tuple."""
    lens = tuple(lengths)
    if not lens or min(lens) < 1:
        raise DropeLensInputError(f"passkey_lengths must be positive token counts, got {list(lens)}")
    return lens


@dataclass(frozen=True)
class TaskOptions(Options):
    """:func:`~drope_lens.tasks.runner.run_tasks` / ``run_pair_tasks`` (the defaults of their
    keywords): built-in ``tasks`` under ``conditions``, ``n`` items per task (int, ``{task: n}``,
    None: :data:`DEFAULT_N`), ``scoring``, ``n_shot``, ``task_format``, ``chat``, passkey lengths
    and needle depth, seed, BOS-MLP mode. ``run_kwargs()`` is what to pass them."""

    tasks: tuple[TaskName, ...] = TASKS  # type: ignore[assignment]
    conditions: tuple[ConditionName, ...] = CONDITIONS  # type: ignore[assignment]
    n: Union[None, int, Mapping[str, int]] = None
    seed: int = 0
    scoring: Scoring = "logprob"
    n_shot: int = 0
    task_format: TaskFormat = "yes_no"
    chat: bool = False
    passkey_lengths: tuple[int, ...] = (256, 512)
    passkey_depth: float = 0.5
    bos_mode: BosMode = "zero"

    def __post_init__(self) -> None:
        for name, known in (("tasks", TASKS), ("conditions", CONDITIONS)):
            value = getattr(self, name)
            given = (value,) if isinstance(value, str) else tuple(value)
            unknown = [v for v in given if v not in known]
            if unknown or not given:
                what = f"unknown {unknown}" if unknown else "nothing given"
                raise DropeLensInputError(f"{name}: {what}; choose from {','.join(known)}")
            self._set(name, given)
        if isinstance(self.n, Mapping):
            self._set("n", dict(self.n))
        check_task_protocol(self.scoring, self.n_shot, self.task_format)
        self._set("passkey_lengths", check_passkey_lengths(self.passkey_lengths))
        if not 0.0 <= self.passkey_depth <= 1.0:
            raise DropeLensInputError(f"passkey_depth must be in [0, 1], got {self.passkey_depth}")
        check_choice("mode", self.bos_mode, BOS_MODES)

    def bos_ablation(self, layer: Optional[int] = None) -> BosAblationOptions:
        """The BOS-MLP ablation of the ``bos_mlp`` / ``combined`` conditions at ``layer``."""
        return BosAblationOptions(layer=layer, mode=self.bos_mode)

    def run_kwargs(self) -> dict:
        """Keywords for ``run_tasks`` / ``run_pair_tasks``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ContextOptions(Options):
    """:func:`~drope_lens.analysis.context.context_experiment`: input ``lengths`` (tokens, BOS
    included, each >= 64; kept sorted), passkey ``n_per_depth`` prompts per needle depth and length
    (0: none), seed, sink ``tau`` / ``gu_eps``, massive ``threshold``, whether lengths may exceed ``n_ctx``."""

    lengths: tuple[int, ...] = (512, 1024, 2048, 4096)
    depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    n_per_depth: int = 2
    seed: int = 0
    tau: float = DEFAULT_TAU
    gu_eps: float = DEFAULT_GU_EPS
    threshold: float = DEFAULT_THRESHOLD
    beyond_context: bool = False

    def __post_init__(self) -> None:
        lengths = self.lengths
        if isinstance(lengths, (int, str)) or not lengths:
            raise ValueError("lengths must be a non-empty list of token counts, e.g. [512, 1024, 2048].")
        out = []
        for n in lengths:
            if isinstance(n, bool) or int(n) != n or int(n) < 64:
                raise ValueError(f"Every length must be an int >= 64 tokens, got {n!r}.")
            out.append(int(n))
        if sorted(set(out)) != sorted(out):
            raise ValueError(f"lengths contain duplicates: {out}")
        self._set("lengths", tuple(sorted(out)))
        ds = tuple(float(d) for d in self.depths)
        if not ds or any(not 0.0 <= d <= 1.0 for d in ds):
            raise ValueError(f"depths must be fractions in [0, 1], got {list(self.depths)}")
        self._set("depths", ds)
        n = self.n_per_depth
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise ValueError(f"n_per_depth must be an int >= 0 (0 skips the passkey), got {n!r}")
        self._set("tau", check_tau(self.tau))
        self._set("gu_eps", check_tau(self.gu_eps, "gu_eps"))
        self._set("threshold", check_threshold(self.threshold))


#: The report's ``context`` step, sized for the 2-core CPU budget (its lengths are cut to the pair's
#: smaller ``n_ctx``; seed and threshold come from the report's options).
REPORT_CONTEXT = ContextOptions(lengths=(512, 1024, 2048), n_per_depth=1)


def check_metrics(metrics: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """Track metric groups (comma-separated or a sequence), each of :data:`METRIC_GROUPS`, deduplicated."""
    items = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    bad = [m for m in items if m not in METRIC_GROUPS]
    if bad or not items:
        raise DropeLensInputError(f"--metrics: unknown {bad or 'empty list'}; choose from {','.join(METRIC_GROUPS)}")
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class TrackSizes(Options):
    """How much each :func:`~drope_lens.track.pipeline.track` metric group measures per checkpoint --
    the one place these sizes live (defaults of ``track`` and ``drope-lens track``). Sized so that
    every group on the embedded model takes well under 2 min per checkpoint on 2 idle CPU cores."""

    max_length: int = 256  # massive/sinks/bos/disruption texts cut at this many tokens
    heldout_blocks: int = 16  # ppl: held-out blocks of the run (16 x 256 tokens)
    n_seeds: int = 2  # disruption: seeded random-channel controls
    passkey_n: int = 8  # passkey prompts
    passkey_length: int = 256  # passkey prompt length in tokens

    def __post_init__(self) -> None:
        for name, lo in (
            ("heldout_blocks", 1),
            ("passkey_n", 1),
            ("n_seeds", 2),
            ("max_length", 2),
            ("passkey_length", 1),
        ):
            _check_int(name, getattr(self, name), lo)

    def sizes(self) -> "TrackSizes":
        """Just the sizes (what the saved parts are keyed on)."""
        return TrackSizes(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrackSizes)})


SIZES = TRACK_SIZES = TrackSizes()


@dataclass(frozen=True)
class TrackOptions(TrackSizes):
    """:func:`~drope_lens.track.pipeline.track` / ``drope-lens track``: the :class:`TrackSizes`,
    the metric groups (comma-separated or a sequence of :data:`METRIC_GROUPS`) and whether a run
    folder's RoPE source is measured as the reference."""

    metrics: tuple[MetricGroup, ...] = DEFAULT_METRICS  # type: ignore[assignment]
    include_rope: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("metrics", check_metrics(self.metrics))


#: The report's core steps, in run order (later steps reuse earlier ones).
REPORT_STEPS = ("massive", "phase", "disruption", "tasks")
#: Run only when named (``--steps ...,extended,context``), after the core steps.
OPTIONAL_STEPS = ("extended", "context")
#: Optional steps too long for ``quick``: skipped there even when named.
NOT_IN_QUICK = ("context",)
#: What runs without ``--steps``.
DEFAULT_STEPS = REPORT_STEPS


@dataclass(frozen=True)
class ReportOptions(Options):
    """:func:`~drope_lens.report.runner.run_report` / ``drope-lens report``: which ``steps`` run and the
    sizes they share (frozen; ``replace(...)`` gives a changed copy). ``quick`` shrinks every experiment
    (for smoke runs and CI): at most 3 seeds, texts cut at 128 tokens, 5 evaluation texts, a few task
    items, passkey at 128 tokens -- applied when the object is built, so ``opts.replace(quick=True)`` is
    the shrunk copy of ``opts``. :meth:`analysis_options` gives each step's analysis options."""

    quick: bool = False
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD
    n_seeds: int = DisruptionOptions.default("n_seeds")
    max_length: int = 512
    batch_size: int = DEFAULT_BATCH_SIZE
    task_n: Optional[int] = None
    #: Choice-task protocol: contextual calibration, zero-shot, cities/sports as two-way completions
    #: (measured on the embedded pair: see docs/benchmarks.md and benchmarks/README.md).
    task_scoring: Scoring = "calibrated"
    n_shot: int = 0
    task_format: TaskFormat = "completion"
    passkey_lengths: tuple[int, ...] = (256,)
    steps: tuple[str, ...] = DEFAULT_STEPS

    def __post_init__(self) -> None:
        self._set("steps", tuple(self.steps))
        unknown = [s for s in self.steps if s not in REPORT_STEPS + OPTIONAL_STEPS]
        if unknown:
            raise DropeLensInputError(
                f"Unknown report steps {unknown}; choose from {list(REPORT_STEPS + OPTIONAL_STEPS)}."
            )
        self._set("threshold", check_threshold(self.threshold, "threshold"))
        if self.n_seeds < 2:
            raise DropeLensInputError(f"n_seeds must be >= 2, got {self.n_seeds}")
        if self.max_length < 1:
            raise DropeLensInputError(f"max_length must be >= 1, got {self.max_length}")
        check_batch_size(self.batch_size)
        if self.task_n is not None and self.task_n < 1:
            raise DropeLensInputError(f"task_n must be >= 1, got {self.task_n}")
        check_task_protocol(self.task_scoring, self.n_shot, self.task_format, prefix="task_")
        self._set("passkey_lengths", check_passkey_lengths(self.passkey_lengths))
        if self.quick:  # idempotent caps, so replace() on a quick object keeps them
            self._set("n_seeds", min(self.n_seeds, 3))
            self._set("max_length", min(self.max_length, 128))
            self._set("passkey_lengths", tuple(p for p in self.passkey_lengths if p <= 128) or (128,))

    def analysis_options(self, step: str) -> Optional[Options]:
        """The options object of ``step``'s analysis, or None (``extended``). ``context``:
        :data:`REPORT_CONTEXT` (its lengths are cut to the pair's ``n_ctx`` when the step runs)."""
        if step == "massive":
            return MassiveOptions(threshold=self.threshold)
        if step == "disruption":
            return DisruptionOptions(threshold=self.threshold, n_seeds=self.n_seeds)
        if step == "phase":
            return PhaseOptions(profile_conditions=not self.quick)
        if step == "tasks":
            if self.task_n is not None:
                n = {task: self.task_n for task in REPORT_N}
            else:
                n = dict(QUICK_N if self.quick else REPORT_N)
            return TaskOptions(
                seed=self.seed,
                n=n,
                scoring=self.task_scoring,
                n_shot=self.n_shot,
                task_format=self.task_format,
                passkey_lengths=self.passkey_lengths,
            )
        if step == "context":
            return REPORT_CONTEXT.replace(seed=self.seed, threshold=self.threshold)
        return None

    def step_options(self, step: str) -> dict:
        """What identifies a saved part: the shared sizes and every field of the step's analysis options."""
        common = {"quick": self.quick, "seed": self.seed, "max_length": self.max_length, "batch_size": self.batch_size}
        analysis = self.analysis_options(step)
        return {**common, **(analysis.to_dict() if analysis is not None else {})}


__all__ = [
    "Options",
    "MassiveOptions",
    "DisruptionOptions",
    "PhaseOptions",
    "TaskOptions",
    "ContextOptions",
    "TENSORS",
    "SCOPES",
    "ROTARY_MODES",
    "AGGREGATES",
    "CONDITIONS",
    "SPIKE_RULES",
    "BOS_MODES",
    "LAST_LAYER_MODES",
    "ATTENTION_SOURCES",
    "TASKS",
    "SCORING",
    "FORMATS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TAU",
    "DEFAULT_GU_EPS",
    "DEFAULT_N",
    "REPORT_N",
    "QUICK_N",
    "scaled_n",
    "check_tensors",
    "check_conditions",
    "check_metrics",
    "check_task_protocol",
    "check_profile_options",
    "SINK_SOURCES",
    "PROFILE_FIELDS",
    "METRIC_GROUPS",
    "DEFAULT_METRICS",
    "TrackSizes",
    "TrackOptions",
    "SIZES",
    "TRACK_SIZES",
    "takes_options",
    "REPORT_CONTEXT",
    "MeanReplacementOptions",
    "BosAblationOptions",
    "DECODE_MODES",
    "DEFAULT_BATCH_SIZE",
    "field_default",
    "check_passkey_lengths",
    "ReportOptions",
    "REPORT_STEPS",
    "OPTIONAL_STEPS",
    "NOT_IN_QUICK",
    "DEFAULT_STEPS",
]
