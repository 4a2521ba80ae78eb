"""CLI options declared from options-class fields (drope_lens.cli.fields) and built back by name."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from drope_lens.cli import build_parser
from drope_lens.cli.common import batch_kwargs, given_texts, texts_from_args
from drope_lens.cli.fields import add_option, field_default, options_from_args
from drope_lens.errors import DropeLensInputError
from drope_lens.options import (
    ContextOptions,
    DisruptionOptions,
    MassiveOptions,
    Options,
    PhaseOptions,
    ReportOptions,
    TaskOptions,
    TrackOptions,
)


@dataclass(frozen=True)
class Demo(Options):
    size: int = 3
    ratio: float = 0.5
    mode: Literal["a", "b"] = "a"
    limit: Optional[int] = None
    verbose: bool = False
    lengths: tuple[int, ...] = (1, 2)
    names: tuple[Literal["x", "y"], ...] = ("x",)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise DropeLensInputError(f"size must be >= 1, got {self.size}")


@dataclass(frozen=True)
class Plain:  # not an Options: a dataclass like the recalibration Recipe
    label: str = "hi"
    steps: int = 7


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo")
    for name in ("size", "ratio", "mode", "limit", "verbose", "lengths", "names"):
        add_option(p, Demo, name, f"the {name}")
    return p


def test_flags_types_choices_and_defaults_come_from_the_field():
    p = _parser()
    names = ("size", "ratio", "mode", "limit", "verbose", "lengths", "names")
    d = p.parse_args([])
    assert [getattr(d, n) for n in names] == [3, 0.5, "a", None, False, [1, 2], ["x"]]
    a = p.parse_args("--size 4 --ratio 2 --mode b --limit 9 --verbose --lengths 5,6 7 --names y".split())
    assert [getattr(a, n) for n in names] == [4, 2.0, "b", 9, True, [5, 6, 7], ["y"]]
    assert type(a.ratio) is float and type(a.size) is int
    for bad in (["--mode", "c"], ["--size", "x"], ["--lengths", "1,z"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_help_shows_the_default_once_and_lists_as_typed():
    text = " ".join(_parser().format_help().split())
    assert "the size (default 3)" in text and "the mode (default a)" in text
    assert "the lengths (default 1,2)" in text and "the names (default x)" in text
    assert "the limit (default" not in text and "the verbose (default" not in text  # None / False: nothing
    p = argparse.ArgumentParser()
    add_option(p, Demo, "size", "how many (default: plenty)")
    add_option(p, Demo, "lengths", "token counts (default %(default)s; quick: 1)")
    text = " ".join(p.format_help().split())
    assert "how many (default: plenty)" in text and "(default 3)" not in text
    assert "token counts (default 1,2; quick: 1)" in text


def test_flag_dest_and_overrides():
    p = argparse.ArgumentParser()
    add_option(p, Demo, "size", "n", flag="--n-items")
    add_option(p, Demo, "limit", "cap", flag="--cap", dest="cap")
    add_option(p, Plain, "label", "a label", choices=("hi", "lo"))
    args = p.parse_args(["--n-items", "5", "--cap", "2", "--label", "lo"])
    assert (args.size, args.cap, args.label) == (5, 2, "lo") and not hasattr(args, "limit")
    with pytest.raises(SystemExit):
        p.parse_args(["--label", "mid"])
    assert field_default(Plain, "steps") == 7 and field_default(Demo, "lengths") == (1, 2)


def test_a_true_switch_is_refused():
    @dataclass(frozen=True)
    class On(Options):
        enabled: bool = True

    with pytest.raises(TypeError, match="On.enabled defaults to True"):
        add_option(argparse.ArgumentParser(), On, "enabled", "x")


def test_options_from_args_by_field_name():
    args = argparse.Namespace(size=5, lengths=[3, 4], names=["y"], unrelated="z")
    o = options_from_args(Demo, args, mode="b")
    assert o == Demo(size=5, lengths=(3, 4), names=("y",), mode="b")  # lists become tuples; missing: defaults
    assert options_from_args(Demo, argparse.Namespace(mode="a"), mode="b").mode == "b"  # given wins
    assert options_from_args(Plain, argparse.Namespace(steps=2)) == Plain(steps=2)
    with pytest.raises(DropeLensInputError, match="size must be >= 1, got 0"):
        options_from_args(Demo, argparse.Namespace(size=0))


@pytest.fixture(scope="module")
def sub():
    return build_parser()._subparsers._group_actions[0].choices


@pytest.mark.parametrize(
    "command,cls",
    [
        ("detect", MassiveOptions),
        ("disrupt", DisruptionOptions),
        ("phase", PhaseOptions),
        ("tasks", TaskOptions),
        ("context", ContextOptions),
        ("report", ReportOptions),
        ("track", TrackOptions),
    ],
)
def test_each_command_defaults_to_its_options_class(sub, command, cls):
    args = sub[command].parse_args([])
    assert args.build_options(args) == cls()


def test_recalibrate_defaults_to_the_recipe(sub):
    from drope_lens.recalibrate.recipe import Recipe

    assert options_from_args(Recipe, sub["recalibrate"].parse_args([])) == Recipe()
    args = sub["recalibrate"].parse_args(["--variant", "qk_norm_nope", "--lr", "3e-4", "--grad-checkpointing"])
    assert options_from_args(Recipe, args) == Recipe(variant="qk_norm_nope", lr=3e-4, grad_checkpointing=True)


def test_command_flags_reach_their_fields(sub):
    args = sub["tasks"].parse_args(
        ["--scoring", "calibrated", "--n-shot", "2", "--passkey-lengths", "128", "64", "--chat", "--tasks", "cities"]
    )
    assert args.build_options(args) == TaskOptions(
        scoring="calibrated", n_shot=2, passkey_lengths=(128, 64), chat=True, tasks=("cities",)
    )
    args = sub["report"].parse_args(["--scoring", "logprob", "--task-format", "yes_no", "--quick"])
    assert args.build_options(args) == ReportOptions(task_scoring="logprob", task_format="yes_no", quick=True)
    args = sub["phase"].parse_args(["--profile-only", "--bos-mode", "mean", "--qk-threshold", "5"])
    assert args.build_options(args) == PhaseOptions(conditions=(), bos_mode="mean")
    assert args.qk_threshold == 5.0 and not hasattr(args, "threshold")  # the qk gate is not λ
    args = sub["disrupt"].parse_args(["--allow-overlap", "--aggregate", "pooled", "--n-seeds", "3"])
    assert args.build_options(args) == DisruptionOptions(exclude_massive=False, aggregate="pooled", n_seeds=3)


def test_track_metrics_leave_the_positionals_alone(sub):
    args = sub["track"].parse_args(["--metrics", "ppl,bos", "runs/qk"])
    assert args.checkpoints == ["runs/qk"] and args.build_options(args).metrics == ("ppl", "bos")


def test_texts_and_batch_keywords(sub, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("first text here\n\nsecond text here\n")
    args = sub["phase"].parse_args(["--texts-file", str(f), "--max-length", "32", "--batch-size", "2"])
    assert given_texts(args) == texts_from_args(args) == ["first text here", "second text here"]
    assert batch_kwargs(args) == {"batch_size": 2, "max_length": 32}
    assert texts_from_args(sub["phase"].parse_args(["--text", "a b", "--text", "c"])) == ["a b", "c"]
    none = sub["phase"].parse_args([])
    assert given_texts(none) is None and len(texts_from_args(none)) > 1  # the built-in texts
    assert batch_kwargs(none) == {"batch_size": 8, "max_length": None}
