"""Check a HookedTransformer against the Hugging Face model it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


class IdentityRotary(nn.Module):
    """Wraps an HF rotary module so it returns cos=1, sin=0: HF's own NoPE/DroPE forward."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, position_ids):
        cos, sin = self.inner(x, position_ids)
        return torch.ones_like(cos), torch.zeros_like(sin)


@dataclass
class Parity:
    max_abs_logit_diff: float
    max_abs_logprob_diff: float
    n_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def logit_parity(tl_model, hf_model, tokens: torch.Tensor) -> Parity:
    """Max |logit| and |log-prob| differences between a HookedTransformer and an HF model.

    If the HookedTransformer has no RoPE, the HF model's rotary module is temporarily replaced by the
    identity rotation (restored afterwards).
    """
    nope = getattr(tl_model.cfg, "is_nope", False)
    rotary = hf_model.model.rotary_emb
    if nope:
        hf_model.model.rotary_emb = IdentityRotary(rotary)
    try:
        ref = hf_model(tokens.to(next(hf_model.parameters()).device)).logits.float().cpu()
    finally:
        hf_model.model.rotary_emb = rotary
    ours = tl_model(tokens).float().cpu()
    return Parity(
        max_abs_logit_diff=float((ours - ref).abs().max()),
        max_abs_logprob_diff=float((ours.log_softmax(-1) - ref.log_softmax(-1)).abs().max()),
        n_tokens=int(tokens.numel()),
    )
