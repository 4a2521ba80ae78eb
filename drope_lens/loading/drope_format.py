"""The DroPE checkpoint format on disk: SakanaAI's config, drope_lens's metadata, HF Trainer run folders.

A DroPE checkpoint is a Llama checkpoint (``model.safetensors`` in the plain ``LlamaForCausalLM``
layout, plus ``model.layers.N.self_attn.{q,k}_norm.weight`` for the q/k-norm variants) whose
``config.json`` says ``model_type: llama_drope`` and ``attention_type`` (``nope``, ``qk_norm_nope``,
``q_norm_nope``, ``k_norm_nope``), optionally ``softmax_scale`` -- SakanaAI/DroPE's format.
:class:`DropeLlamaConfig` writes exactly that through ``save_pretrained`` (``architectures:
DroPELlamaForCausalLM``); drope_lens never writes an ``auto_map`` (it ships no remote code), and
reads SakanaAI's checkpoints without running theirs.

drope_lens's recalibration runs are HF Trainer output folders (``checkpoint-N/`` with
``trainer_state.json``) with three files of its own:

* ``recalibrate.json`` in the run folder (:data:`RUN_FILE`): source, recipe, data, launch (world size,
  global batch);
* ``heldout.safetensors`` in the run folder (:data:`HELDOUT_FILE`): the held-out token blocks;
* ``drope_lens_recalibration.json`` in each checkpoint (:data:`META_FILE`): step, tokens seen, label.

Any other Trainer run (e.g. SakanaAI's own) is read from ``trainer_state.json`` alone
(:func:`tokens_seen`). This module only reads and writes files; it imports nothing from
:mod:`drope_lens.recalibrate`, which uses it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional, Union

from transformers import LlamaConfig

from drope_lens.errors import DropeLensInputError, UnsupportedModelError

PathLike = Union[str, os.PathLike]

#: DroPE ``attention_type`` values (SakanaAI/DroPE ``custom_models/attention.py``).
DROPE_ATTENTION_TYPES = ("nope", "qk_norm_nope", "q_norm_nope", "k_norm_nope")
MODEL_TYPE = "llama_drope"
ARCHITECTURE = "DroPELlamaForCausalLM"
#: SakanaAI/DroPE's Qwen2 variant (same attention types, Qwen2's q/k/v biases kept).
QWEN2_MODEL_TYPE = "qwen2_drope"
QWEN2_ARCHITECTURE = "DroPEQwen2ForCausalLM"
#: Every DroPE ``model_type`` (the architecture behind each: :data:`drope_lens.loading.source.FAMILIES`).
DROPE_MODEL_TYPES = (MODEL_TYPE, QWEN2_MODEL_TYPE)
META_FILE = "drope_lens_recalibration.json"
RUN_FILE = "recalibrate.json"
HELDOUT_FILE = "heldout.safetensors"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint-"
#: Where the cached runs of the embedded model live, under ``$DROPE_LENS_CACHE``.
CACHE_DIR = "recalibrated"
#: The attention types that carry a full-width RMSNorm on q and/or k: (q side, k side).
NORM_SIDES = {"nope": (), "qk_norm_nope": ("q", "k"), "q_norm_nope": ("q",), "k_norm_nope": ("k",)}

_STEP = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


class DropeLlamaConfig(LlamaConfig):
    """A ``LlamaConfig`` saved as SakanaAI's DroPE config: ``model_type: llama_drope``,
    ``attention_type`` and (if set) ``softmax_scale``. Built with :func:`drope_config`."""

    model_type = MODEL_TYPE

    def __init__(self, attention_type: str = "nope", softmax_scale: Optional[float] = None, **kwargs: Any):
        check_attention_type(attention_type)
        self.attention_type = attention_type
        if softmax_scale is not None:
            self.softmax_scale = float(softmax_scale)
        super().__init__(**kwargs)


def check_attention_type(attention_type: str) -> str:
    if attention_type not in DROPE_ATTENTION_TYPES:
        raise UnsupportedModelError(
            f"Unknown DroPE attention_type {attention_type!r}. drope_lens implements {DROPE_ATTENTION_TYPES} "
            "(SakanaAI/DroPE custom_models/attention.py)."
        )
    return attention_type


def drope_config(base: Any, attention_type: str, softmax_scale: Optional[float] = None) -> DropeLlamaConfig:
    """The :class:`DropeLlamaConfig` of a Llama config (object or dict) with the given DroPE fields."""
    raw = dict(base if isinstance(base, dict) else base.to_dict())
    for key in ("model_type", "architectures", "auto_map", "attention_type", "softmax_scale", "transformers_version"):
        raw.pop(key, None)
    return DropeLlamaConfig(attention_type=attention_type, softmax_scale=softmax_scale, **raw)


def drope_facts(raw: dict) -> tuple[Optional[str], Optional[float]]:
    """``(attention_type, softmax_scale)`` of a DroPE ``config.json`` dict (``model_type`` one of
    :data:`DROPE_MODEL_TYPES`, or an ``attention_type``); ``(None, None)`` for any other model. Which
    architecture it is comes from :func:`drope_lens.loading.source.family_of`, never from this."""
    if raw.get("model_type") not in DROPE_MODEL_TYPES and "attention_type" not in raw:
        return None, None
    scale = raw.get("softmax_scale")
    return check_attention_type(raw.get("attention_type", "nope")), (float(scale) if scale is not None else None)


def read_json(path: PathLike) -> Optional[dict]:
    """A JSON file as a dict, or None if it is missing."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DropeLensInputError(f"{p} is not valid JSON ({exc}); the file is truncated or corrupt") from exc


# --- drope_lens's own files -----------------------------------------------------------------------


def recalibration_label(tokens: int) -> str:
    return f"RoPE removed, recalibrated on {tokens:,} tokens"


def read_meta(folder: PathLike) -> Optional[dict]:
    """The recalibration metadata of a checkpoint folder, or None if drope_lens did not write one."""
    return read_json(Path(folder) / META_FILE)


def checkpoint_meta(folder: PathLike) -> dict:
    """:func:`read_meta` of a folder that must be a drope_lens checkpoint."""
    meta = read_meta(folder)
    if meta is None:
        raise FileNotFoundError(f"{folder} has no {META_FILE}: not a drope_lens checkpoint.")
    return meta


def write_meta(folder: PathLike, meta: dict) -> None:
    from drope_lens.jsonio import atomic_write_json

    atomic_write_json(Path(folder) / META_FILE, meta)


def read_run(run_dir: PathLike) -> Optional[dict]:
    """The run record (``recalibrate.json``) of a drope_lens run folder, or None."""
    return read_json(Path(run_dir) / RUN_FILE)


# --- HF Trainer folders ----------------------------------------------------------------------------


def checkpoint_step(folder: PathLike) -> Optional[int]:
    """N of a ``checkpoint-N`` folder name (any zero padding), else None."""
    m = _STEP.match(Path(folder).name)
    return int(m.group(1)) if m else None


def trainer_checkpoints(run_dir: PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of a run that hold a model (``config.json``), by step."""
    found = [
        p
        for p in Path(run_dir).iterdir()
        if p.is_dir() and checkpoint_step(p) is not None and (p / "config.json").is_file()
    ]
    return sorted(found, key=lambda p: int(checkpoint_step(p) or 0))


def list_checkpoints(run_dir: PathLike) -> list[Path]:
    """The finished checkpoints of a drope_lens run (those with their metadata written), by step."""
    return [p for p in trainer_checkpoints(run_dir) if (p / META_FILE).is_file()]


def is_trainer_run(folder: PathLike) -> bool:
    """Whether ``folder`` is an HF Trainer output folder (holds ``checkpoint-N/`` model folders)."""
    p = Path(folder)
    return p.is_dir() and bool(trainer_checkpoints(p))


def tokens_seen(checkpoint: PathLike, tokens_per_step: Optional[int] = None) -> tuple[Optional[int], Optional[int]]:
    """``(step, tokens)`` of a checkpoint folder: from drope_lens's metadata; else from HF's
    ``trainer_state.json`` -- ``num_input_tokens_seen`` (top level, or the last ``log_history`` entry
    that logged it, when the run had ``include_num_input_tokens_seen``), else ``global_step ×
    tokens_per_step`` (global batch × sequence length, which the state does not record). ``(step,
    None)`` when neither is known; ``(None, None)`` for a folder with neither file."""
    folder = Path(checkpoint)
    meta = read_meta(folder)
    if meta is not None:
        return int(meta["step"]), int(meta["tokens"])
    state = read_json(folder / TRAINER_STATE)
    if state is None:
        step = checkpoint_step(folder)
        return step, (step * tokens_per_step if step is not None and tokens_per_step else None)
    step = int(state.get("global_step") or 0)
    seen = int(state.get("num_input_tokens_seen") or 0)
    if seen == 0:
        logged = [
            e for e in state.get("log_history") or [] if "num_input_tokens_seen" in e and e.get("step", 0) <= step
        ]
        seen = int(logged[-1]["num_input_tokens_seen"]) if logged else 0
    if seen > 0 or step == 0:
        return step, seen
    return step, (step * tokens_per_step if tokens_per_step else None)


def has_weights(folder: PathLike) -> bool:
    p = Path(folder)
    return any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin"))


# --- the cached runs of the embedded model ---------------------------------------------------------


def cache_dir() -> Path:
    from drope_lens.loading.embedded import cache_root

    return cache_root() / CACHE_DIR


def cached_recalibrated(variant: Optional[str] = None) -> Path:
    """The latest checkpoint (past step 0) of the cached default run of the embedded model
    (``drope-lens recalibrate`` with no arguments; its run record says ``default_run``), else of the
    cached run that has seen the most tokens; ``variant=None`` prefers ``nope``, then
    ``qk_norm_nope``."""
    root = cache_dir()

    def latest(run_dir: Path) -> Optional[Path]:
        ckpts = [p for p in list_checkpoints(run_dir) if checkpoint_meta(p)["step"] > 0]
        return ckpts[-1] if ckpts else None

    runs = [(d, read_run(d)) for d in sorted(root.iterdir())] if root.is_dir() else []
    for v in (variant,) if variant else ("nope", "qk_norm_nope"):
        mine = [(d, r) for d, r in runs if r is not None and (r.get("recipe") or {}).get("variant") == v]
        for d, r in mine:
            if r.get("default_run") and (found := latest(d)) is not None:
                return found
        others = [c for d, _ in mine for c in [latest(d)] if c is not None]
        if others:
            return max(others, key=lambda c: checkpoint_meta(c)["tokens"])
    raise DropeLensInputError(
        f"no recalibrated twin is cached under {root}; run `drope-lens recalibrate` first (about 25 min on "
        "2 idle CPU cores), or leave --drope out for the zero-shot NoPE twin"
    )
