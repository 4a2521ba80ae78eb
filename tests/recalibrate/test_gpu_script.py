"""`benchmarks/gpu.sh recalibrate` rehearsed on the CPU: the GPU item's own command line (the embedded
SmolLM2-135M, bf16 mixed precision, sdpa, tracked during training) with a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_gpu_recalibration_item_rehearsed_on_cpu(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = dict(
        os.environ,
        DROPE_GPU_TINY="1",
        DROPE_GPU_OUT=str(tmp_path),
        DROPE_GPU_RUN=str(tmp_path / "run"),
        PYTHON=sys.executable,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu.sh"), "recalibrate"],
        capture_output=True,
        text=True,
        cwd=str(root),
        env=env,
        timeout=1800,
    )
    assert proc.returncode == 0 and "recalibrate exit code 0" in proc.stdout, (proc.stdout[-2000:], proc.stderr[-2000:])
    res = json.loads((tmp_path / "results-gpu-recalibration.json").read_text())
    assert (res["steps"], res["tokens"]) == (3, 3 * 2 * 128) and res["tokens_per_s"] > 0
    assert res["launch"]["mixed_precision"] == "bf16" and res["launch"]["attention"] == "sdpa"
    curve = {(r["checkpoint"], r["metric"]) for r in res["curve"]}
    for name in ("rope", "step-0", "step-3"):
        assert {(name, m) for m in ("ppl_heldout", "passkey_acc", "massive_q_total")} <= curve
    assert (tmp_path / "results-gpu-recalibration.png").stat().st_size > 0
    assert "| ppl_heldout |" in proc.stdout
