"""The report: every file written, results.json valid against its schema, interrupted runs resume."""

import json

import pytest

from drope_lens.loading import ModelPair, hooked_from_hf, to_nope
from drope_lens.report import steps as report_steps
from drope_lens.report.runner import ReportOptions, run_report
from drope_lens.report.schema import validate_results
from drope_lens.runs.store import PartStore, fingerprint
from drope_lens.testing import plant_channels, tiny_llama

STEPS = ("massive", "phase", "disruption")  # run order


@pytest.fixture(scope="module")
def tiny_pair(tokenizer):
    rope = hooked_from_hf(tiny_llama(seed=11), tokenizer)
    plant_channels(rope, {"q": [(0, 1, 3), (1, 2, 5)], "k": [(0, 0, 7), (1, 1, 2)]}, scale=30.0)
    return ModelPair(rope, to_nope(rope))


def _options(**kw):
    base = dict(quick=True, n_seeds=3, max_length=48, steps=STEPS)
    base.update(kw)
    return ReportOptions(**base)


def test_report_writes_every_file_and_valid_json(tiny_pair, tmp_path):
    results = run_report(tiny_pair, tmp_path, _options(), progress=False)
    validate_results(results)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    validate_results(on_disk)
    assert on_disk["steps"]["tasks"]["status"] == "skipped"
    assert {s: on_disk["steps"][s]["status"] for s in STEPS} == {s: "ran" for s in STEPS}
    assert on_disk["provenance"]["models"]["drope"]["position_encoding"] == "nope"
    assert on_disk["pair"]["study_pair"] is False and on_disk["study"] is None
    report = (tmp_path / "report.md").read_text()
    for heading in ("## 1. Massive values", "## 2. Disruption", "## 3. Phase metrics", "*Reading:*"):
        assert heading in report
    for rel in on_disk["files"]["figures"] + on_disk["files"]["views"]:
        assert (tmp_path / rel).stat().st_size > 0, rel
    assert any(p.endswith("qkv_totals.png") for p in on_disk["files"]["figures"])
    assert {"views/attention.html", "views/sink_scores.html", "views/massive_channels.html"} <= set(
        on_disk["files"]["views"]
    )
    from drope_lens.views import check_offline

    for view in on_disk["files"]["views"]:
        check_offline((tmp_path / view).read_text())  # raises on any external script/style/image
    # the planted channels are found and reported
    q_total = on_disk["experiments"]["massive"]["rope"]["tensors"]["q"]["total_mean"]
    assert q_total >= 2
    # disruption reused the massive step's channels and the phase step's baseline pass
    exp = on_disk["experiments"]
    for role in ("rope", "drope"):
        d = exp["disruption"][role]
        assert d["settings"]["selection"] == "given" and d["settings"]["baseline"] == "given"
        assert d["base_ppl"] == pytest.approx(exp["phase"][role]["conditions"]["baseline"]["ppl"]["ppl"])
        assert d["massive_counts_per_layer"] == exp["massive"][role]["identify_selection"]["counts_per_layer"]


def test_disruption_alone_measures_what_it_needs(tiny_pair, tmp_path):
    # full mode: disruption evaluates a subset of the phase texts, so the baseline is a subset too
    steps = ("massive", "phase", "disruption")
    shared = run_report(tiny_pair, tmp_path / "a", _options(quick=False, steps=steps), progress=False)["experiments"]
    assert shared["disruption"]["rope"]["n_eval_texts"] < shared["phase"]["n_texts"]
    assert shared["disruption"]["rope"]["settings"]["baseline"] == "given"
    shared = shared["disruption"]
    alone = run_report(tiny_pair, tmp_path / "b", _options(quick=False, steps=("disruption",)), progress=False)[
        "experiments"
    ]["disruption"]
    assert alone["rope"]["settings"]["selection"] == "detected"
    assert alone["rope"]["settings"]["baseline"] == "measured"
    for key in ("base_ppl", "massive_ppl", "m_minus_r"):
        assert alone["rope"][key] == pytest.approx(shared["rope"][key], rel=1e-9), key
    assert alone["rope"]["random_ppls"] == pytest.approx(shared["rope"]["random_ppls"], rel=1e-9)


def test_schema_rejects_a_broken_results_file(tiny_pair, tmp_path):
    import jsonschema

    results = run_report(tiny_pair, tmp_path, _options(steps=("massive",)), progress=False)
    broken = json.loads(json.dumps(results))
    broken["experiments"]["massive"]["rope"]["tensors"]["q"].pop("total_mean")
    with pytest.raises(jsonschema.ValidationError):
        validate_results(broken)
    broken = json.loads(json.dumps(results))
    broken["provenance"]["models"]["rope"]["position_encoding"] = "alibi"
    with pytest.raises(jsonschema.ValidationError):
        validate_results(broken)


def test_interrupted_report_resumes_without_redoing_finished_steps(tiny_pair, tmp_path, monkeypatch):
    calls = {s: 0 for s in STEPS}
    originals = {s: getattr(report_steps, f"run_{s}") for s in STEPS}

    def counting(step):
        def run(*args, **kwargs):
            calls[step] += 1
            if step == "disruption" and calls[step] == 1:
                raise KeyboardInterrupt  # the user pressed Ctrl-C during the third experiment
            return originals[step](*args, **kwargs)

        return run

    for s in STEPS:
        monkeypatch.setattr(report_steps, f"run_{s}", counting(s))
    with pytest.raises(KeyboardInterrupt):
        run_report(tiny_pair, tmp_path, _options(), progress=False)
    store = PartStore(tmp_path)
    assert store.path("massive").exists() and store.path("phase").exists()
    assert not store.path("disruption").exists() and not (tmp_path / "results.json").exists()
    first_massive = json.loads(store.path("massive").read_text())

    results = run_report(tiny_pair, tmp_path, _options(), progress=False)
    assert calls == {"massive": 1, "phase": 1, "disruption": 2}
    assert {s: results["steps"][s]["status"] for s in STEPS} == {
        "massive": "resumed",
        "phase": "resumed",
        "disruption": "ran",
    }
    assert results["experiments"]["massive"] == first_massive["result"]
    # other options -> the step is not reused
    run_report(tiny_pair, tmp_path, _options(steps=("massive",), threshold=4.0), progress=False)
    assert calls["massive"] == 2


def test_part_store_ignores_corrupt_and_mismatched_parts(tmp_path):
    store = PartStore(tmp_path)
    store.save("massive", {"a": 1}, {"x": 1}, 0.5)
    assert store.load("massive", {"a": 1}) == {"x": 1}
    assert store.load("massive", {"a": 2}) is None
    store.path("massive").write_text("{ truncated")
    assert store.load("massive", {"a": 1}) is None
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})


def test_bad_report_options_are_refused():
    with pytest.raises(ValueError, match="Unknown report steps"):
        ReportOptions(steps=("massive", "vibes"))
    with pytest.raises(ValueError, match="threshold"):
        ReportOptions(threshold=0)
    for bad, match in (
        (dict(n_seeds=1), "n_seeds"),
        (dict(max_length=0), "max_length"),
        (dict(batch_size=0), "batch_size"),
        (dict(task_n=0), "task_n"),
        (dict(passkey_lengths=(0,)), "passkey_lengths"),
        (dict(passkey_lengths=()), "passkey"),
    ):
        with pytest.raises(ValueError, match=match):
            ReportOptions(**bad)
    quick = ReportOptions(quick=True, passkey_lengths=(256, 512))
    assert quick.max_length == 128 and quick.n_seeds == 3 and tuple(quick.passkey_lengths) == (128,)


def test_steps_own_the_step_list_and_nothing_imports_steps_back():
    """report/steps.py imports report/extended.py (the optional step), never the reverse (no import circle)."""
    import subprocess
    import sys

    code = (
        "import sys, drope_lens.report.extended, drope_lens.report.texts; "
        "print('drope_lens.report.steps' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    from drope_lens.options import OPTIONAL_STEPS, REPORT_STEPS

    assert report_steps.STEP_ORDER == REPORT_STEPS + OPTIONAL_STEPS
    assert all(report_steps.step_function(s).__name__ in (f"run_{s}",) for s in report_steps.STEP_ORDER)
    quick = ReportOptions(quick=True, steps=("massive", "context"))
    assert report_steps.planned_steps(quick) == [
        ("massive", True),
        ("phase", False),
        ("disruption", False),
        ("tasks", False),
    ]  # context never with --quick; an optional step is listed only when it runs
    with pytest.raises(KeyError, match="not a report step"):
        report_steps.step_function("vibes")
