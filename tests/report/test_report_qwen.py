"""The report's steps (massive, phase, disruption, tasks, extended) on Qwen-family pairs, loaded from folders as
a user would: a Qwen2 RoPE model beside a ``qwen2_drope`` checkpoint, and a Qwen3 model beside its zero-shot
NoPE twin (bridge backend, the one that holds them)."""

from __future__ import annotations

import json

import pytest

from drope_lens.loading import load_pair
from drope_lens.loading.backend import backend_of
from drope_lens.options import REPORT_STEPS
from drope_lens.report.runner import ReportOptions, run_report
from drope_lens.report.schema import validate_results
from drope_lens.testing import plant_channels, tiny_drope_checkpoint, tiny_model, tiny_qwen_tokenizer

STEPS = (*REPORT_STEPS, "extended")


def _pair(tmp_path, family: str):
    tok = tiny_qwen_tokenizer()
    rope = tmp_path / "rope"
    tiny_model(family, seed=4).save_pretrained(rope)
    tok.save_pretrained(rope)
    drope = None
    if family == "qwen2":
        drope = str(tiny_drope_checkpoint(tmp_path / "drope", attention_type="qk_norm_nope", family="qwen2"))
    pair = load_pair(str(rope), drope)
    for model in (pair.rope, pair.drope):  # random weights have no massive channels: plant some
        plant_channels(model, {"q": [(0, 1, 3), (1, 2, 5)], "k": [(0, 0, 7), (1, 1, 2)]}, scale=30.0)
    return pair


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_every_report_step_runs_on_a_qwen_pair(tmp_path, family):
    pair = _pair(tmp_path, family)
    assert backend_of(pair.rope) == backend_of(pair.drope) == "bridge"
    out = tmp_path / "report"
    opts = ReportOptions(quick=True, n_seeds=2, max_length=48, task_n=4, passkey_lengths=(192,), steps=STEPS)
    results = run_report(pair, out, opts, progress=False)
    validate_results(results)
    on_disk = json.loads((out / "results.json").read_text())
    assert {s: on_disk["steps"][s]["status"] for s in STEPS} == {s: "ran" for s in STEPS}
    models = on_disk["provenance"]["models"]
    assert models["rope"]["position_encoding"] == "rope" and models["drope"]["position_encoding"] == "nope"
    origin = "DroPE checkpoint" if family == "qwen2" else "zero-shot"
    assert origin in json.dumps(models["drope"])
    exp = on_disk["experiments"]
    for role in ("rope", "drope"):
        ppl = exp["phase"][role]["conditions"]["baseline"]["ppl"]["ppl"]
        assert ppl == ppl and 1.0 < ppl < 1e6  # finite, a real perplexity of a random model
        assert exp["disruption"][role]["base_ppl"] == pytest.approx(ppl)
    # the two models are different models: a Qwen2 DroPE checkpoint is not its RoPE source, a twin has no RoPE
    rope_ppl, drope_ppl = (exp["phase"][r]["conditions"]["baseline"]["ppl"]["ppl"] for r in ("rope", "drope"))
    assert rope_ppl != pytest.approx(drope_ppl, rel=1e-6)
    assert "## 1. Massive values" in (out / "report.md").read_text() and (out / "report.html").stat().st_size > 0
    assert len(on_disk["findings"]) > 0
