"""Skip the unembedding's all-zero bias.

TransformerLens gives Llama-family models a zero ``b_U`` and adds it on every forward; with a
49k-token vocabulary that is one extra pass over the logits (``addmm`` first copies the broadcast
bias into the output), ~1–2 % of a short perplexity pass. :func:`install_zero_bias_skip` makes the
unembedding pass no bias while ``b_U`` is exactly zero, checked at call time, so a bias that is later
trained or edited is used as before. Hooks (``unembed.hook_in`` / ``hook_out``) fire unchanged.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

_SKIP = "_drope_lens_zero_bias_skip"


def bias_or_none(bias: torch.Tensor):
    """``bias``, or None when every entry is zero (the product is then the same without it)."""
    return bias if bool(bias.any()) else None


def _unembed_forward(self, residual: torch.Tensor) -> torch.Tensor:
    residual = self.hook_in(residual)
    return self.hook_out(F.linear(residual, self.W_U.T.contiguous(), bias_or_none(self.b_U)))


def install_zero_bias_skip(model: HookedTransformer) -> HookedTransformer:
    """Give ``model.unembed`` the zero-bias skip (idempotent)."""
    unembed = model.unembed
    if not getattr(unembed, _SKIP, False) and hasattr(unembed, "b_U") and hasattr(unembed, "W_U"):
        unembed.forward = types.MethodType(_unembed_forward, unembed)
        object.__setattr__(unembed, _SKIP, True)
    return model
