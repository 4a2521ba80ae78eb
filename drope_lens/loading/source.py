"""What a checkpoint says, read before any weight and without running any of its code.

A source is a hub id or a local folder (``config.json``, ``*.safetensors``, tokenizer files) of a
supported causal LM (:data:`FAMILIES`: Llama-family, Qwen2, Qwen3), or a SakanaAI DroPE checkpoint
(``model_type: llama_drope`` or ``qwen2_drope``, ``attention_type``, optional ``softmax_scale``, an
``auto_map`` pointing at their ``drope.py``). The architecture is decided by the exact ``model_type``
(:func:`family_of`); anything else is refused, listing what is supported, before any weight is read.
The config is read as JSON and tokenizers are opened with ``trust_remote_code=False``, so loading never
asks "Do you wish to run the custom code?" and never imports a checkpoint's own code.
:func:`read_source` gathers what both backends' loaders need into a :class:`Source`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from drope_lens.errors import CorruptFileError, MissingFileError, UnsupportedModelError
from drope_lens.loading import drope_format as fmt
from drope_lens.loading.drope_format import drope_facts, read_meta
from drope_lens.loading.facts import DROPE_CHECKPOINT, ZERO_SHOT_NOPE


@dataclass(frozen=True)
class Family:
    """An architecture drope_lens loads: its HF names, its DroPE format and the backends that hold it."""

    name: str  # "llama", "qwen2", "qwen3"
    title: str  # for messages
    architecture: str  # the HF causal-LM class
    config_class: str  # the HF config class
    model_types: tuple[str, ...]  # HF ``model_type`` values of ordinary (RoPE) checkpoints
    drope_model_type: Optional[str]  # SakanaAI/DroPE's ``model_type`` (None: no DroPE format)
    drope_architecture: Optional[str]
    backends: tuple[str, ...]

    @property
    def architectures(self) -> tuple[str, ...]:
        return tuple(a for a in (self.architecture, self.drope_architecture) if a)

    def model_class(self) -> Any:
        import transformers

        return getattr(transformers, self.architecture)

    def hf_config_class(self) -> Any:
        import transformers

        return getattr(transformers, self.config_class)


LLAMA = Family(
    "llama",
    "Llama",
    "LlamaForCausalLM",
    "LlamaConfig",
    ("llama", "smollm", "smollm2"),
    fmt.MODEL_TYPE,
    fmt.ARCHITECTURE,
    ("hooked", "bridge"),
)
QWEN2 = Family(
    "qwen2",
    "Qwen2",
    "Qwen2ForCausalLM",
    "Qwen2Config",
    ("qwen2",),
    fmt.QWEN2_MODEL_TYPE,
    fmt.QWEN2_ARCHITECTURE,
    ("bridge",),
)
QWEN3 = Family("qwen3", "Qwen3", "Qwen3ForCausalLM", "Qwen3Config", ("qwen3",), None, None, ("bridge",))
#: Every architecture drope_lens loads, by name.
FAMILIES: dict[str, Family] = {f.name: f for f in (LLAMA, QWEN2, QWEN3)}

#: HF ``architectures`` / ``model_type`` values drope_lens can load (anything else is refused before any weight).
SUPPORTED_ARCHITECTURES = tuple(a for f in FAMILIES.values() for a in f.architectures)
SUPPORTED_MODEL_TYPES = tuple(
    t for f in FAMILIES.values() for t in (*f.model_types, f.drope_model_type) if t is not None
)
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


def _supported_list() -> str:
    def one(f: Family) -> str:
        types = ", ".join(t for t in (*f.model_types, f.drope_model_type) if t)
        return f"{f.title} ({', '.join(f.architectures)}; model_type {types})"

    return "; ".join(one(f) for f in FAMILIES.values())


def _raw_names(hf_config: Any) -> tuple[str, list[str]]:
    if isinstance(hf_config, dict):
        return str(hf_config.get("model_type") or ""), list(hf_config.get("architectures") or [])
    return str(config_get(hf_config, "model_type", "") or ""), list(config_get(hf_config, "architectures", []) or [])


def family_of(hf_config: Any) -> Family:
    """The :class:`Family` of a config (an HF config object or a raw ``config.json`` dict).

    The ``model_type`` decides, exactly (no prefix or suffix matching: ``mistral_drope``, ``llama_foo``
    and ``gemma2`` are refused); without one, the ``architectures`` entry does. Every ``architectures``
    entry must belong to that family. Raises :class:`UnsupportedModelError` listing what is supported.
    """
    model_type, archs = _raw_names(hf_config)

    def refuse(why: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"drope_lens supports Llama-family causal LMs and Qwen2/Qwen3: {_supported_list()}. {why} "
            f"(got model_type={model_type!r}, architectures={archs}). Use a checkpoint of a supported architecture."
        )

    if model_type:
        found = [f for f in FAMILIES.values() if model_type in f.model_types or model_type == f.drope_model_type]
        if not found:
            raise refuse(f"model_type {model_type!r} is not one of them")
    else:
        found = [f for f in FAMILIES.values() if any(a in f.architectures for a in archs)]
        if len(found) != 1:
            raise refuse("The config has no model_type and its architectures name no single supported one")
    family = found[0]
    stray = [a for a in archs if a not in family.architectures]
    if stray:
        raise refuse(f"architectures {stray} do not belong to {family.title} ({', '.join(family.architectures)})")
    return family


def check_supported(hf_config: Any, *, backend: Optional[str] = None) -> Family:
    """Raise :class:`UnsupportedModelError` unless ``hf_config`` (config object or raw dict) is a supported
    architecture that ``backend`` can hold; return its :class:`Family`.

    ``backend=None`` asks for an architecture every backend holds (Llama): the hooked backend's own
    conversion calls it that way, so a Qwen config never reaches HookedTransformer.
    """
    family = family_of(hf_config)
    check_backend_holds(family, backend)
    return family


def check_backend_holds(family: Family, backend: Optional[str]) -> None:
    """Refuse a family the backend cannot hold (Qwen on HookedTransformer), naming the bridge."""
    if backend is not None and backend in family.backends:
        return
    if backend is None and set(family.backends) >= {"hooked", "bridge"}:
        return
    raise UnsupportedModelError(
        f"{family.title} models load on the bridge backend only (TransformerBridge: backend='bridge', "
        f"--backend bridge or DROPE_LENS_BACKEND=bridge); the hooked backend's HookedTransformer conversion "
        "is Llama-only."
    )


def check_no_bias(hf_config: Any) -> None:
    """Refuse biases the architecture does not have everywhere: a Llama with ``attention_bias``/``mlp_bias``
    (drope_lens does not convert them). Qwen2's q/k/v biases and Qwen3's ``attention_bias`` are kept by the
    bridge (the HF modules themselves)."""
    family = family_of(hf_config)
    if family is not LLAMA:
        return
    if config_get(hf_config, "attention_bias", False) or config_get(hf_config, "mlp_bias", False):
        raise UnsupportedModelError(
            "This Llama checkpoint uses attention/MLP biases, which drope_lens does not convert. "
            "Use a bias-free Llama-family model (Llama-2/3, SmolLM2, DroPE)."
        )


def check_full_attention(hf_config: Any) -> None:
    """Refuse sliding-window layers (Qwen2/Qwen3 ``use_sliding_window``): drope_lens's attention is full causal."""
    layer_types = config_get(hf_config, "layer_types") or []
    sliding = bool(config_get(hf_config, "use_sliding_window", False)) or any(
        t == "sliding_attention" for t in layer_types
    )
    if sliding:
        raise UnsupportedModelError(
            "This checkpoint uses sliding-window attention (use_sliding_window / layer_types 'sliding_attention'); "
            "drope_lens computes full causal attention only. Use a checkpoint with use_sliding_window=false "
            "(as Qwen2.5/Qwen3 release theirs)."
        )


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


def check_config(raw: dict) -> tuple[Family, Optional[str], Optional[float]]:
    """A raw ``config.json`` checked before any weight: its :class:`Family` (:func:`family_of`), and its
    DroPE ``(attention_type, softmax_scale)`` (``None``s for an ordinary checkpoint). DroPE fields on an
    architecture SakanaAI's format does not cover (Qwen3) are refused, and so are sliding-window layers."""
    family = family_of(raw)
    attention_type, scale = drope_facts(raw)
    if attention_type is not None and family.drope_model_type is None:
        raise UnsupportedModelError(
            f"This {family.title} config carries DroPE fields (attention_type={attention_type!r}), but SakanaAI's "
            f"DroPE format covers {', '.join(f.title for f in FAMILIES.values() if f.drope_model_type)} only, "
            f"and {family.title}'s own q_norm/k_norm weights would be mistaken for DroPE's. "
            f"Load the {family.title} RoPE model and use its zero-shot NoPE twin (nope=True)."
        )
    check_full_attention(_RawView(raw))
    return family, attention_type, scale


class _RawView:
    """Attribute view of a raw ``config.json`` dict (for :func:`config_get`)."""

    def __init__(self, raw: dict):
        self.__dict__.update(raw)


def check_model_folder(path: Path, raw: dict, *, flag: str = "model folder", tokenizer: bool = True) -> None:
    """Cheap checks of a local model folder before any weight is read: a supported architecture (or DroPE)
    config, tokenizer files (unless ``tokenizer=False``), safetensors files whose headers parse."""
    from safetensors import safe_open

    name = f"{flag} {path}"
    try:
        check_config(raw)
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


#: SakanaAI's DroPE config fields (and the remote-code pointers) that the plain HF config classes do not take.
DROPE_FIELDS = ("auto_map", "model_type", "architectures", "attention_type", "softmax_scale")


def plain_config_of(raw: dict, family: Family = LLAMA) -> Any:
    """A plain HF config of ``family`` (``LlamaConfig``, ``Qwen2Config``) from a DroPE ``config.json``
    (its own classes never imported)."""
    cfg = family.hf_config_class()(**{k: v for k, v in raw.items() if k not in DROPE_FIELDS})
    cfg.architectures = [family.architecture]
    return cfg


def llama_config_of(raw: dict) -> Any:
    """A plain HF ``LlamaConfig`` from a DroPE ``config.json`` (its own classes never imported)."""
    return plain_config_of(raw, LLAMA)


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


#: The position-0 token drope_lens uses for tokenizers without a BOS (Qwen2/Qwen3): their document separator.
BOS_FALLBACK = "<|endoftext|>"


def ensure_bos(tokenizer: Any) -> Any:
    """Give a tokenizer without a BOS token (Qwen2/Qwen3's) one: ``<|endoftext|>``, the document separator
    Qwen was pretrained with, so that position 0 is a fixed token as for Llama's ``<s>`` (drope_lens
    prepends BOS to every text, :mod:`drope_lens.loading.tokens`). Tokenizers with a BOS, and those
    without ``<|endoftext|>`` in their vocabulary, are returned unchanged. In place; returns ``tokenizer``."""
    if tokenizer is None or getattr(tokenizer, "bos_token", None) is not None:
        return tokenizer
    vocab = tokenizer.get_vocab()
    if BOS_FALLBACK in vocab:
        tokenizer.bos_token = BOS_FALLBACK
        tokenizer.init_kwargs["bos_token"] = BOS_FALLBACK
    return tokenizer


def load_tokenizer(source: Union[str, os.PathLike]) -> Any:
    """The checkpoint's tokenizer, opened without remote code and with ``add_bos_token=True``
    (and a BOS for tokenizers that have none, :func:`ensure_bos`).

    ``add_bos_token`` is what TransformerLens asks of a tokenizer; given one that lacks it,
    TransformerLens re-opens the tokenizer by its folder name through ``AutoConfig`` without
    ``trust_remote_code``, which for a DroPE folder (``auto_map``) asks on the terminal whether to
    run the checkpoint's code. drope_lens itself tokenizes without special tokens and prepends BOS,
    so the flag changes nothing it computes.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False, add_bos_token=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CorruptFileError(
            f"could not load the tokenizer of {source} ({type(exc).__name__}: {exc}); "
            "check the tokenizer files or pass tokenizer="
        ) from exc
    return ensure_bos(tok)


def tokenizer_with_bos(tokenizer: Any) -> Any:
    """``tokenizer`` as TransformerLens will keep it: one that has ``add_bos_token`` (see
    :func:`load_tokenizer`); others are re-opened here from their own folder, without remote code."""
    tokenizer = ensure_bos(tokenizer)
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
    family: Family = LLAMA

    @property
    def is_drope(self) -> bool:
        return self.attention_type is not None


def read_family(source: Union[str, os.PathLike]) -> Family:
    """The :class:`Family` of ``source`` from its ``config.json`` alone (checked as :func:`check_config`)."""
    return check_config(read_config_dict(source))[0]


def read_source(
    source: Union[str, os.PathLike],
    *,
    tokenizer: Any = None,
    nope: Optional[bool] = None,
    backend: Optional[str] = None,
) -> Source:
    """Read ``source``'s config (and tokenizer unless given), check it is supported (by ``backend``, if
    given); no weights. An unsupported architecture is refused here, before any weight is read."""
    from transformers import AutoConfig

    raw = read_config_dict(source)
    local = Path(os.path.expanduser(str(source)))
    if local.is_dir():
        check_model_folder(local, raw, tokenizer=tokenizer is None)
    family, attention_type, softmax_scale = check_config(raw)
    if backend is not None:
        check_backend_holds(family, backend)
    if attention_type is not None:
        hf_config = plain_config_of(raw, family)
    else:
        hf_config = AutoConfig.from_pretrained(str(source), trust_remote_code=False)
    if family_of(hf_config) is not family:
        raise UnsupportedModelError(f"{source}: transformers reads its config as {type(hf_config).__name__}")
    check_no_bias(hf_config)
    check_full_attention(hf_config)
    tok = load_tokenizer(source) if tokenizer is None else tokenizer_with_bos(tokenizer)
    is_drope = attention_type is not None
    use_nope = is_drope or bool(nope)
    if is_drope:
        origin: Optional[str] = recalibrated_origin(source) or DROPE_CHECKPOINT
    else:
        origin = ZERO_SHOT_NOPE if use_nope else None
    return Source(str(source), raw, hf_config, tok, attention_type, softmax_scale, use_nope, origin, family)


def recalibrated_origin(source: Union[str, os.PathLike]) -> Optional[str]:
    """ "RoPE removed, recalibrated on N tokens (recipe)" for a drope_lens recalibration checkpoint."""
    path = Path(os.path.expanduser(str(source)))
    meta = read_meta(path) if path.is_dir() else None
    if not meta:
        return None
    return f"{meta['label']}; {meta.get('recipe_label', '')}".rstrip("; ")
