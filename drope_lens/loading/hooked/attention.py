"""HookedTransformer attention numerics that TransformerLens does not give by default.

* Attention scores (and hence the softmax and ``hook_pattern``) in float32 whatever the model dtype.
  DroPE's layer-1 |q|, |k| reach ~6k, so q·k overflows fp16 and the softmax gives NaN.
* NaN/inf in the scores is raised as :class:`~drope_lens.errors.NonFiniteError`. TransformerLens
  would otherwise replace NaN in the pattern by 0 silently.
* DroPE's q/k-norm variants: an RMSNorm over the whole projection (all heads at once) before the
  head split, applied after ``hook_q``/``hook_k`` (which therefore stay pre-norm, like the study's
  ``q_proj`` hooks) and before the rotation, so ``hook_rot_q``/``hook_rot_k`` show what attention uses.

These are installed per attention module by :func:`install_attention_numerics`; the loaders call it.
"""

from __future__ import annotations

import types
from typing import Optional, Sequence

import torch
from transformer_lens import HookedTransformer

from drope_lens.loading.hooked.patching import patch_method
from drope_lens.loading.hooked.zero_bias import project_qkv
from drope_lens.loading.numerics import FullWidthRMSNorm, check_finite

_PATCHED = "_drope_lens_numerics"


def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    if self.cfg.fp32_attention:
        q, k = q.float(), k.float()
    scores = type(self).calculate_attention_scores(self, q, k)
    if self.cfg.check_finite:
        check_finite(
            self.layer_id, "attention scores", scores, q, k, dtype=self.cfg.dtype, fp32=self.cfg.fp32_attention
        )
    return scores


def _qkv_with_norm(self, query_input, key_input, value_input):
    q, k, v = project_qkv(self, query_input, key_input, value_input)
    if getattr(self, "drope_q_norm", None) is not None:
        q = self.drope_q_norm(q)
    if getattr(self, "drope_k_norm", None) is not None:
        k = self.drope_k_norm(k)
    return q, k, v


def install_attention_numerics(model: HookedTransformer) -> HookedTransformer:
    """Route every attention module's score computation through fp32 + finiteness checks.

    Idempotent. The behaviour is read from ``model.cfg.fp32_attention`` / ``check_finite`` at run
    time, so flipping those flags on the config takes effect immediately.
    """
    for block in model.blocks:
        patch_method(block.attn, "calculate_attention_scores", _scores, _PATCHED)
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
        attn.calculate_qkv_matrices = types.MethodType(_qkv_with_norm, attn)  # type: ignore[method-assign]
    return model
