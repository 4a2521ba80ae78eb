"""The unchanged ``drope-lens recalibrate`` command line under torchrun and accelerate launch: 2 CPU
processes (DDP over gloo) against 1 process with the same global batch.

Tolerance: the two runs differ only in how gradients are summed (the DDP all-reduce averages the two
processes' half-batch gradients; one process averages the whole batch), so every weight tensor after
3 AdamW steps agrees to ``max|a - b| <= 1e-5 · max|a|`` (measured: 8.6e-7 absolute, 2.3e-6 of the
tensor's largest entry) and every logged loss to 1e-6 relative. A run with another global batch misses
that tolerance by orders of magnitude (the negative control below)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.recalibrate.test_recalibrate import rope_dir, toy_data  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
REL_TOL = 1e-5
STEPS = 3


def _args(rope: Path, data: list[str], out: Path, batch_size: int) -> list[str]:
    return [
        "recalibrate",
        "--rope",
        str(rope),
        "--data",
        *data,
        "--out",
        str(out),
        "--seq-len",
        "32",
        "--batch-size",
        str(batch_size),
        "--lr",
        "3e-3",
        "--warmup-steps",
        "2",
        "--max-steps",
        str(STEPS),
        "--save-every",
        "2",
        "--heldout-blocks",
        "4",
        "--device",
        "cpu",
    ]


def _run(launcher: list[str], args: list[str]) -> str:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    for key in [k for k in env if k.startswith(("ACCELERATE_", "TORCHELASTIC_")) or k in ("RANK", "WORLD_SIZE")]:
        env.pop(key)
    proc = subprocess.run(
        [sys.executable, *launcher, "-m", "drope_lens", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / f"checkpoint-{STEPS}" / "model.safetensors"))


def _worst(a: dict, b: dict) -> float:
    """max over tensors of max|a - b| / max|a|."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(rope_dir, toy_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("one") / "run"
    _run([], _args(rope_dir, toy_data, out, batch_size=4))
    return out


def test_torchrun_2_processes_equal_1_with_the_same_global_batch(one_process, rope_dir, toy_data, tmp_path):  # noqa: F811
    ddp = tmp_path / "ddp"
    printed = _run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"], _args(rope_dir, toy_data, ddp, 2)
    )
    assert "global batch 4 (2 x 1 x 2 processes), MULTI_CPU" in printed
    assert printed.count("3 steps, 384 tokens") == 1  # the summary comes from the main process only
    assert _worst(_weights(one_process), _weights(ddp)) <= REL_TOL
    assert _losses(ddp) == pytest.approx(_losses(one_process), rel=1e-6)
    run = json.loads((ddp / "recalibrate.json").read_text())
    assert run["launch"]["world_size"] == 2 and run["launch"]["global_batch"] == 4
    assert run["launch"]["micro_batch"] == 2 and run["launch"]["launcher"] == "torchrun"
    meta = json.loads((ddp / f"checkpoint-{STEPS}" / "drope_lens_recalibration.json").read_text())
    assert (meta["world_size"], meta["global_batch"], meta["tokens"]) == (2, 4, STEPS * 4 * 32)
    assert meta["label"] == "RoPE removed, recalibrated on 384 tokens"
    assert len(_losses(ddp)) == STEPS  # one log line per step: only the main process writes
    assert sorted(p.name for p in ddp.glob(f"checkpoint-{STEPS}/rng_state_*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]
    assert not list(ddp.glob("checkpoint-2/rng_state*")) and not (ddp / "checkpoint-2" / "optimizer.pt").exists()
    # the negative control: half the global batch on one process is far outside the tolerance
    half = tmp_path / "half"
    _run([], _args(rope_dir, toy_data, half, batch_size=2))
    assert _worst(_weights(half), _weights(one_process)) > 100 * REL_TOL


def test_accelerate_launch_with_the_shipped_ddp_config(one_process, rope_dir, toy_data, tmp_path):  # noqa: F811
    """examples/accelerate/ddp.yaml (MULTI_GPU, accelerate's torchrun launcher), here on 2 CPU processes."""
    out = tmp_path / "acc"
    config = ROOT / "examples" / "accelerate" / "ddp.yaml"
    printed = _run(
        ["-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2"],
        _args(rope_dir, toy_data, out, 2),
    )
    assert "global batch 4 (2 x 1 x 2 processes)" in printed
    assert json.loads((out / "recalibrate.json").read_text())["launch"]["launcher"] == "accelerate launch"
    assert _worst(_weights(one_process), _weights(out)) <= REL_TOL


def test_shipped_accelerate_configs_parse_and_ask_for_whole_model_checkpoints():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {p.stem: load_config_from_file(str(p)) for p in sorted((ROOT / "examples" / "accelerate").glob("*.yaml"))}
    assert set(configs) == {"ddp", "fsdp", "deepspeed_zero1", "deepspeed_zero3"}
    assert configs["fsdp"].fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert configs["deepspeed_zero3"].deepspeed_config["zero3_save_16bit_model"] is True
    assert all(c.mixed_precision == "no" for c in configs.values())  # bf16 comes from --dtype bfloat16


def test_a_launch_config_whose_precision_contradicts_the_recipe_is_refused(monkeypatch):
    from drope_lens.errors import DropeLensInputError
    from drope_lens.recalibrate import Recipe, recalibrate

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(DropeLensInputError, match="--dtype bfloat16"):
        recalibrate("/nowhere", Recipe(device="cpu"), "/nowhere/out")
