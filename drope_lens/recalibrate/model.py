"""The module that is trained: the HF ``LlamaForCausalLM`` with RoPE replaced by the identity rotation.

This is what SakanaAI's DroPE does (HF causal attention kept, cos = 1, sin = 0 in every layer).
:class:`DroPELlamaForCausalLM` is that ``LlamaForCausalLM`` with a
:class:`~drope_lens.loading.drope_format.DropeLlamaConfig`, so ``save_pretrained`` -- and so every
checkpoint the HF Trainer writes, under DDP, FSDP or DeepSpeed alike -- is in their checkpoint format,
and ``from_pretrained`` reads it back (resume). ``qk_norm_nope`` adds a new full-width RMSNorm on the
q and k projections (over all heads, before the head split; gains initialised to 1), stored as
``model.layers.N.self_attn.{q,k}_norm.weight`` -- the same norm drope_lens's loader applies
(:class:`~drope_lens.loading.numerics.FullWidthRMSNorm`).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from torch import nn
from transformers import LlamaForCausalLM

from drope_lens.loading.drope_format import NORM_SIDES, DropeLlamaConfig, drope_config
from drope_lens.loading.numerics import FullWidthRMSNorm
from drope_lens.loading.parity import IdentityRotary


def _norm_hook(norm: nn.Module):
    def hook(module, args, out):
        return norm(out)

    return hook


def remove_rope(hf_model) -> None:
    """Identity rotation in every layer, in place (idempotent)."""
    if not isinstance(hf_model.model.rotary_emb, IdentityRotary):
        hf_model.model.rotary_emb = IdentityRotary(hf_model.model.rotary_emb)


def add_qk_norms(hf_model, sides: tuple[str, ...] = ("q", "k")) -> None:
    """Attach DroPE's full-width q/k RMSNorms (gain 1) after ``q_proj`` / ``k_proj``, in place."""
    eps = float(hf_model.config.rms_norm_eps)
    for layer in hf_model.model.layers:
        attn = layer.self_attn
        for side in sides:
            proj = getattr(attn, f"{side}_proj")
            norm = FullWidthRMSNorm(proj.out_features, eps).to(proj.weight.device)
            setattr(attn, f"{side}_norm", norm)
            proj.register_forward_hook(_norm_hook(norm))


class DroPELlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` without RoPE (identity rotary), with the q/k norms and ``softmax_scale``
    its :class:`DropeLlamaConfig` asks for."""

    config_class = DropeLlamaConfig

    def __init__(self, config: DropeLlamaConfig):
        super().__init__(config)
        remove_rope(self)
        sides = NORM_SIDES[config.attention_type]
        if sides:
            add_qk_norms(self, sides)
        scale = getattr(config, "softmax_scale", None)
        if scale is not None:
            for layer in self.model.layers:
                layer.self_attn.scaling = float(scale)


def drope_training_model(
    source: Union[str, os.PathLike],
    variant: str,
    *,
    device: Optional[str] = None,
    attn_implementation: str = "sdpa",
    tokenizer: Any = None,
):
    """``(model, tokenizer)``: ``source`` (a RoPE Llama folder or hub id) as a
    :class:`DroPELlamaForCausalLM` of attention type ``variant`` in fp32 (new q/k norm gains 1),
    ``attn_implementation`` attention (sdpa, or flash_attention_2 where installed), causal, no cache.
    ``device=None`` leaves it where ``from_pretrained`` puts it (the Trainer places it)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    cfg = drope_config(AutoConfig.from_pretrained(str(source)), variant)
    cfg.use_cache = False
    model = DroPELlamaForCausalLM.from_pretrained(
        str(source), config=cfg, dtype=torch.float32, attn_implementation=attn_implementation
    )
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(source))
    if device is not None:
        # transformers types PreTrainedModel.to's wrapper as taking the model first
        model = model.to(device)  # type: ignore[arg-type]
    return model, tok
