"""Checkpoints in SakanaAI's DroPE format, plus what drope_lens needs to resume and label them.

A checkpoint folder holds ``config.json`` (``model_type: llama_drope``, ``attention_type``),
``model.safetensors``, the tokenizer files, ``drope_lens_recalibration.json`` (step, tokens seen,
recipe, source) and, for the latest checkpoint of a run, ``trainer_state.pt`` (optimizer, LR
scheduler and RNG state). It loads with :func:`drope_lens.load_hooked` and
``load_pair(rope, drope=folder)`` without remote code (no ``auto_map`` is written: drope_lens does
not ship SakanaAI's modelling code). Folders are written under a temporary name and renamed, so a
half-written checkpoint is never seen.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Union

import torch

from drope_lens.atomic import atomic_path

META_FILE = "drope_lens_recalibration.json"
STATE_FILE = "trainer_state.pt"
PREFIX = "checkpoint-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def recalibration_label(tokens: int) -> str:
    return f"RoPE removed, recalibrated on {tokens:,} tokens"


def save_checkpoint(
    hf_model,
    tokenizer,
    folder: Union[str, os.PathLike],
    *,
    variant: str,
    meta: dict,
    trainer_state: Optional[dict] = None,
) -> Path:
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        hf_model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        cfg = json.loads((tmp / "config.json").read_text())
        cfg.update(model_type="llama_drope", architectures=["DroPELlamaForCausalLM"], attention_type=variant)
        cfg.pop("auto_map", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def drop_trainer_state(folder: Union[str, os.PathLike]) -> None:
    """Remove the optimizer state of an older checkpoint (it is ~2x the model)."""
    p = Path(folder) / STATE_FILE
    if p.exists():
        p.unlink()


def read_meta(folder: Union[str, os.PathLike]) -> Optional[dict]:
    """The recalibration metadata of a checkpoint folder, or None if it is not one of ours."""
    p = Path(folder) / META_FILE
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def checkpoint_meta(folder: Union[str, os.PathLike]) -> dict:
    """:func:`read_meta` of a folder that must be a checkpoint (as :func:`list_checkpoints` returns)."""
    meta = read_meta(folder)
    if meta is None:
        raise FileNotFoundError(f"{folder} has no {META_FILE}: not a drope_lens checkpoint.")
    return meta


def list_checkpoints(run_dir: Union[str, os.PathLike]) -> list[Path]:
    """The run's checkpoint folders, by step."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob(f"{PREFIX}*") if p.is_dir() and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_resumable(run_dir: Union[str, os.PathLike]) -> Optional[Path]:
    ckpts = [p for p in list_checkpoints(run_dir) if (p / STATE_FILE).is_file()]
    return ckpts[-1] if ckpts else None


def save_tensor_file(path: Union[str, os.PathLike], tensors: dict) -> None:
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)


def cached_recalibrated(variant: Optional[str] = None) -> Path:
    """The latest checkpoint of the cached embedded default run (``drope-lens recalibrate``), else of
    the cached run of the embedded model that has seen the most tokens; ``variant=None`` prefers
    ``nope``, then ``qk_norm_nope``."""
    from drope_lens.errors import DropeLensInputError
    from drope_lens.recalibrate.recipe import CACHE_PREFIX
    from drope_lens.recalibrate.train import default_run_dir

    def latest(run_dir: Path) -> Optional[Path]:
        ckpts = [p for p in list_checkpoints(run_dir) if checkpoint_meta(p)["step"] > 0]
        return ckpts[-1] if ckpts else None

    for v in (variant,) if variant else ("nope", "qk_norm_nope"):
        found = latest(default_run_dir(v))
        if found is not None:
            return found
        others = [
            c
            for d in sorted(default_run_dir(v).parent.glob(f"{CACHE_PREFIX}{v}*"))
            for c in [latest(d)]
            if c is not None
        ]
        if others:
            return max(others, key=lambda c: checkpoint_meta(c)["tokens"])
    raise DropeLensInputError(
        f"no recalibrated twin is cached under {default_run_dir(variant or 'nope').parent}; run "
        "`drope-lens recalibrate` first (about 25 min on 2 idle CPU cores), or leave --drope out "
        "for the zero-shot NoPE twin"
    )
