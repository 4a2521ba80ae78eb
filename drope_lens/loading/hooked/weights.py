"""The weight matrices as drope_lens's kernels use them: TransformerLens's plain parameters, never copied.

The model's parameters are plain contiguous tensors in TransformerLens's own layout (``W_Q [head, d_model,
d_head]``, ``W_O [head, d_head, d_model]``, ``W_in [d_model, d_mlp]``, ``W_U [d_model, d_vocab]`` ...), so
``state_dict()``, ``safetensors``, ``parameters_to_vector`` and ``.view(-1)`` treat them like any
HookedTransformer's. TransformerLens turns each into the ``nn.Linear`` layout at every call
(``W.T.contiguous()``, ``rearrange(...)``): a copy of every matrix per forward pass, ~0.4 s for SmolLM2-135M on
two CPU cores, most of a KV-cache decode step. drope_lens's patched projections multiply by the parameters
themselves instead: a transposed *view* for the MLP, the unembedding and the attention output (the BLAS kernel
reads it as it is), and for q/k/v a batched product over heads (few positions) or one product on the
matrix rearranged for that call (many positions, where repeating the input per head would cost more). Nothing
is cached, so memory stays the model's size and every edit of a weight counts at once. The products may round
differently from TransformerLens's per-call copies in the last bits (tested ≤ 1e-5 relative on logits), as
HF's do.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn


def linear_view(module: nn.Module, name: str) -> torch.Tensor:
    """``module``'s 2-D matrix ``name`` (``[in, out]``: ``W_in``, ``W_gate``, ``W_out``, ``W_U``) or ``W_O``
    (``[head, d_head, d_model]``) as the ``[out, in]`` weight of ``F.linear``: a view, no copy."""
    w = module._parameters[name]
    assert w is not None
    if w.ndim == 3:  # W_O: [(head d_head), d_model] is a view of a contiguous tensor
        h, d, m = w.shape
        flat = w.reshape(h * d, m) if w.is_contiguous() else w.contiguous().reshape(h * d, m)
        return flat.T
    return w.T


def heads_linear(
    x: Float[torch.Tensor, "batch pos d_model"],
    w: Float[torch.Tensor, "head d_model d_head"],
    bias: Optional[Float[torch.Tensor, "head d_head"]] = None,
) -> Float[torch.Tensor, "batch pos head d_head"]:
    """``x @ w[h] (+ bias[h])`` for every head at once (TransformerLens's ``simple_attn_linear``).

    Few positions (KV-cache decode steps, short prompts): one batched product over heads on the parameter as
    it is, which repeats ``x`` per head but never copies ``w``. Many positions: repeating ``x`` would cost
    more than rearranging ``w`` once for this call (``positions × (heads-1) > heads × d_head``), so ``w`` is
    rearranged (a transient copy, as TransformerLens does on every call) and multiplied in one product.
    """
    if x.device != w.device:
        x = x.to(w.device)
    h, m, d = w.shape
    if x.shape[0] * x.shape[1] * (h - 1) > h * d:
        out = F.linear(x, w.permute(0, 2, 1).reshape(h * d, m)).view(*x.shape[:2], h, d)
    else:  # [batch, head, pos, d_head] -> [batch, pos, head, d_head]
        out = torch.matmul(x.unsqueeze(1), w).transpose(1, 2).contiguous()
    return out if bias is None else out + bias.to(out.device)
