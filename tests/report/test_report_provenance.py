"""Resume keyed by provenance, one writer per folder, corrupt parts rerun, failing figures listed,
library bugs not disguised as input errors. The bad-input rows are in tests/inputs/test_bad_inputs.py."""

import json
import os
import subprocess
import sys

import pytest
import torch

import drope_lens
from drope_lens.errors import ReportLockedError
from drope_lens.loading import ModelPair, hooked_from_hf, to_nope
from drope_lens.report import build as report_build
from drope_lens.report import steps as report_steps
from drope_lens.report.runner import ReportOptions, run_report
from drope_lens.runs.provenance import pair_identity, weights_hash
from drope_lens.runs.store import PartStore, ResultsLock
from drope_lens.testing import tiny_llama

STEPS = ("massive", "phase")


def _pair(tokenizer, seed=11, dtype=None, drope_seed=None):
    rope = hooked_from_hf(tiny_llama(seed=seed), tokenizer, dtype=dtype)
    drope = (
        to_nope(rope)
        if drope_seed is None
        else to_nope(hooked_from_hf(tiny_llama(seed=drope_seed), tokenizer, dtype=dtype))
    )
    return ModelPair(rope, drope)


def _opts(**kw):
    return ReportOptions(**{**dict(quick=True, n_seeds=3, max_length=32, steps=STEPS), **kw})


@pytest.fixture
def counted(monkeypatch):
    calls = {s: 0 for s in STEPS}
    for s in STEPS:
        orig = getattr(report_steps, f"run_{s}")

        def run(*a, _s=s, _o=orig, **k):
            calls[_s] += 1
            return _o(*a, **k)

        monkeypatch.setattr(report_steps, f"run_{s}", run)
    return calls


def test_weights_hash_changes_with_any_single_weight(tokenizer):
    model = hooked_from_hf(tiny_llama(seed=3), tokenizer)
    before = weights_hash(model)
    assert weights_hash(model) == before
    with torch.no_grad():
        model.blocks[1].mlp.W_out[3, 5] += 1e-3  # one element, not necessarily in the sample
    assert weights_hash(model) != before


@pytest.mark.parametrize("change", ["dtype", "rope", "drope", "weight", "version"])
def test_changed_models_or_version_rerun_and_say_why(change, tokenizer, tmp_path, counted, monkeypatch, capsys):
    pair = _pair(tokenizer)
    run_report(pair, tmp_path, _opts(), progress=False)
    assert counted == {"massive": 1, "phase": 1}
    # same models, same options: reused
    res = run_report(pair, tmp_path, _opts(), progress=False)
    assert counted == {"massive": 1, "phase": 1}
    assert {s: res["steps"][s]["status"] for s in STEPS} == {"massive": "resumed", "phase": "resumed"}
    capsys.readouterr()
    if change == "dtype":
        new, expect = _pair(tokenizer, dtype=torch.bfloat16), "dtype torch.float32 → torch.bfloat16"
    elif change == "rope":
        new, expect = _pair(tokenizer, seed=12), "rope weights_hash"
    elif change == "drope":
        new, expect = _pair(tokenizer, drope_seed=13), "drope weights_hash"
    elif change == "weight":
        new = _pair(tokenizer)
        with torch.no_grad():
            new.drope.blocks[0].attn.W_Q[0, 1, 2] += 0.5
        expect = "drope weights_hash"
    else:
        new, expect = pair, "drope_lens version"
        monkeypatch.setattr(drope_lens, "__version__", "9.9.9")
    # only the massive step this time: phase must stay untouched on disk
    phase_before = PartStore(tmp_path).path("phase").read_text()
    res = run_report(new, tmp_path, _opts(steps=("massive",)), progress=False)
    err = capsys.readouterr().err
    assert counted == {"massive": 2, "phase": 1}
    assert "[massive] not reused: models differ from the saved part" in err or "version" in err
    assert expect in err
    assert res["steps"]["massive"]["status"] == "ran" and res["steps"]["phase"]["status"] == "skipped"
    assert res["provenance"]["models"]["rope"]["dtype"] == str(new.rope.cfg.dtype)
    saved = json.loads(PartStore(tmp_path).path("massive").read_text())
    assert saved["identity"] == pair_identity(new)
    assert PartStore(tmp_path).path("phase").read_text() == phase_before


def test_corrupt_part_is_reported_and_rerun(tokenizer, tmp_path, counted, capsys):
    pair = _pair(tokenizer)
    run_report(pair, tmp_path, _opts(steps=("massive",)), progress=False)
    path = PartStore(tmp_path).path("massive")
    path.write_text(path.read_text()[:200])  # truncated
    capsys.readouterr()
    res = run_report(pair, tmp_path, _opts(steps=("massive",)), progress=False)
    assert "corrupt or truncated" in capsys.readouterr().err
    assert counted["massive"] == 2 and res["steps"]["massive"]["status"] == "ran"
    json.loads(path.read_text())


def test_lock_held_by_a_live_process_refuses_and_stale_lock_is_taken_over(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": holder.pid, "started": "then"}))
        with pytest.raises(ReportLockedError, match=f"pid {holder.pid}"):
            ResultsLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    msgs = []
    with ResultsLock(tmp_path, say=msgs.append):  # holder is dead now: stale
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert msgs and "stale lock" in msgs[0]
    assert not (tmp_path / ".lock").exists()


def test_two_concurrent_reports_one_refuses(tokenizer, tmp_path):
    pair = _pair(tokenizer)
    # a real second process holds the folder's lock while we try to report into it
    code = (
        "import sys, time; from drope_lens.runs.store import ResultsLock; "
        "l = ResultsLock(sys.argv[1]); l.acquire(); print('locked', flush=True); time.sleep(60)"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(drope_lens.__file__)),
    )
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(ReportLockedError, match="another drope-lens report"):
            run_report(pair, tmp_path, _opts(steps=("massive",)), progress=False)
        assert not (tmp_path / "parts").exists()
    finally:
        other.kill()
        other.wait()


def test_failing_figure_is_listed_and_cli_exit_is_nonzero(tokenizer, tmp_path, monkeypatch):
    pair = _pair(tokenizer)

    def broken(*a, **k):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(report_build, "write_figures", broken)
    res = run_report(pair, tmp_path, _opts(steps=("massive",)), progress=False)
    assert any("figures" in m and "matplotlib exploded" in m for m in res["files"]["missing"])
    assert "NOT WRITTEN" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["files"]["missing"] == res["files"]["missing"]

    import drope_lens.loading as loading
    from drope_lens.cli import main
    from drope_lens.cli import report as cli_report

    monkeypatch.setattr(loading, "load_pair", lambda *a, **k: pair)
    argv = ["report", "--quick", "--steps", "massive", "--out", str(tmp_path / "cli"), "--max-length", "32"]
    assert main(argv) == 1
    assert main(argv + ["--allow-partial"]) == 0
    assert cli_report  # imported module patched through drope_lens.loading


def test_library_bugs_are_not_disguised_and_debug_shows_tracebacks(monkeypatch, capsys):
    from drope_lens.cli import common, main

    def boom(args):
        int("not a number")  # a ValueError raised by Python itself, not a drope_lens input error

    monkeypatch.setattr(common, "check_model_args", boom)
    with pytest.raises(ValueError):
        main(["detect"])
    monkeypatch.undo()
    with pytest.raises(Exception, match="--threshold"):
        main(["detect", "--threshold", "-1", "--debug"])


def test_massive_masks_follow_threshold_and_scope_changes():
    from drope_lens.analysis.massive import MassiveValues, massive_mask

    g = torch.Generator().manual_seed(0)
    sumsq = {"q": torch.rand(2, 2, 2, 4, generator=g) ** 6 * 100}
    mv = MassiveValues(
        sumsq=sumsq,
        lengths=torch.tensor([5, 5]),
        threshold=5.0,
        scope="layer",
        rotary="pre",
        model_label="m",
        position_encoding="rope",
    )
    first = mv.masks("q").clone()
    mv.threshold = 1.5
    assert torch.equal(mv.masks("q"), massive_mask(sumsq["q"].sqrt(), 1.5, "layer"))
    assert not torch.equal(mv.masks("q"), first)
    mv.threshold, mv.scope = 5.0, "head"
    assert torch.equal(mv.masks("q"), massive_mask(sumsq["q"].sqrt(), 5.0, "head"))
    mv.scope = "layer"
    assert torch.equal(mv.masks("q"), first)


def test_gini_on_input_device_and_known_values():
    from drope_lens.analysis.massive import gini

    assert float(gini(torch.tensor([1.0, 1.0, 1.0, 1.0]))) == pytest.approx(0.0)
    assert float(gini(torch.tensor([0.0, 0.0, 0.0, 4.0]))) == pytest.approx(0.75)
    x = torch.rand(3, 10)
    assert gini(x).device == x.device


def test_weights_hash_sample_index_exact_past_float32_range():
    """The embedded model's 49152 x 576 embedding (28311552 elements) made a float32 linspace point
    one past the end; the indices are exact integers now."""
    from drope_lens.runs.provenance import sample_index

    for n in (1, 2, 63, 64, 65, 28311552, 2**24 + 3):
        idx = sample_index(n, 64)
        k = min(64, n)
        assert idx.tolist() == [i * (n - 1) // max(k - 1, 1) for i in range(k)]
        assert int(idx[0]) == 0 and int(idx[-1]) == n - 1
    big = torch.nn.Module()
    big.register_buffer("b", torch.zeros(28311552, dtype=torch.int8))
    weights_hash(big)  # raised IndexError before


def test_weights_hash_samples_a_large_tensor_within_bounds():
    """28,311,552 elements (SmolLM2's embedding): a float32 linspace put the last index past the end."""
    import torch

    from drope_lens.runs.provenance import weights_hash

    m = torch.nn.Module()
    m.register_buffer("big", torch.zeros(28311552, dtype=torch.uint8))
    h0 = weights_hash(m)
    m.big[-1] = 1  # the last element is sampled
    assert weights_hash(m) != h0


def test_weights_hash_does_not_depend_on_the_thread_count(tokenizer):
    """The sum's last bits depend on the summation order (torch's threads); the hash must not."""
    model = hooked_from_hf(tiny_llama(seed=4, hidden_size=256, intermediate_size=1024), tokenizer)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = weights_hash(model)
        torch.set_num_threads(max(2, threads))
        many = weights_hash(model)
    finally:
        torch.set_num_threads(threads)
    assert one == many
    with torch.no_grad():
        next(model.parameters()).view(-1)[1] += 1e-3  # one weight changes: the hash does
    assert weights_hash(model) != one
