"""Attention numerics that TransformerLens does not give by default.

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
from typing import Optional

import torch
from jaxtyping import Float
from torch import nn
from transformer_lens import HookedTransformer

from drope_lens.errors import NonFiniteError
from drope_lens.loading.patching import patch_method
from drope_lens.loading.zero_bias import project_qkv

_PATCHED = "_drope_lens_numerics"


class FullWidthRMSNorm(nn.Module):
    """RMSNorm over all heads of a q or k projection at once (DroPE ``q_norm``/``k_norm``)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: Float[torch.Tensor, "batch pos head d_head"]) -> Float[torch.Tensor, "batch pos head d_head"]:
        flat = x.reshape(*x.shape[:2], -1).float()
        normed = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + self.eps)
        out = normed * self.weight.float()
        return out.to(x.dtype).reshape(x.shape)


def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    if self.cfg.fp32_attention:
        q, k = q.float(), k.float()
    scores = type(self).calculate_attention_scores(self, q, k)
    # One reduction is enough to detect: any NaN/inf makes the sum non-finite (a finite overflow of
    # the sum itself only triggers the exact check below). ~10x cheaper than isfinite().all().
    if self.cfg.check_finite and not bool(torch.isfinite(scores.sum())) and not bool(torch.isfinite(scores).all()):
        n_nan = int(torch.isnan(scores).sum())
        n_inf = int(torch.isinf(scores).sum())
        qk_bad = not (bool(torch.isfinite(q).all()) and bool(torch.isfinite(k).all()))
        where = "q/k themselves (see hook_q/hook_k)" if qk_bad else "the q·k product"
        raise NonFiniteError(
            f"Layer {self.layer_id}: attention scores contain {n_nan} NaN and {n_inf} inf values, "
            f"coming from {where}. Model dtype {self.cfg.dtype}, fp32_attention="
            f"{self.cfg.fp32_attention}. Load the model in float32 or bfloat16 (fp16 overflows "
            f"on DroPE's large Q/K), keep fp32_attention=True, and check any hook you added."
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
    from drope_lens.loading.fast_attention import install_fast_attention
    from drope_lens.loading.zero_bias import install_zero_bias_skip

    return install_zero_bias_skip(install_fast_attention(model))


def install_qk_norm(
    model: HookedTransformer,
    q_weights: Optional[list[torch.Tensor]],
    k_weights: Optional[list[torch.Tensor]],
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


def check_logits_finite(logits: torch.Tensor, what: str = "logits") -> None:
    """Raise :class:`NonFiniteError` if ``logits`` holds NaN or inf.

    A sum is the cheap first test (any NaN/inf makes it non-finite; a finite sum cannot hide one);
    only if it fails is every element checked, so a merely large sum never raises.
    """
    if not bool(torch.isfinite(logits.sum())) and not bool(torch.isfinite(logits).all()):
        raise NonFiniteError(
            f"{what} contain {int(torch.isnan(logits).sum())} NaN and "
            f"{int(torch.isinf(logits).sum())} inf values. Load the model in float32 or "
            "bfloat16 and check any hook that writes activations."
        )
