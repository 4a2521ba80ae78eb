"""What a checkpoint says, read before any weight and without running any of its code.

A source is a hub id or a local folder (``config.json``, ``*.safetensors``, tokenizer files) of a
Llama-family causal LM, or a SakanaAI DroPE checkpoint (``model_type: llama_drope``, ``attention_type``,
optional ``softmax_scale``, an ``auto_map`` pointing at their ``drope.py``). The config is read as JSON
and tokenizers are opened with ``trust_remote_code=False``, so loading never asks "Do you wish to run
the custom code?" and never imports a checkpoint's own code. :func:`read_source` gathers what both
backends' loaders need into a :class:`Source`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from drope_lens.errors import CorruptFileError, MissingFileError, UnsupportedModelError
from drope_lens.loading.drope_format import drope_facts, read_meta
from drope_lens.loading.facts import DROPE_CHECKPOINT, ZERO_SHOT_NOPE

#: HF ``architectures`` / ``model_type`` values drope_lens can load.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_MODEL_TYPES = ("llama", "llama_drope", "smollm", "smollm2")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def as_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def config_get(hf_config: Any, name: str, default: Any = None) -> Any:
    """``hf_config.name`` or ``default`` (also when None, or when transformers 5 raises on a per-layer field)."""
    try:
        value = getattr(hf_config, name)
    except Exception:  # transformers 5 per-layer fields raise on global reads
        return default
    return default if value is None else value


def rope_theta_of(hf_config: Any) -> float:
    """``rope_theta`` from a transformers 4.x (top level) or 5.x (``rope_parameters``) config."""
    theta = config_get(hf_config, "rope_theta")
    if theta is None:
        params = config_get(hf_config, "rope_parameters") or {}
        theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else 10000.0)


def rope_scaling_of(hf_config: Any) -> dict:
    scaling = config_get(hf_config, "rope_scaling") or config_get(hf_config, "rope_parameters") or {}
    return scaling if isinstance(scaling, dict) else {}


def check_supported(hf_config: Any) -> None:
    """Raise :class:`UnsupportedModelError` unless ``hf_config`` is a Llama-family causal LM."""
    archs = list(config_get(hf_config, "architectures", []) or [])
    model_type = config_get(hf_config, "model_type", "")
    if model_type in SUPPORTED_MODEL_TYPES or any(a in SUPPORTED_ARCHITECTURES for a in archs):
        return
    raise UnsupportedModelError(
        f"drope_lens supports Llama-family causal LMs ({', '.join(SUPPORTED_ARCHITECTURES)}; "
        f"model_type in {SUPPORTED_MODEL_TYPES}: Llama-2/3, SmolLM/SmolLM2, SakanaAI DroPE), "
        f"got model_type={model_type!r}, architectures={archs}. Use a Llama-architecture checkpoint."
    )


def check_no_bias(hf_config: Any) -> None:
    if config_get(hf_config, "attention_bias", False) or config_get(hf_config, "mlp_bias", False):
        raise UnsupportedModelError(
            "This Llama checkpoint uses attention/MLP biases, which drope_lens does not convert. "
            "Use a bias-free Llama-family model (Llama-2/3, SmolLM2, DroPE)."
        )


class RawConfig:
    """Attribute view of a raw ``config.json`` dict, for :func:`check_supported`."""

    def __init__(self, raw: dict):
        self.__dict__.update(raw)


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


def check_model_folder(path: Path, raw: dict, *, flag: str = "model folder", tokenizer: bool = True) -> None:
    """Cheap checks of a local model folder before any weight is read: a Llama-family (or DroPE)
    config, tokenizer files (unless ``tokenizer=False``), safetensors files whose headers parse."""
    from safetensors import safe_open

    name = f"{flag} {path}"
    try:
        if drope_facts(raw)[0] is None:
            check_supported(RawConfig(raw))
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


def llama_config_of(raw: dict) -> Any:
    """A plain HF ``LlamaConfig`` from a DroPE ``config.json`` (its own classes never imported)."""
    from transformers import LlamaConfig

    drop = ("auto_map", "model_type", "architectures", "attention_type", "softmax_scale")
    cfg = LlamaConfig(**{k: v for k, v in raw.items() if k not in drop})
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def local_folder(source: Union[str, os.PathLike]) -> Path:
    """The local folder of ``source`` (hub ids: their safetensors and JSON files, downloaded)."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(source), allow_patterns=["*.safetensors", "*.json"]))


def read_tensors(source: Union[str, os.PathLike], suffixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Tensors whose names end with one of ``suffixes``, from a folder's or hub repo's safetensors."""
    from safetensors import safe_open

    out = {}
    for file in sorted(local_folder(source).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.endswith(suffixes):
                    out[key] = f.get_tensor(key)
    return out


def qk_norm_weights(
    source: Union[str, os.PathLike], n_layers: int, attention_type: str
) -> tuple[Optional[list[torch.Tensor]], Optional[list[torch.Tensor]]]:
    """DroPE's per-layer full-width q/k RMSNorm gains (``None`` for a side the variant does not norm)."""
    wants = {"qk_norm_nope": ("q", "k"), "q_norm_nope": ("q",), "k_norm_nope": ("k",)}.get(attention_type, ())
    tensors = read_tensors(source, ("q_norm.weight", "k_norm.weight")) if wants else {}
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


def load_tokenizer(source: Union[str, os.PathLike]) -> Any:
    """The checkpoint's tokenizer, opened without remote code and with ``add_bos_token=True``.

    ``add_bos_token`` is what TransformerLens asks of a tokenizer; given one that lacks it,
    TransformerLens re-opens the tokenizer by its folder name through ``AutoConfig`` without
    ``trust_remote_code``, which for a DroPE folder (``auto_map``) asks on the terminal whether to
    run the checkpoint's code. drope_lens itself tokenizes without special tokens and prepends BOS,
    so the flag changes nothing it computes.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False, add_bos_token=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CorruptFileError(
            f"could not load the tokenizer of {source} ({type(exc).__name__}: {exc}); "
            "check the tokenizer files or pass tokenizer="
        ) from exc


def tokenizer_with_bos(tokenizer: Any) -> Any:
    """``tokenizer`` as TransformerLens will keep it: one that has ``add_bos_token`` (see
    :func:`load_tokenizer`); others are re-opened here from their own folder, without remote code."""
    if tokenizer is None or getattr(tokenizer, "bos_token", None) is None:
        return tokenizer
    if tokenizer.init_kwargs.get("add_bos_token") or getattr(tokenizer, "add_bos_token", False):
        return tokenizer
    path = tokenizer.init_kwargs.get("name_or_path") or getattr(tokenizer, "name_or_path", "")
    if not path or not Path(os.path.expanduser(str(path))).is_dir():
        tokenizer.init_kwargs["add_bos_token"] = True  # nothing to re-open; drope_lens prepends BOS itself
        return tokenizer
    reopened = load_tokenizer(path)
    reopened.padding_side = tokenizer.padding_side
    return reopened


@dataclass
class Source:
    """A checkpoint as read before loading: what it is and how drope_lens will treat it."""

    name: str
    raw: dict
    hf_config: Any
    tokenizer: Any
    attention_type: Optional[str]  # DroPE variant, None for an ordinary (RoPE) checkpoint
    softmax_scale: Optional[float]
    nope: bool
    origin: Optional[str]

    @property
    def is_drope(self) -> bool:
        return self.attention_type is not None


def read_source(source: Union[str, os.PathLike], *, tokenizer: Any = None, nope: Optional[bool] = None) -> Source:
    """Read ``source``'s config (and tokenizer unless given), check it is supported; no weights."""
    from transformers import AutoConfig

    raw = read_config_dict(source)
    local = Path(os.path.expanduser(str(source)))
    if local.is_dir():
        check_model_folder(local, raw, tokenizer=tokenizer is None)
    attention_type, softmax_scale = drope_facts(raw)
    if attention_type is not None:
        hf_config = llama_config_of(raw)
    else:
        check_supported(RawConfig(raw))
        hf_config = AutoConfig.from_pretrained(str(source), trust_remote_code=False)
    check_supported(hf_config)
    check_no_bias(hf_config)
    tok = load_tokenizer(source) if tokenizer is None else tokenizer_with_bos(tokenizer)
    is_drope = attention_type is not None
    use_nope = is_drope or bool(nope)
    if is_drope:
        origin: Optional[str] = recalibrated_origin(source) or DROPE_CHECKPOINT
    else:
        origin = ZERO_SHOT_NOPE if use_nope else None
    return Source(str(source), raw, hf_config, tok, attention_type, softmax_scale, use_nope, origin)


def recalibrated_origin(source: Union[str, os.PathLike]) -> Optional[str]:
    """ "RoPE removed, recalibrated on N tokens (recipe)" for a drope_lens recalibration checkpoint."""
    path = Path(os.path.expanduser(str(source)))
    meta = read_meta(path) if path.is_dir() else None
    if not meta:
        return None
    return f"{meta['label']}; {meta.get('recipe_label', '')}".rstrip("; ")
