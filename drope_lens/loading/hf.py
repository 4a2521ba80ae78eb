"""Load Llama-family causal LMs (RoPE, zero-shot NoPE, SakanaAI DroPE) into HookedTransformer.

TransformerLens's ``from_pretrained`` only accepts names from its official list; drope_lens builds the
config itself (:func:`~drope_lens.loading.config.config_from_hf`), converts the HF weights with
TransformerLens's Llama weight conversion and loads them into a plain ``HookedTransformer``, so the
result composes with every TransformerLens analysis (and SAELens).

Weight processing is off by default (``process_weights=False``): hooks and logits then equal the HF
model's. With ``process_weights=True`` TransformerLens folds the RMSNorm gains into the following
weights (``fold_ln``) and centres the unembedding. For RMSNorm models this leaves ``hook_q``,
``hook_k``, ``hook_v``, ``hook_rot_*``, ``hook_pattern``, ``hook_mlp_out``, ``hook_attn_out`` and
``hook_resid_*`` unchanged (tested), changes ``ln*.hook_normalized`` (no gain any more) and shifts
raw logits by a per-position constant (log-probs unchanged).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from transformer_lens import HookedTransformer
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

from drope_lens.errors import CorruptFileError, MissingFileError, UnsupportedModelError
from drope_lens.loading.config import (
    DROPE_ATTENTION_TYPES,
    DROPE_CHECKPOINT,
    check_supported,
    config_from_hf,
)
from drope_lens.loading.layout import linear_layout
from drope_lens.loading.lean import checkpoint_folder, lean_hooked
from drope_lens.loading.numerics import install_attention_numerics, install_qk_norm

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Source = Union[str, os.PathLike, "PreTrainedModel"]
_BUFFERS = ("mask", "IGNORE", "rotary_sin", "rotary_cos")


def _dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in table:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def _looks_local(source: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a path."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def read_config_dict(source: Union[str, os.PathLike]) -> dict:
    """The raw ``config.json`` of a local folder or hub id (hub: downloaded, no remote code run)."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise MissingFileError(
                f"{path} has no config.json. Point drope_lens at a folder saved with "
                "`save_pretrained` (config.json + *.safetensors), or at a hub id."
            )
        try:
            return json.loads(cfg_file.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptFileError(
                f"{cfg_file} is not valid JSON ({exc}); re-save or re-download the checkpoint"
            ) from exc
    if path.exists() or _looks_local(str(source)):
        raise MissingFileError(
            f"No model folder at {path}. Give an existing folder saved with `save_pretrained`, "
            "a hub id such as 'meta-llama/Llama-2-7b-hf', or use the embedded default."
        )
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(source), "config.json")).read_text())
    except Exception as exc:  # offline, gated, misspelled
        raise MissingFileError(
            f"Could not fetch config.json for hub id {source!r} ({type(exc).__name__}: {exc}). "
            "Check the name, your network and `huggingface-cli login` for gated models, or "
            "download the checkpoint and pass its local folder."
        ) from exc


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_folder(path: Path, raw: dict, *, flag: str = "model folder", tokenizer: bool = True) -> None:
    """Cheap checks of a local model folder before any weight is read: a Llama-family (or DroPE)
    config, tokenizer files (unless ``tokenizer=False``), safetensors files whose headers parse."""
    from safetensors import safe_open

    name = f"{flag} {path}"
    try:
        if _drope_facts(raw)[0] is None:
            check_supported(_Raw(raw))
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{name}: {exc}") from exc
    if tokenizer and not any((path / f).exists() for f in TOKENIZER_FILES):
        raise MissingFileError(
            f"{name}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); save the tokenizer "
            "into the folder (tokenizer.save_pretrained) or copy it from the original checkpoint"
        )
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as exc:  # safetensors raises its own error types for every kind of damage
            raise CorruptFileError(
                f"{name}: {file.name} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
                "the file is truncated or corrupt, re-download or re-save the checkpoint"
            ) from exc


def _drope_facts(raw: dict) -> tuple[Optional[str], Optional[float]]:
    """(attention_type, softmax_scale) for a SakanaAI DroPE config, (None, None) otherwise."""
    if raw.get("model_type") != "llama_drope" and "attention_type" not in raw:
        return None, None
    attention_type = raw.get("attention_type", "nope")
    if attention_type not in DROPE_ATTENTION_TYPES:
        raise UnsupportedModelError(
            f"Unknown DroPE attention_type {attention_type!r}. drope_lens implements "
            f"{DROPE_ATTENTION_TYPES} (SakanaAI/DroPE custom_models/attention.py)."
        )
    scale = raw.get("softmax_scale")
    return attention_type, (float(scale) if scale is not None else None)


def _llama_config(raw: dict):
    from transformers import LlamaConfig

    clean = {k: v for k, v in raw.items() if k not in ("auto_map", "model_type", "architectures")}
    clean.pop("attention_type", None)
    clean.pop("softmax_scale", None)
    cfg = LlamaConfig(**clean)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def _read_tensors(source: Union[str, os.PathLike], suffixes: tuple[str, ...]) -> dict:
    """Tensors whose names end with one of ``suffixes``, from a folder's or hub repo's safetensors."""
    from safetensors import safe_open

    path = Path(os.path.expanduser(str(source)))
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(source), allow_patterns=["*.safetensors", "*.json"]))
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.endswith(suffixes):
                    out[key] = f.get_tensor(key)
    return out


def _qk_norm_weights(source, n_layers: int, attention_type: str):
    wants = {"qk_norm_nope": ("q", "k"), "q_norm_nope": ("q",), "k_norm_nope": ("k",)}[attention_type]
    tensors = _read_tensors(source, ("q_norm.weight", "k_norm.weight"))
    result: dict[str, Optional[list[torch.Tensor]]] = {"q": None, "k": None}
    for side in wants:
        weights = []
        for layer in range(n_layers):
            key = f"model.layers.{layer}.self_attn.{side}_norm.weight"
            if key not in tensors:
                raise UnsupportedModelError(
                    f"DroPE attention_type {attention_type!r} needs {key} in the checkpoint, "
                    "but it is missing. The checkpoint is incomplete or not in SakanaAI's format."
                )
            weights.append(tensors[key])
        result[side] = weights
    return result["q"], result["k"]


def hooked_from_hf(
    hf_model: Any,
    tokenizer: Any = None,
    *,
    model_name: Optional[str] = None,
    position_encoding: str = "rope",
    nope_origin: Optional[str] = None,
    dtype: Union[str, torch.dtype, None] = None,
    device: Union[str, torch.device] = "cpu",
    process_weights: bool = False,
    n_ctx: Optional[int] = None,
    source: Optional[str] = None,
    **cfg_overrides: Any,
) -> HookedTransformer:
    """Convert an in-memory HF ``LlamaForCausalLM`` into a HookedTransformer.

    Args:
        hf_model: a loaded Llama-family HF causal LM.
        tokenizer: its tokenizer (optional, but needed for text input).
        position_encoding: ``"rope"`` or ``"nope"`` (identity rotation, for DroPE or zero-shot NoPE).
        dtype: model dtype; defaults to the HF model's.
        process_weights: apply TransformerLens's fold_ln / centring (see module docstring).
        n_ctx: context window; defaults to ``max_position_embeddings``.
    """
    check_supported(hf_model.config)
    dtype = _dtype(dtype) if dtype is not None else next(hf_model.parameters()).dtype
    name = model_name or getattr(hf_model.config, "_name_or_path", None) or "llama"
    cfg = config_from_hf(
        hf_model.config,
        model_name=str(name),
        dtype=dtype,
        device=device,
        position_encoding=position_encoding,
        n_ctx=n_ctx,
        nope_origin=nope_origin,
        source=source or "in-memory",
        **cfg_overrides,
    )
    state_dict = {k: v.to(dtype) for k, v in convert_llama_weights(hf_model, cfg).items()}
    cfg.init_weights = False  # every parameter is overwritten below; random init costs seconds
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    cfg.init_weights = True
    if process_weights:
        model.load_and_process_state_dict(state_dict)
    else:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if k.split(".")[-1] not in _BUFFERS]
        if missing or unexpected:
            raise RuntimeError(f"Weight conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(cfg, "n_devices", 1) > 1:
        from drope_lens.loading.devices import place

        place(model)
    else:
        model.to(device)
    model.eval()
    linear_layout(model)
    install_attention_numerics(model)
    return model


def load_hooked(
    source: Source,
    *,
    tokenizer: Any = None,
    nope: Optional[bool] = None,
    dtype: Union[str, torch.dtype] = torch.float32,
    device: Union[str, torch.device] = "cpu",
    process_weights: bool = False,
    n_ctx: Optional[int] = None,
    model_name: Optional[str] = None,
    n_devices: int = 1,
    lean: bool = True,
) -> HookedTransformer:
    """Load a Llama-family model (hub id, local folder, or in-memory HF model) into HookedTransformer.

    SakanaAI DroPE checkpoints (``model_type: llama_drope``) load without ``trust_remote_code``: the
    config is read as JSON, ``attention_type`` and ``softmax_scale`` are honoured, and the model gets
    the identity rotation. ``nope=True`` drops RoPE from any other model (zero-shot NoPE).

    Folders and hub ids with safetensors load *lean* (:mod:`drope_lens.loading.lean`): tensor by
    tensor into the final parameters, peak host memory about the model's size, each tensor moved to
    its device as read. ``lean=False`` (or ``process_weights=True``, or ``.bin``-only checkpoints)
    goes through an HF model instead (~2.2x the model in host RAM). ``n_devices`` splits the blocks
    over that many devices (TransformerLens's ``n_devices``; ``device`` then names the first).
    """
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}.")
    if not isinstance(source, (str, os.PathLike)):
        return hooked_from_hf(
            source,
            tokenizer,
            model_name=model_name,
            dtype=dtype,
            device=device,
            position_encoding="nope" if nope else "rope",
            nope_origin=None if not nope else "zero-shot NoPE (RoPE removed, not recalibrated)",
            process_weights=process_weights,
            n_ctx=n_ctx,
            n_devices=n_devices,
        )

    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    raw = read_config_dict(source)
    local = Path(os.path.expanduser(str(source)))
    if local.is_dir():
        check_model_folder(local, raw, tokenizer=tokenizer is None)
    attention_type, softmax_scale = _drope_facts(raw)
    is_drope = attention_type is not None
    if is_drope:
        hf_config = _llama_config(raw)
    else:
        check_supported(_Raw(raw))
        hf_config = AutoConfig.from_pretrained(str(source))
    dtype = _dtype(dtype)
    if tokenizer is None:
        try:  # never run a checkpoint's remote code (DroPE configs carry an auto_map)
            tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
        except (OSError, ValueError, TypeError) as exc:
            raise CorruptFileError(
                f"could not load the tokenizer of {source} ({type(exc).__name__}: {exc}); "
                "check the tokenizer files or pass tokenizer="
            ) from exc
    use_nope = is_drope or bool(nope)
    origin = (
        (_recalibrated_origin(source) or DROPE_CHECKPOINT)
        if is_drope
        else ("zero-shot NoPE (RoPE removed, not recalibrated)" if use_nope else None)
    )
    common: dict[str, Any] = dict(
        model_name=model_name or str(source),
        dtype=dtype,
        device=device,
        position_encoding="nope" if use_nope else "rope",
        n_ctx=n_ctx,
        nope_origin=origin,
        source=str(source),
        drope_attention_type=attention_type,
        softmax_scale=softmax_scale,
        n_devices=n_devices,
    )
    folder = checkpoint_folder(source) if lean and not process_weights else None
    if folder is not None:
        check_supported(hf_config)
        cfg = config_from_hf(hf_config, **common)
        model = lean_hooked(folder, cfg, tokenizer, tied=bool(getattr(hf_config, "tie_word_embeddings", False)))
        linear_layout(model)
        install_attention_numerics(model)
    else:
        hf_model = LlamaForCausalLM.from_pretrained(str(source), config=hf_config, dtype=dtype)
        model = hooked_from_hf(hf_model, tokenizer, process_weights=process_weights, **common)
        del hf_model
    if attention_type not in (None, "nope"):
        q_w, k_w = _qk_norm_weights(source, model.cfg.n_layers, attention_type)
        install_qk_norm(model, q_w, k_w)
    return model


def _recalibrated_origin(source) -> Optional[str]:
    """ "RoPE removed, recalibrated on N tokens (recipe)" for a drope_lens recalibration checkpoint."""
    from drope_lens.loading.drope_format import read_meta

    path = Path(os.path.expanduser(str(source)))
    meta = read_meta(path) if path.is_dir() else None
    if not meta:
        return None
    return f"{meta['label']}; {meta.get('recipe_label', '')}".rstrip("; ")


class _Raw:
    """Attribute view of a raw config dict, for :func:`check_supported`."""

    def __init__(self, raw: dict):
        self.__dict__.update(raw)
