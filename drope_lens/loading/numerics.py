"""Numerics shared by both backends: the sdpa kernel call, DroPE's full-width q/k RMSNorm, and
the finiteness checks (attention, logits) that raise instead of hiding NaN/inf.

Both backends compute attention the same way (fp32 for NoPE/DroPE, NaN/inf raised, never zeroed), with
the fast path through :func:`torch.nn.functional.scaled_dot_product_attention` when nobody reads the
scores or the pattern. Tensors here are ``[batch, head, pos, d_head]``; the callers own their layouts.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import nn

from drope_lens.errors import NonFiniteError


class FullWidthRMSNorm(nn.Module):
    """RMSNorm over all heads of a q or k projection at once (DroPE ``q_norm``/``k_norm``).

    Accepts the flat projection ``[batch, pos, heads*d_head]`` or its head split
    ``[batch, pos, head, d_head]``; normalises over every channel of a position, in fp32.
    """

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: Float[torch.Tensor, "batch pos ..."]) -> Float[torch.Tensor, "batch pos ..."]:
        flat = x.reshape(*x.shape[:2], -1).float()
        normed = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + self.eps)
        out = normed * self.weight.float()
        return out.to(x.dtype).reshape(x.shape)


def repeat_kv_heads(x: Float[torch.Tensor, "batch kv_head pos d"], n_heads: int) -> torch.Tensor:
    """GQA: KV head ``g`` serves query heads ``g*rep … (g+1)*rep-1`` (``[batch, head, pos, d]``)."""
    if x.shape[1] == n_heads:
        return x
    return torch.repeat_interleave(x, dim=1, repeats=n_heads // x.shape[1])


def causal_mask(q_len: int, k_len: int, device: torch.device) -> Bool[torch.Tensor, "q k"]:
    """Query ``i`` (absolute position ``k_len - q_len + i``) sees keys ``0 … k_len - q_len + i``."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def check_finite(layer: int, what: str, t: torch.Tensor, q: torch.Tensor, k: torch.Tensor, *, dtype, fp32: bool):
    """Raise :class:`NonFiniteError` if ``t`` (scores or attention output) or the ``q``/``k`` it came from
    hold NaN/inf. One cheap reduction first (a sum is non-finite if any term is; sdpa kernels can return
    a finite row for a NaN query, so q and k are summed too), the exact test only when it fails, so a
    merely large sum never raises."""
    if bool(torch.isfinite(t.sum() + q.float().sum() + k.float().sum())):
        return
    qk_bad = not (bool(torch.isfinite(q).all()) and bool(torch.isfinite(k).all()))
    if not qk_bad and bool(torch.isfinite(t).all()):
        return
    bad = torch.cat([q.flatten(), k.flatten()]) if qk_bad else t
    where = "q/k themselves (see hook_q/hook_k)" if qk_bad else "the q·k product or the softmax"
    what = "q/k" if qk_bad else what
    raise NonFiniteError(
        f"Layer {layer}: {what} contain {int(torch.isnan(bad).sum())} NaN and {int(torch.isinf(bad).sum())} inf "
        f"values, coming from {where}. Model dtype {dtype}, fp32_attention={fp32}. Load the model in float32 or "
        "bfloat16 (fp16 overflows on DroPE's large Q/K), keep fp32_attention=True, and check any hook you added."
    )


def sdpa_attention(
    q: Float[torch.Tensor, "batch head q_pos d"],
    k: Float[torch.Tensor, "batch kv_head k_pos d"],
    v: Float[torch.Tensor, "batch kv_head k_pos d"],
    *,
    scale: float,
    allowed: Optional[Bool[torch.Tensor, "batch 1 q_pos k_pos"]] = None,
) -> Float[torch.Tensor, "batch head q_pos d"]:
    """``softmax(q·kᵀ · scale, masked) · v`` through the sdpa kernel; causal when ``allowed`` is None.

    ``allowed`` (True = may attend) carries causality with any cache offset and padding. Rows with no
    allowed key (left-padding pads) come out as zeros, as the explicit paths give them.
    """
    n_heads = q.shape[1]
    k, v = repeat_kv_heads(k, n_heads), repeat_kv_heads(v, n_heads)
    if allowed is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    dead = ~allowed.any(-1, keepdim=True)  # [batch, 1, q, 1]
    if bool(dead.any()):
        out = out.masked_fill(dead, 0.0)
    return out


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
