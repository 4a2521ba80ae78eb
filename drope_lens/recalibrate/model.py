"""The module that is trained: the HF ``LlamaForCausalLM`` with RoPE replaced by the identity rotation.

This is what SakanaAI's DroPE does (HF causal attention kept, cos = 1, sin = 0 in every layer), and
it saves straight into their checkpoint format. ``qk_norm_nope`` adds a new full-width RMSNorm on
the q and k projections (over all heads, before the head split; gains initialised to 1), stored as
``model.layers.N.self_attn.{q,k}_norm.weight`` -- the same norm drope_lens's loader applies
(:class:`~drope_lens.loading.numerics.FullWidthRMSNorm`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch
from torch import nn

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


def drope_training_model(source: Union[str, os.PathLike], variant: str, *, device: str = "cpu"):
    """``(hf_model, tokenizer)``: ``source`` (a RoPE Llama folder or hub id) in fp32 with RoPE removed
    and, for ``qk_norm_nope``, the new q/k norms. sdpa attention, causal, no cache."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(str(source), dtype=torch.float32, attn_implementation="sdpa")
    hf.config.use_cache = False
    remove_rope(hf)
    if variant == "qk_norm_nope":
        add_qk_norms(hf)
    tok = AutoTokenizer.from_pretrained(str(source))
    # transformers types PreTrainedModel.to's wrapper as taking the model first
    return hf.to(device), tok  # type: ignore[arg-type]


def load_weights(hf_model, folder: Union[str, os.PathLike]) -> None:
    """Load a saved checkpoint's safetensors into ``hf_model`` (only tied ``lm_head`` may be absent)."""
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        sd.update(load_file(str(f)))
    missing, unexpected = hf_model.load_state_dict(sd, strict=False)
    tied = bool(getattr(hf_model.config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"{folder}: checkpoint does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
