"""drope_lens.options: frozen, validated options objects shared by the library, the report and the CLI."""

import dataclasses
import inspect
import json

import pytest
import torch

import drope_lens as dl
from drope_lens.errors import DropeLensInputError
from drope_lens.options import (
    CONDITIONS,
    BosAblationOptions,
    ContextOptions,
    DisruptionOptions,
    MassiveOptions,
    MeanReplacementOptions,
    PhaseOptions,
    TaskOptions,
)


def test_frozen_replace_and_to_dict():
    o = MassiveOptions(threshold=3, tensors=["q", "k"])
    assert o.threshold == 3.0 and isinstance(o.threshold, float) and o.tensors == ("q", "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.threshold = 4.0
    assert o.replace(scope="head").scope == "head" and o.scope == "layer"
    d = o.to_dict()
    assert d == {
        "threshold": 3.0,
        "scope": "layer",
        "rotary": "pre",
        "tensors": ["q", "k"],
        "top": 20,
        "context_length": None,
    }
    assert MassiveOptions(**d) == o  # to_dict round-trips
    with pytest.raises(TypeError):
        o.replace(lam=2)


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda: MassiveOptions(threshold=0), DropeLensInputError, "threshold (lambda) must be a finite number > 0"),
        (lambda: MassiveOptions(scope="model"), ValueError, "Unknown scope 'model'"),
        (lambda: MassiveOptions(tensors=("q", "x")), ValueError, "Unknown tensor 'x'"),
        (lambda: MassiveOptions(top=-1), DropeLensInputError, "top must be >= 0, got -1"),
        (lambda: DisruptionOptions(n_seeds=1), ValueError, "n_seeds must be >= 2 for the t-test"),
        (lambda: DisruptionOptions(aggregate="max"), ValueError, "Unknown aggregate 'max'"),
        (lambda: PhaseOptions(tau=0), DropeLensInputError, "tau must be in (0, 1], got 0.0"),
        (lambda: PhaseOptions(spike_rule="max"), DropeLensInputError, "Unknown spike rule 'max'"),
        (lambda: PhaseOptions(conditions=("baseline", "sinks")), DropeLensInputError, "Unknown condition(s) ['sinks']"),
        (lambda: PhaseOptions(last_layer="x"), DropeLensInputError, "Unknown last_layer 'x'"),
        (lambda: TaskOptions(scoring="vibes"), DropeLensInputError, "Unknown scoring 'vibes'"),
        (lambda: TaskOptions(task_format="completion", scoring="study"), DropeLensInputError, "needs log-prob scoring"),
        (lambda: TaskOptions(tasks=("weather",)), DropeLensInputError, "tasks: unknown ['weather']"),
        (lambda: ContextOptions(lengths=(32,)), ValueError, "Every length must be an int >= 64 tokens, got 32."),
        (lambda: ContextOptions(depths=(1.5,)), ValueError, "depths must be fractions in [0, 1], got [1.5]"),
    ],
)
def test_bad_values_refused_with_the_library_messages(make, error, message):
    with pytest.raises(error) as exc:
        make()
    assert message in str(exc.value)


def test_literal_choices_are_the_tuples():
    assert PhaseOptions.choices("conditions") == CONDITIONS
    assert MassiveOptions.choices("tensors") == ("q", "k", "v")
    assert PhaseOptions.choices("spike_rule") == ("argmax", "first_above")
    assert TaskOptions.choices("scoring") == ("logprob", "calibrated", "study")
    from drope_lens.analysis.sinks import DEFAULT_TAU
    from drope_lens.hooks.conditions import CONDITIONS as hooks_conditions
    from drope_lens.tasks.runner import SCORING

    assert hooks_conditions is CONDITIONS and SCORING == TaskOptions.choices("scoring")
    assert PhaseOptions().tau == DEFAULT_TAU


def test_run_tasks_defaults_are_task_options_defaults():
    from drope_lens.tasks.runner import run_tasks

    params = inspect.signature(run_tasks).parameters
    for f in dataclasses.fields(TaskOptions):
        assert params[f.name].default == TaskOptions.default(f.name), f.name


def test_cli_defaults_come_from_the_options():
    from drope_lens.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    detect = {a.dest: a for a in sub["detect"]._actions}
    assert detect["threshold"].default == MassiveOptions().threshold
    assert tuple(detect["scope"].choices) == MassiveOptions.choices("scope")
    phase = {a.dest: a for a in sub["phase"]._actions}
    assert phase["tau"].default == PhaseOptions().tau and tuple(phase["conditions"].default) == CONDITIONS
    tasks = {a.dest: a for a in sub["tasks"]._actions}
    assert tuple(tasks["passkey_lengths"].default) == TaskOptions().passkey_lengths
    ctx = {a.dest: a for a in sub["context"]._actions}
    assert tuple(ctx["lengths"].default) == ContextOptions().lengths


def test_options_object_and_keywords_give_the_same_result(tokenizer):
    from drope_lens.analysis.massive import detect_massive
    from drope_lens.loading import hooked_from_hf
    from drope_lens.testing import TINY_TEXTS, tiny_llama

    model = hooked_from_hf(tiny_llama(seed=3), tokenizer)
    a = detect_massive(model, list(TINY_TEXTS), MassiveOptions(threshold=2.0, scope="head", tensors=("q", "k")))
    b = detect_massive(model, list(TINY_TEXTS), threshold=2.0, scope="head", tensors=("q", "k"))
    c = detect_massive(
        model, list(TINY_TEXTS), MassiveOptions(threshold=9.0), threshold=2.0, scope="head", tensors=("q", "k")
    )  # keywords override the object's fields
    for t in ("q", "k"):
        assert torch.equal(a.masks(t), b.masks(t)) and torch.equal(a.masks(t), c.masks(t))
    assert a.to_dict() == b.to_dict() == c.to_dict()
    with pytest.raises(TypeError, match="MassiveOptions"):
        detect_massive(model, list(TINY_TEXTS), PhaseOptions())


def test_report_fingerprint_holds_every_option():
    from drope_lens.report.runner import ReportOptions

    r = ReportOptions(quick=True, threshold=4.0)
    for step, cls in (
        ("massive", MassiveOptions),
        ("disruption", DisruptionOptions),
        ("phase", PhaseOptions),
        ("tasks", TaskOptions),
    ):
        opts = r.step_options(step)
        assert {f.name for f in dataclasses.fields(cls)} <= set(opts), step
        assert {"quick", "seed", "max_length", "batch_size"} <= set(opts)
    assert r.step_options("massive")["threshold"] == 4.0
    assert r.step_options("disruption")["n_seeds"] == 3  # quick caps the seeds
    assert r.step_options("phase")["profile_conditions"] is False
    assert r.step_options("tasks")["n"] == {"cities": 8, "sports": 8, "sentiment": 4, "passkey": 2}
    assert ReportOptions(threshold=4.0).step_options("massive") != ReportOptions().step_options("massive")


def test_public_api_exports_the_options():
    for name in ("MassiveOptions", "DisruptionOptions", "PhaseOptions", "TaskOptions", "ContextOptions"):
        assert name in dl.__all__ and getattr(dl, name) is getattr(__import__("drope_lens.options").options, name)
    assert dl.load_pair.__module__ == "drope_lens.loading.pair"


def _no_times(d):
    """A result dict without its wall-clock fields (the only thing two identical runs may differ in),
    as JSON text (so that NaN equals NaN)."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if "seconds" not in k and k != "wall_s"}
        return [strip(v) for v in x] if isinstance(x, (list, tuple)) else x

    return json.dumps(strip(d), sort_keys=True, default=str)


def test_run_tasks_options_object_and_keywords_give_the_same_result(tokenizer):
    from drope_lens.loading import hooked_from_hf
    from drope_lens.tasks.runner import run_pair_tasks, run_tasks
    from drope_lens.testing import tiny_llama

    model = hooked_from_hf(tiny_llama(seed=3), tokenizer)
    kw = dict(tasks=("sports",), conditions=("baseline", "qk"), n=3, seed=2, scoring="calibrated")
    a = run_tasks(model, options=TaskOptions(**kw), bos_layer=0)
    b = run_tasks(model, bos_layer=0, **kw)
    c = run_tasks(
        model,
        options=TaskOptions(**{**kw, "seed": 7, "scoring": "study", "task_format": "yes_no"}),
        seed=2,
        scoring="calibrated",
        bos_layer=0,
    )  # keywords override the object's fields
    d = run_tasks(model, options=TaskOptions(**{**kw, "seed": 7}), bos_layer=0)
    assert _no_times(a.to_dict()) == _no_times(b.to_dict()) == _no_times(c.to_dict())
    assert a.seed == 2 and d.seed == 7 and a.scoring == "calibrated"
    assert "options" in inspect.signature(run_tasks).parameters
    with pytest.raises(TypeError, match="TaskOptions"):
        run_tasks(model, options=PhaseOptions())

    class Pair:  # the two models of a pair, here the same one twice
        tokenizer, n_ctx, labels = model.tokenizer, model.cfg.n_ctx, {}

        def items(self):
            return [("rope", model), ("drope", model)]

    p = run_pair_tasks(Pair(), options=TaskOptions(**{**kw, "seed": 7}), seed=2, bos_layer=0)
    assert _no_times(p.rope.to_dict()) == _no_times(b.to_dict())


def test_track_options_frozen_validated_and_sizes_shared():
    from drope_lens.cli import build_parser
    from drope_lens.options import METRIC_GROUPS, SIZES, TrackOptions, TrackSizes
    from drope_lens.track import pipeline as track_mod

    o = TrackOptions(metrics="ppl, bos,ppl", n_seeds=3)
    assert o.metrics == ("ppl", "bos") and o.n_seeds == 3 and o.include_rope is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.n_seeds = 4
    assert o.sizes() == TrackSizes(n_seeds=3) and TrackOptions().metrics == METRIC_GROUPS
    assert track_mod.TrackSizes is TrackSizes and track_mod.SIZES is SIZES  # one definition, re-exported
    for bad, message in (
        (dict(metrics="ppl,vibes"), "--metrics: unknown ['vibes']"),
        (dict(metrics=""), "--metrics: unknown empty list"),
        (dict(heldout_blocks=0), "heldout_blocks must be an int >= 1, got 0"),
        (dict(n_seeds=1), "n_seeds must be an int >= 2, got 1"),
        (dict(max_length=1), "max_length must be an int >= 2, got 1"),
        (dict(passkey_n=True), "passkey_n must be an int >= 1, got True"),
    ):
        with pytest.raises(DropeLensInputError) as exc:
            TrackOptions(**bad)
        assert message in str(exc.value)
    sub = build_parser()._subparsers._group_actions[0].choices
    args = sub["track"].parse_args(["--n-seeds", "3", "--metrics", "ppl,bos", "--no-rope"])
    assert args.build_options(args) == TrackOptions(metrics=("ppl", "bos"), n_seeds=3, include_rope=False)
    defaults = sub["track"].parse_args([])
    assert args.build_options(defaults) == TrackOptions()


def test_track_options_object_and_keywords_give_the_same_parts(tokenizer, tmp_path, monkeypatch):
    from drope_lens.loading import hooked_from_hf
    from drope_lens.options import TrackOptions, TrackSizes
    from drope_lens.testing import TINY_TEXTS, tiny_llama
    from drope_lens.track import pipeline as track_mod
    from drope_lens.track.pipeline import TrackPoint, track

    monkeypatch.setattr(
        track_mod, "_load", lambda pt, dtype, device, quantize=None: hooked_from_hf(tiny_llama(seed=3), tokenizer)
    )
    pts = [TrackPoint(name="a", path=str(tmp_path), role="drope", step=0, tokens=0)]
    texts = list(TINY_TEXTS)
    a = track(pts, options=TrackOptions(metrics=("massive", "bos"), max_length=16), texts=texts, progress=False)
    b = track(pts, "massive,bos", max_length=16, texts=texts, progress=False)
    c = track(
        pts,
        options=TrackOptions(metrics=("ppl",), max_length=64),
        metrics="massive,bos",
        max_length=16,
        texts=texts,
        progress=False,
    )
    assert a.rows() and _no_times(a.to_dict()) == _no_times(b.to_dict()) == _no_times(c.to_dict())
    assert a.options["max_length"] == 16 and {f.name for f in dataclasses.fields(TrackSizes)} <= set(a.options)


def test_report_options_frozen_quick_copy_and_context_step():
    from drope_lens.options import REPORT_CONTEXT
    from drope_lens.report.runner import ReportOptions

    r = ReportOptions(n_seeds=5, passkey_lengths=[256, 64], steps=["massive", "context"])
    assert r.passkey_lengths == (256, 64) and r.steps == ("massive", "context")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.n_seeds = 3
    q = r.replace(quick=True)  # a new, shrunk object; r is untouched
    assert (q.n_seeds, q.max_length, q.passkey_lengths) == (3, 128, (64,)) and r.n_seeds == 5
    assert q.replace(seed=1).n_seeds == 3 and q == ReportOptions(
        quick=True, n_seeds=5, passkey_lengths=(256, 64), steps=("massive", "context")
    )
    assert r.to_dict()["passkey_lengths"] == [256, 64] and ReportOptions(**r.to_dict()) == r
    ctx = ReportOptions(seed=3, threshold=4.0).analysis_options("context")
    assert ctx == REPORT_CONTEXT.replace(seed=3, threshold=4.0) and isinstance(ctx, ContextOptions)
    opts = ReportOptions().step_options("context")
    assert {f.name for f in dataclasses.fields(ContextOptions)} <= set(opts)
    assert ReportOptions(threshold=4.0).step_options("context") != opts
    for bad, message in (
        (dict(n_seeds=1), "n_seeds must be >= 2, got 1"),
        (dict(task_scoring="vibes"), "Unknown task_scoring 'vibes'; choose one of"),
        (dict(task_n=0), "task_n must be >= 1, got 0"),
        (dict(passkey_lengths=()), "passkey_lengths must be positive token counts"),
    ):
        with pytest.raises(DropeLensInputError) as exc:
            ReportOptions(**bad)
        assert message in str(exc.value)


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda: MeanReplacementOptions(k=0), ValueError, "k must be an integer >= 1, got 0"),
        (lambda: MeanReplacementOptions(rotary="mid"), ValueError, "Unknown rotary 'mid'"),
        (lambda: MeanReplacementOptions(decode="maybe"), ValueError, "Unknown decode 'maybe'"),
        (lambda: MeanReplacementOptions(tensors=("q", "q")), ValueError, "tensors has duplicates"),
        (lambda: MeanReplacementOptions(threshold=0), ValueError, "threshold must be > 0 (or None for no gate), got 0"),
        (lambda: MeanReplacementOptions(threshold=5.0, largest=False), ValueError, "threshold gates the largest dims"),
        (lambda: MeanReplacementOptions(tensors=("v",)).qk_kwargs(), DropeLensInputError, "replaces Q and K"),
        (lambda: BosAblationOptions(layer=-1), DropeLensInputError, "layer -1 is out of range (>= 0)"),
        (lambda: BosAblationOptions(layer="2"), DropeLensInputError, "layer must be an int, got '2'"),
        (
            lambda: BosAblationOptions(mode="half"),
            DropeLensInputError,
            "Unknown mode 'half'; choose one of ('zero', 'mean')",
        ),
    ],
)
def test_intervention_options_refuse_bad_values(make, error, message):
    with pytest.raises(error) as exc:
        make()
    assert message in str(exc.value)


def test_intervention_options_frozen_and_composed():
    from drope_lens.hooks.conditions import QK_DEFAULTS, qk_settings

    m = MeanReplacementOptions(k=2, layers=[1, 0], threshold=5)
    assert m.layers == (1, 0) and m.tensors == ("q", "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.k = 3
    assert (
        qk_settings(m) == {"k": 2, "rotary": "pre", "layers": (1, 0), "decode": "skip", "threshold": 5, "largest": True}
        and qk_settings(None) == {}
        and qk_settings({"k": 3}) == {"k": 3}
    )
    assert QK_DEFAULTS == {n: getattr(MeanReplacementOptions(), n) for n in ("k", "rotary", "decode")}
    b = BosAblationOptions(layer=2, mode="mean")
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.layer = 3
    assert PhaseOptions(bos_mode="mean", study_compatible=True).bos_ablation(2) == b.replace(study_compatible=True)
    assert TaskOptions(bos_mode="mean").bos_ablation(2) == b


def test_intervention_options_object_and_keywords_give_the_same_hooks(tokenizer):
    from drope_lens.analysis.interventions import phase_experiment
    from drope_lens.analysis.perplexity import perplexity
    from drope_lens.hooks.bos import bos_mlp_ablation_hooks
    from drope_lens.hooks.mean_replacement import mean_replacement_hooks, qk_mean_replacement_hooks
    from drope_lens.loading import hooked_from_hf
    from drope_lens.testing import TINY_TEXTS, tiny_llama

    model = hooked_from_hf(tiny_llama(seed=3), tokenizer)
    texts = list(TINY_TEXTS)

    def ppl(hooks):
        return perplexity(model, texts, fwd_hooks=hooks).ppl

    base = ppl([])
    kw = dict(k=2, rotary="post", layers=[0])
    by_kw = ppl(qk_mean_replacement_hooks(model, **kw))
    assert by_kw != base  # the hooks change something, so equality below is informative
    assert ppl(qk_mean_replacement_hooks(model, MeanReplacementOptions(**kw))) == by_kw
    assert (
        ppl(qk_mean_replacement_hooks(model, MeanReplacementOptions(k=1, **{"rotary": "post", "layers": [0]}), k=2))
        == by_kw
    )  # keywords override the object's fields
    assert ppl(mean_replacement_hooks(model, options=MeanReplacementOptions(**kw))) == by_kw
    with pytest.raises(ValueError, match="d_head"):
        mean_replacement_hooks(model, options=MeanReplacementOptions(k=model.cfg.d_head + 1))
    bos_kw = ppl(bos_mlp_ablation_hooks(1, mode="mean", model=model))
    assert bos_kw != base
    assert ppl(bos_mlp_ablation_hooks(options=BosAblationOptions(layer=1, mode="mean"), model=model)) == bos_kw
    assert (
        ppl(bos_mlp_ablation_hooks(0, options=BosAblationOptions(layer=1, mode="zero"), mode="mean", model=model))
        != bos_kw
    )  # the positional layer overrides options.layer
    with pytest.raises(DropeLensInputError, match="needs a layer"):
        bos_mlp_ablation_hooks(model=model)
    a = phase_experiment(model, texts, conditions=("qk",), qk_kwargs=MeanReplacementOptions(**kw))
    b = phase_experiment(model, texts, conditions=("qk",), qk_kwargs=kw)
    assert a.conditions["qk"].ppl == b.conditions["qk"].ppl and a.conditions["qk"].ppl["ppl"] == by_kw
