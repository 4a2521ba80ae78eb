"""track() over tiny recalibration checkpoints; recalibrate/track CLIs refuse bad options before loading."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from tests.recalibrate.test_recalibrate import _recipe, rope_dir, toy_data  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def run_dir(rope_dir, toy_data, tmp_path_factory):  # noqa: F811
    from drope_lens.recalibrate import recalibrate

    out = tmp_path_factory.mktemp("run")
    recalibrate(rope_dir, _recipe(max_steps=2, save_every=1), out, data=toy_data, progress=False)
    return out


def test_track_three_checkpoints_one_row_per_checkpoint_and_metric(run_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from drope_lens.recalibrate.model import DroPELlamaForCausalLM
    from drope_lens.track import pipeline as track_mod

    ckpts = [str(run_dir / f"checkpoint-{i}") for i in range(3)]
    res = track_mod.track(ckpts, "ppl,massive,sinks,bos", out=tmp_path / "t", progress=False)
    df = res.to_dataframe()
    per_group = {"ppl": 1, "massive": 9, "sinks": 2, "bos": 4}
    assert len(df) == 3 * sum(per_group.values())
    assert not df.duplicated(["checkpoint", "metric"]).any()
    assert set(df.checkpoint) == {"checkpoint-0", "checkpoint-1", "checkpoint-2"}
    assert sorted(set(df.tokens)) == [0, 128, 256] and set(df.role) == {"drope"}
    # held-out ppl of the last checkpoint against a plain HF forward (identity rotary, HF loss)
    held = load_file(str(run_dir / "heldout.safetensors"))["tokens"]
    hf = DroPELlamaForCausalLM.from_pretrained(ckpts[2]).eval()
    with torch.no_grad():
        ref = math.exp(float(hf(input_ids=held, labels=held).loss))
    got = df[(df.checkpoint == "checkpoint-2") & (df.metric == "ppl_heldout")].value.item()
    assert got == pytest.approx(ref, rel=1e-4)
    # resume: every part is reused, no analysis runs again
    for mod, name in (("massive", "detect_massive"), ("profile_pass", "phase_profile"), ("perplexity", "perplexity")):
        monkeypatch.setattr(sys.modules[f"drope_lens.analysis.{mod}"], name, lambda *a, **k: pytest.fail("reran"))
    again = track_mod.track(ckpts, "ppl,massive,sinks,bos", out=tmp_path / "t", progress=False)
    assert again.rows() == res.rows()


def test_track_run_folder_includes_rope_reference_and_figure(run_dir, tmp_path):
    from drope_lens.analysis.massive import detect_massive
    from drope_lens.data.texts import builtin_texts
    from drope_lens.loading import load_hooked
    from drope_lens.track.pipeline import track
    from drope_lens.views.track_figure import plot_track

    res = track([run_dir], ("massive",), max_length=64, progress=False)
    assert [p.name for p in res.points] == ["rope", "checkpoint-0", "checkpoint-1", "checkpoint-2"]
    tokens, values, rope = res.series("massive_q_total")
    assert tokens == [0, 128, 256] and len(values) == 3
    ref = detect_massive(load_hooked(res.points[0].path), builtin_texts(), max_length=64).total_mean("q")
    assert rope == pytest.approx(ref)
    fig = plot_track(res)
    assert fig.axes[0].get_xlabel() == "tokens seen"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["recalibrate", "--lr", "0"], "--lr"),
        (["recalibrate", "--seq-len", "1"], "--seq-len"),
        (["recalibrate", "--max-steps", "0"], "--max-steps"),
        (["recalibrate", "--data", "/no/such/file.txt", "--out", "OUT"], "--data"),
        (["recalibrate", "--rope", "/no/such/folder", "--out", "OUT"], "--rope"),
        (["recalibrate", "--device", "nonsense"], "--device"),
        (["recalibrate", "--track-every", "2", "--track-metrics", "ppl,bogus"], "--metrics"),
        (["recalibrate", "--attention", "flash_attention_2", "--out", "OUT"], "flash-attn"),
        (["track", "OUT", "--global-batch", "4"], "--seq-len"),
        (["track", "OUT", "--metrics", "ppl,bogus"], "--metrics"),
        (["track", "/no/such/run"], "not a folder"),
    ],
)
def test_cli_bad_options_refused_before_loading(argv, match, tmp_path, monkeypatch, capsys):
    from drope_lens.cli import main

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    # the lazy package attribute first: patched after train's, it would cache (and so keep) boom
    monkeypatch.setattr("drope_lens.recalibrate.recalibrate", boom)
    monkeypatch.setattr("drope_lens.recalibrate.train.recalibrate", boom)
    monkeypatch.setattr("drope_lens.track.pipeline.track", boom)
    monkeypatch.setattr("drope_lens.loading.load.load_hooked", boom)
    argv = [str(tmp_path) if a == "OUT" else a for a in argv]
    assert main(argv) == 1
    assert match in capsys.readouterr().err


def test_cli_recalibrate_without_the_builtin_corpus_says_how_to_fetch_it(tmp_path, monkeypatch, capsys):
    from drope_lens.cli import main

    monkeypatch.setenv("DROPE_LENS_CORPUS", str(tmp_path / "no-corpus-here"))
    monkeypatch.setattr("drope_lens.recalibrate.recalibrate", lambda *a, **k: pytest.fail("trained"))
    assert main(["recalibrate", "--out", str(tmp_path / "run")]) == 1
    assert "make corpus" in capsys.readouterr().err


def test_cli_recalibrate_and_track_end_to_end(rope_dir, toy_data, tmp_path, capsys):  # noqa: F811
    from drope_lens.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "recalibrate",
                "--rope",
                str(rope_dir),
                "--out",
                str(out),
                "--data",
                *toy_data,
                "--max-steps",
                "2",
                "--save-every",
                "1",
                "--seq-len",
                "32",
                "--heldout-blocks",
                "4",
                "--lr",
                "3e-3",
                "--track-every",
                "1",
                "--track-metrics",
                "ppl",
            ]
        )
        == 0
    )
    assert "2 steps, 256 tokens" in capsys.readouterr().out
    live = json.loads((out / "track" / "during_training.json").read_text())["rows"]
    assert [(r["checkpoint"], r["metric"]) for r in live] == [
        (n, "ppl_heldout") for n in ("rope", "step-0", "step-1", "step-2")
    ]
    j = tmp_path / "t.json"
    assert main(["track", str(out), "--metrics", "ppl,bos", "--json", str(j), "--figure", str(tmp_path / "t.png")]) == 0
    rows = json.loads(j.read_text())["rows"]
    assert len(rows) == 4 * (1 + 4) and all("checkpoint" in r and "tokens" in r for r in rows)
    assert (tmp_path / "t.png").stat().st_size > 0 and (out / "track" / "parts").is_dir()


def test_load_pair_recalibrated_needs_the_cache(tmp_path, monkeypatch):
    from drope_lens.errors import DropeLensInputError
    from drope_lens.loading import load_pair

    monkeypatch.setenv("DROPE_LENS_CACHE", str(tmp_path))
    with pytest.raises(DropeLensInputError, match="drope-lens recalibrate"):
        load_pair(drope="recalibrated")
    with pytest.raises(DropeLensInputError, match="embedded"):
        load_pair(str(tmp_path), drope="recalibrated")


def test_load_pair_recalibrated_uses_the_cached_default_run(rope_dir, toy_data, tmp_path, monkeypatch, capsys):  # noqa: F811
    from drope_lens.cli import main
    from drope_lens.loading import load_hooked, load_pair
    from drope_lens.recalibrate import default_run_dir, recalibrate

    monkeypatch.setenv("DROPE_LENS_CACHE", str(tmp_path))
    monkeypatch.setattr(
        "drope_lens.loading.embedded.load_embedded",
        lambda **kw: load_hooked(rope_dir, dtype=kw.get("dtype", "float32")),
    )
    recalibrate(rope_dir, _recipe(max_steps=2, save_every=1), default_run_dir("nope"), data=toy_data, progress=False)
    pair = load_pair(drope="recalibrated")
    assert pair.drope.cfg.source == str(default_run_dir("nope") / "checkpoint-2")
    assert "RoPE removed, recalibrated on 256 tokens" in pair.labels["drope"]
    assert main(["track", "--metrics", "bos", "--no-rope"]) == 0  # no folder: the cached run
    assert "checkpoint-2" in capsys.readouterr().out


def test_summary_single_text_with_spaces_is_not_called_empty(capsys):
    import argparse

    from drope_lens.cli.common import validate_common_args
    from drope_lens.errors import DropeLensInputError

    validate_common_args(argparse.Namespace(text="two words"))  # summary's --text is one string
    with pytest.raises(DropeLensInputError, match="empty"):
        validate_common_args(argparse.Namespace(text="   "))
    with pytest.raises(DropeLensInputError, match="empty"):
        validate_common_args(argparse.Namespace(text=["ok", ""]))


def test_cache_key_is_the_budget_and_the_default_run_is_preferred(rope_dir, toy_data, tmp_path, monkeypatch):  # noqa: F811
    from drope_lens.loading.drope_format import cached_recalibrated
    from drope_lens.recalibrate import Recipe, default_run_dir, recalibrate

    monkeypatch.setenv("DROPE_LENS_CACHE", str(tmp_path))
    d = Recipe()
    assert default_run_dir("nope").name == f"smollm2-135m-instruct-nope-{d.max_steps * 1024}tok"
    assert default_run_dir("nope", _recipe(max_steps=3)) != default_run_dir("nope")
    for steps in (2, 3):  # two non-default budgets: the one with more tokens wins
        r = _recipe(max_steps=steps, save_every=steps)
        recalibrate(rope_dir, r, default_run_dir("nope", r), data=toy_data, progress=False)
    assert cached_recalibrated().parent == default_run_dir("nope", _recipe(max_steps=3))
    default = default_run_dir("nope")
    r = _recipe(max_steps=1, save_every=1)
    recalibrate(rope_dir, r, default, data=toy_data, progress=False)  # stands in for the default run
    assert cached_recalibrated() == default / "checkpoint-1"


def test_cli_track_default_metrics_cover_every_group_on_every_checkpoint(run_dir, tmp_path):
    """`drope-lens track RUN` with the default --metrics (the full set) over RoPE + 3 checkpoints."""
    from drope_lens.cli import main
    from drope_lens.track.pipeline import DEFAULT_METRICS, METRIC_GROUPS

    assert DEFAULT_METRICS == METRIC_GROUPS
    j = tmp_path / "t.json"
    assert (
        main(
            [
                "track",
                str(run_dir),
                "--out",
                str(tmp_path / "parts"),
                "--json",
                str(j),
                "--max-length",
                "32",
                "--heldout-blocks",
                "2",
                "--passkey-n",
                "2",
            ]
        )
        == 0
    )
    rows = json.loads(j.read_text())["rows"]
    got = {(r["checkpoint"], r["group"]) for r in rows}
    names = ["rope", "checkpoint-0", "checkpoint-1", "checkpoint-2"]
    assert got == {(n, g) for n in names for g in METRIC_GROUPS}
    by = {(r["checkpoint"], r["metric"]): r["value"] for r in rows}
    for n in names:
        assert 0.0 <= by[(n, "passkey_acc")] <= 1.0
        assert by[(n, "bos_mlp_ppl_factor")] > 0 and by[(n, "qk_mean_ppl_factor")] > 0
