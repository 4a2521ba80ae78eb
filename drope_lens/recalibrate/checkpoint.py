"""The training side of checkpoints: which one a run resumes from, and what older ones keep.

The HF Trainer writes every ``checkpoint-N/`` (weights in DroPE format through
:class:`~drope_lens.recalibrate.model.DroPELlamaForCausalLM`, tokenizer, ``trainer_state.json``,
optimizer, scheduler, RNG state); the format itself (config, drope_lens's metadata, reading any Trainer
folder) is :mod:`drope_lens.loading.drope_format`. A checkpoint is resumable while it keeps its
optimizer state; once a newer one is written, the older ones drop it (:func:`drop_resume_state`: the
AdamW state is ~2x the model), so only the latest run state is kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Union

from drope_lens.atomic import atomic_path
from drope_lens.loading.drope_format import TRAINER_STATE, checkpoint_step, trainer_checkpoints

#: What the Trainer saves to resume, besides the model: optimizer and scheduler (plain, FSDP and
#: DeepSpeed layouts), grad scaler, RNG states.
RESUME_FILES = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "latest", "zero_to_fp32.py")
RESUME_GLOBS = ("rng_state*.pth", "global_step*", "optimizer_*")


def resume_state_paths(folder: Union[str, os.PathLike]) -> list[Path]:
    p = Path(folder)
    found = [p / f for f in RESUME_FILES if (p / f).exists()]
    found += [q for g in RESUME_GLOBS for q in sorted(p.glob(g))]
    return found


def is_resumable(folder: Union[str, os.PathLike]) -> bool:
    """A finished Trainer checkpoint (``trainer_state.json`` is written last) with its optimizer state."""
    p = Path(folder)
    return (p / TRAINER_STATE).is_file() and any(
        q.name.startswith(("optimizer", "global_step")) for q in resume_state_paths(p)
    )


def latest_resumable(run_dir: Union[str, os.PathLike]) -> Optional[Path]:
    ckpts = [p for p in trainer_checkpoints(run_dir) if is_resumable(p)] if Path(run_dir).is_dir() else []
    return ckpts[-1] if ckpts else None


def drop_resume_state(run_dir: Union[str, os.PathLike], keep_step: int) -> None:
    """Remove the optimizer/scheduler/RNG state of every checkpoint before step ``keep_step``."""
    for ckpt in trainer_checkpoints(run_dir):
        if (checkpoint_step(ckpt) or 0) >= keep_step:
            continue
        for q in resume_state_paths(ckpt):
            if q.is_dir():
                shutil.rmtree(q, ignore_errors=True)
            else:
                q.unlink(missing_ok=True)


def save_tensor_file(path: Union[str, os.PathLike], tensors: dict) -> None:
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
