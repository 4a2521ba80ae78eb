"""Llama-family causal LMs (RoPE, zero-shot NoPE, SakanaAI DroPE) as HookedTransformers.

TransformerLens's ``from_pretrained`` only accepts names from its official list; drope_lens builds the
config itself (:func:`~drope_lens.loading.hooked.config.config_from_hf`), converts the HF weights with
TransformerLens's Llama weight conversion (or reads them straight from safetensors,
:mod:`~drope_lens.loading.hooked.lean`) into a plain ``HookedTransformer`` (or the subclass given as
``model_class``, e.g. SAELens's ``HookedSAETransformer``), so the result composes with every
TransformerLens analysis (and SAELens).

Weight processing is off by default (``process_weights=False``): hooks and logits then equal the HF
model's. With ``process_weights=True`` TransformerLens folds the RMSNorm gains into the following
weights (``fold_ln``) and centres the unembedding. For RMSNorm models this leaves ``hook_q``,
``hook_k``, ``hook_v``, ``hook_rot_*``, ``hook_pattern``, ``hook_mlp_out``, ``hook_attn_out`` and
``hook_resid_*`` unchanged (tested), changes ``ln*.hook_normalized`` (no gain any more) and shifts
raw logits by a per-position constant (log-probs unchanged).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from transformer_lens import HookedTransformer
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

from drope_lens.loading.hooked.attention import install_attention_numerics, install_qk_norm
from drope_lens.loading.hooked.config import config_from_hf
from drope_lens.loading.hooked.lean import checkpoint_folder, lean_hooked
from drope_lens.loading.source import Source, as_dtype, check_supported, qk_norm_weights

_BUFFERS = ("mask", "IGNORE", "rotary_sin", "rotary_cos")


def check_model_class(model_class: Optional[type]) -> type:
    """``model_class`` (default HookedTransformer), checked: HookedTransformer or a subclass of it."""
    if model_class is None:
        return HookedTransformer
    if not (isinstance(model_class, type) and issubclass(model_class, HookedTransformer)):
        raise TypeError(
            f"model_class must be HookedTransformer or a subclass of it (e.g. sae_lens.HookedSAETransformer), "
            f"got {model_class!r}."
        )
    return model_class


def hooked_from_hf(
    hf_model: Any,
    tokenizer: Any = None,
    *,
    model_name: Optional[str] = None,
    position_encoding: str = "rope",
    nope_origin: Optional[str] = None,
    dtype: Any = None,
    device: Any = "cpu",
    process_weights: bool = False,
    n_ctx: Optional[int] = None,
    source: Optional[str] = None,
    model_class: Optional[type] = None,
    **cfg_overrides: Any,
) -> HookedTransformer:
    """Convert an in-memory HF ``LlamaForCausalLM`` into a HookedTransformer (see
    :func:`drope_lens.loading.hooked_from_hf` for the arguments)."""
    check_supported(hf_model.config)
    dtype = as_dtype(dtype) if dtype is not None else next(hf_model.parameters()).dtype
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
    model = check_model_class(model_class)(cfg, tokenizer=tokenizer, move_to_device=False)
    cfg.init_weights = True
    if process_weights:
        model.load_and_process_state_dict(state_dict)
    else:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if k.split(".")[-1] not in _BUFFERS]
        if missing or unexpected:
            raise RuntimeError(f"Weight conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(cfg, "n_devices", 1) > 1:
        from drope_lens.loading.hooked.devices import place

        place(model)
    else:
        model.to(device)
    model.eval()
    install_attention_numerics(model)
    return model


def load_source(
    src: Source,
    *,
    dtype: torch.dtype,
    device: Any,
    process_weights: bool,
    n_ctx: Optional[int],
    model_name: Optional[str],
    n_devices: int,
    lean: bool,
    model_class: Optional[type] = None,
) -> HookedTransformer:
    """A HookedTransformer of a checkpoint read by :func:`~drope_lens.loading.source.read_source`."""
    common: dict[str, Any] = dict(
        model_name=model_name or src.name,
        dtype=dtype,
        device=device,
        position_encoding="nope" if src.nope else "rope",
        n_ctx=n_ctx,
        nope_origin=src.origin,
        source=src.name,
        drope_attention_type=src.attention_type,
        softmax_scale=src.softmax_scale,
        n_devices=n_devices,
    )
    folder = checkpoint_folder(src.name) if lean and not process_weights else None
    if folder is not None:
        cfg = config_from_hf(src.hf_config, **common)
        tied = bool(getattr(src.hf_config, "tie_word_embeddings", False))
        model = lean_hooked(folder, cfg, src.tokenizer, tied=tied, model_class=check_model_class(model_class))
        install_attention_numerics(model)
    else:
        from transformers import LlamaForCausalLM

        hf_model = LlamaForCausalLM.from_pretrained(src.name, config=src.hf_config, dtype=dtype)
        model = hooked_from_hf(
            hf_model, src.tokenizer, process_weights=process_weights, model_class=model_class, **common
        )
        del hf_model
    if src.attention_type not in (None, "nope"):
        q_w, k_w = qk_norm_weights(src.name, model.cfg.n_layers, src.attention_type)
        install_qk_norm(model, q_w, k_w)
    return model
