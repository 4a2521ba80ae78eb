"""HookedTransformer attention numerics that TransformerLens does not give by default.

* Attention scores (and hence the softmax and ``hook_pattern``) in float32 whatever the model dtype.
  DroPE's layer-1 |q|, |k| reach ~6k, so q·k overflows fp16 and the softmax gives NaN.
* NaN/inf in the scores is raised as :class:`~drope_lens.errors.NonFiniteError`. TransformerLens
  would otherwise replace NaN in the pattern by 0 silently.
* DroPE's q/k-norm variants: an RMSNorm over the whole projection (all heads at once) before the
  head split, applied after ``hook_q``/``hook_k`` (which therefore stay pre-norm, like the study's
  ``q_proj`` hooks) and before the rotation, so ``hook_rot_q``/``hook_rot_k`` show what attention uses.

These are mixins (:mod:`drope_lens.loading.hooked.patching`) installed per attention module by
:func:`install_attention_numerics` and :func:`install_qk_norm`; the loaders call them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from transformer_lens import HookedTransformer

from drope_lens.loading.hooked.patching import Patched, patch_class
from drope_lens.loading.numerics import FullWidthRMSNorm, check_finite


class NumericsAttention(Patched):
    """Attention scores in fp32 (``cfg.fp32_attention``) and NaN/inf raised (``cfg.check_finite``)."""

    ORDER = 40
    __slots__ = ()

    def calculate_attention_scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        attn: Any = self
        cfg = attn.cfg
        if cfg.fp32_attention:
            q, k = q.float(), k.float()
        scores = super().calculate_attention_scores(q, k)  # type: ignore[misc]
        if cfg.check_finite:
            check_finite(attn.layer_id, "attention scores", scores, q, k, dtype=cfg.dtype, fp32=cfg.fp32_attention)
        return scores


class QKNormAttention(Patched):
    """DroPE's full-width RMSNorm on q and/or k (``drope_q_norm`` / ``drope_k_norm``; None = unnormed)."""

    ORDER = 20  # before the zero-bias projection, which it calls
    __slots__ = ()

    def calculate_qkv_matrices(self, query_input, key_input, value_input):
        attn: Any = self
        q, k, v = super().calculate_qkv_matrices(query_input, key_input, value_input)  # type: ignore[misc]
        if getattr(attn, "drope_q_norm", None) is not None:
            q = attn.drope_q_norm(q)
        if getattr(attn, "drope_k_norm", None) is not None:
            k = attn.drope_k_norm(k)
        return q, k, v


def install_attention_numerics(model: HookedTransformer) -> HookedTransformer:
    """Route every attention module's score computation through fp32 + finiteness checks.

    Also installs the fast path and the zero-bias skip. Idempotent. The behaviour is read from
    ``model.cfg.fp32_attention`` / ``check_finite`` at run time, so flipping those flags on the config
    takes effect immediately.
    """
    for block in model.blocks:
        patch_class(block.attn, NumericsAttention)
    from drope_lens.loading.hooked.fast_attention import install_fast_attention
    from drope_lens.loading.hooked.zero_bias import install_zero_bias_skip

    return install_zero_bias_skip(install_fast_attention(model))


def install_qk_norm(
    model: HookedTransformer,
    q_weights: Optional[Sequence[torch.Tensor]],
    k_weights: Optional[Sequence[torch.Tensor]],
) -> HookedTransformer:
    """Attach DroPE's full-width q/k RMSNorms (one weight per layer; ``None`` = that side unnormed)."""
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        for name, weights in (("drope_q_norm", q_weights), ("drope_k_norm", k_weights)):
            if weights is None:
                setattr(attn, name, None)
                continue
            w = weights[layer]
            norm = FullWidthRMSNorm(w.numel(), model.cfg.eps)
            norm.weight.data.copy_(w.to(torch.float32))
            setattr(attn, name, norm.to(attn.W_Q.device))  # the block's device (n_devices > 1)
        patch_class(attn, QKNormAttention)
    return model
