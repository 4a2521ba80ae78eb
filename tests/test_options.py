"""drope_lens.options: frozen, validated options objects shared by the library, the report and the CLI."""

import dataclasses
import inspect

import pytest
import torch

import drope_lens as dl
from drope_lens.errors import DropeLensInputError
from drope_lens.options import (
    CONDITIONS, ContextOptions, DisruptionOptions, MassiveOptions, PhaseOptions, TaskOptions,
)


def test_frozen_replace_and_to_dict():
    o = MassiveOptions(threshold=3, tensors=["q", "k"])
    assert o.threshold == 3.0 and isinstance(o.threshold, float) and o.tensors == ("q", "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.threshold = 4.0
    assert o.replace(scope="head").scope == "head" and o.scope == "layer"
    d = o.to_dict()
    assert d == {"threshold": 3.0, "scope": "layer", "rotary": "pre", "tensors": ["q", "k"], "top": 20,
                 "context_length": None}
    assert MassiveOptions(**d) == o  # to_dict round-trips
    with pytest.raises(TypeError):
        o.replace(lam=2)


@pytest.mark.parametrize("make,error,message", [
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
])
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
    from helpers import TINY_TEXTS, tiny_llama

    model = hooked_from_hf(tiny_llama(seed=3), tokenizer)
    a = detect_massive(model, list(TINY_TEXTS), MassiveOptions(threshold=2.0, scope="head", tensors=("q", "k")))
    b = detect_massive(model, list(TINY_TEXTS), threshold=2.0, scope="head", tensors=("q", "k"))
    c = detect_massive(model, list(TINY_TEXTS), MassiveOptions(threshold=9.0), threshold=2.0, scope="head",
                       tensors=("q", "k"))  # keywords override the object's fields
    for t in ("q", "k"):
        assert torch.equal(a.masks(t), b.masks(t)) and torch.equal(a.masks(t), c.masks(t))
    assert a.to_dict() == b.to_dict() == c.to_dict()
    with pytest.raises(TypeError, match="MassiveOptions"):
        detect_massive(model, list(TINY_TEXTS), PhaseOptions())


def test_report_fingerprint_holds_every_option():
    from drope_lens.report.runner import ReportOptions

    r = ReportOptions(quick=True, threshold=4.0)
    for step, cls in (("massive", MassiveOptions), ("disruption", DisruptionOptions), ("phase", PhaseOptions),
                      ("tasks", TaskOptions)):
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
