"""The benchmark's own logic: ratios, target verdicts, table rendering, and a tiny end-to-end run.

No timing is asserted anywhere: the numbers here are synthetic, and the end-to-end run only checks
that a well-formed JSON record comes out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import report_table as rt

ROOT = Path(__file__).resolve().parents[2]


def _sec(t, mem=None, passes=1, status="ok"):
    return {"status": status, "time_s": t, "times": [t], "peak_delta_mb": mem, "passes": passes}


def _record(
    case="detection",
    ours=1.05,
    tl=1.0,
    tl_nl=0.9,
    hf=0.7,
    study=5.0,
    mem=(20.0, 15.0, 14.0, 300.0),
    needs_logits=False,
    **kw,
):
    rec = {
        "case": case,
        "status": "ok",
        "model": "embedded",
        "params_mb": 500.0,
        "workload": "4 × 256 tok",
        "analysis_needs_logits": needs_logits,
        "sections": {
            "drope_lens": _sec(ours, mem[0]),
            "tl_forward": _sec(tl, mem[1]),
            "tl_forward_nologits": _sec(tl_nl, mem[2]),
            "hf_forward": _sec(hf, 10.0),
            "study_way": _sec(study, mem[3]),
        },
    }
    rec.update(kw)
    return rec


# ------------------------------------------------------------------------------------------ ratios
def test_ratio_handles_missing_and_bad_values():
    assert rt.ratio(3.0, 2.0) == pytest.approx(1.5)
    assert rt.ratio(None, 2.0) is None
    assert rt.ratio(1.0, None) is None
    assert rt.ratio(1.0, 0.0) is None
    assert rt.ratio(float("nan"), 1.0) is None
    assert rt.ratio("x", 1.0) is None


def test_case_ratios_use_the_like_for_like_bare_forward():
    rr = rt.case_ratios(_record(needs_logits=False))
    assert rr["vs_tl"] == pytest.approx(1.05)
    assert rr["vs_tl_same_work"] == pytest.approx(1.05 / 0.9)  # no unembedding in the analysis
    assert rr["vs_hf"] == pytest.approx(1.5)
    assert rr["speedup"] == pytest.approx(5.0 / 1.05)
    assert rr["mem_vs_tl"] == pytest.approx(20.0 / 14.0)
    assert rr["study_mem_vs_ours"] == pytest.approx(15.0)
    assert rr["mem_over_model"] == pytest.approx(520.0 / 500.0)
    rr = rt.case_ratios(_record(needs_logits=True))
    assert rr["vs_tl_same_work"] == pytest.approx(1.05)
    assert rr["mem_vs_tl"] == pytest.approx(20.0 / 15.0)


def test_per_pass_ratio_divides_by_the_number_of_passes():
    rec = _record(ours=13.0, tl=1.0, needs_logits=True)
    rec["sections"]["drope_lens"]["passes"] = 13
    assert rt.case_ratios(rec)["per_pass_vs_tl"] == pytest.approx(1.0)


def test_failed_sections_give_no_ratio():
    rec = _record()
    rec["sections"]["study_way"] = {"status": "error", "reason": "boom"}
    assert rt.case_ratios(rec)["speedup"] is None


def test_overall_speedup_sums_times_and_ignores_scaling_and_failures():
    recs = [
        _record("detection", ours=1.0, study=2.0),
        _record("phase", ours=1.0, study=10.0),
        _record("scaling", ours=1.0, study=100.0),
        {"case": "tasks", "status": "error"},
    ]
    assert rt.overall_speedup(recs) == pytest.approx(6.0)
    assert rt.overall_speedup([]) is None


# ------------------------------------------------------------------------------------------ verdicts
def _by_target(vs, word):
    return next(v for v in vs if word in v["target"])


def _report(seconds, quick=False):
    return {
        "case": "report",
        "status": "ok",
        "model": "embedded",
        "quick": quick,
        "sections": {"drope_lens": _sec(seconds)},
    }


@pytest.mark.parametrize(
    "met, detection, report_s",
    [
        (True, dict(ours=0.95, tl_nl=0.9, study=10.0), 420.0),
        (False, dict(ours=1.2, tl_nl=1.0, study=2.0, mem=(900.0, 100.0, 100.0, 50.0)), 900.0),
    ],
    ids=["met", "not_met"],
)
def test_verdicts_met_and_not_met(met, detection, report_s):
    vs = rt.verdicts([_record("detection", **detection), _report(report_s)])
    for target in ("detection", "report", "speed-up", "memory"):
        assert _by_target(vs, target)["met"] is met, target
    assert _by_target(vs, "memory")["status"] == ("met" if met else "NOT met")


def test_verdicts_without_measurements_are_not_measured():
    vs = rt.verdicts([])
    assert all(v["met"] is None and v["status"] == "not measured" for v in vs)
    # a quick report is shown but not judged against the full-report target
    vs = rt.verdicts([_report(100.0, quick=True)])
    assert _by_target(vs, "report")["met"] is None


def test_memory_near_forward_allows_slack_for_small_workloads():
    assert rt.memory_near_forward(10.0, 1.0) is True  # within the absolute slack
    assert rt.memory_near_forward(140.0, 100.0) is True
    assert rt.memory_near_forward(400.0, 100.0) is False
    assert rt.memory_near_forward(None, 100.0) is None


# ------------------------------------------------------------------------------------------ rendering
def test_fmt_num():
    assert rt.fmt_num(None) == "-"
    assert rt.fmt_num(float("inf")) == "-"
    assert rt.fmt_num(1.234) == "1.23"
    assert rt.fmt_num(12.34, "×") == "12.3×"
    assert rt.fmt_num(1234.5, " s") == "1234 s" or rt.fmt_num(1234.5, " s") == "1235 s"


def test_render_results_has_every_table():
    recs = [
        _record("detection"),
        _record("disruption", needs_logits=True, label="10 seeds"),
        {"case": "tasks", "status": "skipped", "reason": "not available yet"},
        _record("scaling", n_texts=1, seq_len=1024),
    ]
    payload = {
        "date": "2026-01-01 00:00",
        "command": "python benchmarks/run.py",
        "repeat": 3,
        "machine": {"cpu": "Test CPU", "cores": 2},
        "cases": recs,
    }
    text = rt.render_results(payload)
    assert "python benchmarks/run.py" in text and "Test CPU" in text
    assert "| detection |" in text and "| disruption (10 seeds) |" in text
    assert "not available yet" in text
    assert "| 1 × 1024 |" in text
    assert "**Targets**" in text
    for line in text.splitlines():  # every table row has the same number of cells as its header
        if line.startswith("| case |"):
            n = line.count("|")
        elif line.startswith("| detection |"):
            assert line.count("|") == n


def test_replace_between_markers():
    text = f"# T\n\nintro\n\n{rt.RESULTS_START}\nold\n{rt.RESULTS_END}\n\nafter\n"
    out = rt.replace_between_markers(text, "new table")
    assert "old" not in out and "new table" in out and out.endswith("after\n") and out.startswith("# T")
    assert rt.replace_between_markers(out, "again").count(rt.RESULTS_START) == 1
    appended = rt.replace_between_markers("# no markers\n", "x")
    assert rt.RESULTS_START in appended and "x" in appended


def test_as_jsonable_rounds_and_drops_nan():
    out = rt.as_jsonable({"a": 1.23456789, "b": float("nan"), "c": [float("inf"), 2], 3: "x"})
    assert out == {"a": 1.234568, "b": None, "c": [None, 2], "3": "x"}
    json.dumps(out)


# ------------------------------------------------------------------------------------------ study's way
def test_study_parsers():
    from benchmarks import study_way

    assert study_way.parse_yes_no("Yes, it is.") == 1
    assert study_way.parse_yes_no("no") == 0
    assert study_way.parse_yes_no("I think that is correct") == 1
    assert study_way.parse_yes_no("") == -1
    assert study_way.parse_sentiment("Positive!") == 1
    assert study_way.parse_sentiment("negative, not positive") == 0
    assert study_way.parse_sentiment("unclear") == -1


def test_study_detection_agrees_with_drope_lens(tokenizer):
    """The baseline measures the same thing: per-text massive counts equal drope_lens's."""
    from benchmarks import study_way
    from drope_lens.analysis.massive import detect_massive
    from drope_lens.loading import encode, hooked_from_hf
    from drope_lens.testing import TINY_TEXTS, tiny_llama

    hf = tiny_llama()
    with torch.no_grad():
        hf.model.layers[0].self_attn.q_proj.weight[5] *= 40.0
    model = hooked_from_hf(hf, tokenizer)
    batch = encode(tokenizer, list(TINY_TEXTS[:3]))
    rows = [batch.tokens[i, : int(batch.lengths[i])] for i in range(len(batch))]
    ours = detect_massive(model, batch)
    theirs = study_way.detection(hf, rows)
    for t in ("q", "k", "v"):
        assert ours.totals(t).tolist() == theirs[t]
    assert theirs["q"][0] >= 1


def test_llama2_shaped_path_on_cpu_with_a_tiny_shape():
    from benchmarks import cases

    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        cases.require_cuda("cpu")
    models = cases.load_llama2_shaped("cpu", cases.LLAMA2_TINY_SHAPE, allow_cpu=True)
    assert models.tl["rope"].cfg.dtype == torch.bfloat16
    assert models.tl["drope"].cfg.position_encoding == "nope"
    wl = cases.make_workload(models, 2, 12, 8)
    assert wl.texts is None and tuple(wl.batch.tokens.shape) == (2, 12)
    assert bool((wl.batch.tokens[:, 0] == models.bos_id).all())
    spec = cases.case_detection(models, wl, ["rope", "drope"], {})
    for sec in spec.sections:
        sec.fn()  # every section runs: drope_lens, bare TL/HF forwards, the study's way
    assert {s.name for s in spec.sections} >= {"drope_lens", "tl_forward", "hf_forward", "study_way"}


def test_llama2_shaped_refused_on_cpu_by_the_cli():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--model",
            "llama2-7b-shaped",
            "--device",
            "cpu",
            "--cases",
            "detection",
            "--no-readme",
            "--out",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=300,
    )
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr


# ------------------------------------------------------------------------------------------ end to end
def test_quick_tiny_run_writes_well_formed_json(tmp_path):
    out = tmp_path / "results.json"
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{rt.RESULTS_START}\nold\n{rt.RESULTS_END}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--model",
            "tiny",
            "--cases",
            "detection",
            "--out",
            str(out),
            "--readme",
            str(readme),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert payload["settings"]["quick"] is True and payload["machine"]["cores"]
    (rec,) = payload["cases"]
    assert rec["case"] == "detection" and rec["status"] == "ok", rec
    for name in ("drope_lens", "tl_forward", "tl_forward_nologits", "hf_forward", "study_way"):
        sec = rec["sections"][name]
        assert sec["status"] == "ok" and sec["time_s"] > 0 and sec["peak_delta_mb"] is not None
    assert rt.case_ratios(rec)["speedup"] is not None
    text = readme.read_text()
    assert "old" not in text and "| detection (Q/K/V massive values) |" in text
