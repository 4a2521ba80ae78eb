"""``drope-lens report --drope recalibrated`` on a tiny cached recalibration: the twin's label in
results.json, report.md, provenance and figure legends; zero-shot and recalibrated parts never reused
for each other."""

from __future__ import annotations

import json

import pytest

from tests.recalibrate.test_recalibrate import _recipe, rope_dir, toy_data  # noqa: F401  (fixtures)

LABEL = "RoPE removed, recalibrated on 256 tokens"


@pytest.fixture
def cached_run(rope_dir, toy_data, tmp_path, monkeypatch):  # noqa: F811
    """A 2-step run of the tiny model in the default cache folder; the embedded model is the tiny one."""
    from drope_lens.loading import load_hooked
    from drope_lens.recalibrate import default_run_dir, recalibrate

    monkeypatch.setenv("DROPE_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        "drope_lens.loading.embedded.load_embedded",
        lambda **kw: load_hooked(rope_dir, dtype=kw.get("dtype", "float32")),
    )
    recipe = _recipe(max_steps=2, save_every=1)
    recalibrate(rope_dir, recipe, default_run_dir("nope"), data=toy_data, progress=False)
    return recipe


@pytest.fixture
def legends(monkeypatch):
    """Every legend text of every figure the report saves."""
    from drope_lens.views import figures

    seen: list[str] = []
    orig = figures.save_figure

    def save(fig, path, *a, **k):
        for ax in fig.axes:
            if ax.get_legend() is not None:
                seen.extend(t.get_text() for t in ax.get_legend().get_texts())
        return orig(fig, path, *a, **k)

    monkeypatch.setattr(figures, "save_figure", save)
    return seen


def _report(out, *extra):
    from drope_lens.cli import main

    return main(
        ["report", "--out", str(out), "--quick", "--steps", "massive", "--max-length", "32", "--allow-partial", *extra]
    )


def test_report_labels_the_recalibrated_twin_and_never_mixes_it_with_the_zero_shot_one(
    cached_run, legends, tmp_path, capsys
):
    out = tmp_path / "report"
    assert _report(out, "--drope", "recalibrated") == 0
    res = json.loads((out / "results.json").read_text())
    recipe_label = cached_run.describe()
    assert res["pair"]["drope"].endswith(f"({LABEL}; {recipe_label})")
    drope_prov = res["provenance"]["models"]["drope"]
    assert drope_prov["nope_origin"] == f"{LABEL}; {recipe_label}"
    assert drope_prov["source"].endswith("checkpoint-2")
    md = (out / "report.md").read_text()
    assert LABEL in md and recipe_label in md and "zero-shot" not in md.split("DroPE/NoPE model:")[1].split("\n")[0]
    assert any(t.endswith(f"({LABEL})") for t in legends), legends
    assert res["steps"]["massive"]["status"] == "ran"

    legends.clear()
    capsys.readouterr()
    assert _report(out) == 0  # the zero-shot twin into the same folder: nothing reused
    res = json.loads((out / "results.json").read_text())
    assert res["steps"]["massive"]["status"] == "ran"
    assert "not reused" in capsys.readouterr().err
    assert "zero-shot NoPE" in res["pair"]["drope"] and "recalibrated on" not in res["pair"]["drope"]
    assert not any("recalibrated on" in t for t in legends)

    assert _report(out, "--drope", "recalibrated") == 0  # and back: the zero-shot part is not reused
    assert json.loads((out / "results.json").read_text())["steps"]["massive"]["status"] == "ran"
    assert _report(out, "--drope", "recalibrated") == 0  # same twin again: reused
    assert json.loads((out / "results.json").read_text())["steps"]["massive"]["status"] == "resumed"


def test_report_drope_recalibrated_without_a_cached_twin_says_run_recalibrate(tmp_path, monkeypatch, capsys):
    from drope_lens.cli import main

    monkeypatch.setenv("DROPE_LENS_CACHE", str(tmp_path))
    monkeypatch.setattr(
        "drope_lens.loading.embedded.load_embedded", lambda **kw: pytest.fail("loaded a model before refusing")
    )
    assert main(["report", "--drope", "recalibrated", "--out", str(tmp_path / "r")]) == 1
    assert "run `drope-lens recalibrate` first" in capsys.readouterr().err
