"""Weight memory layout that spares TransformerLens a copy of every matrix on every forward pass.

TransformerLens keeps weights as ``W_in [d_model, d_mlp]``, ``W_Q [head, d_model, d_head]`` etc. and
turns them into the ``nn.Linear`` layout at each call (``W.T.contiguous()``, ``rearrange(...)``),
which copies the matrix: ~0.4 s per forward for SmolLM2-135M (the 113 MB unembedding alone ~0.1 s),
most of a KV-cache decode step and of a short-prompt batch. :func:`linear_layout` stores each such
parameter as a strided *view* of a contiguous ``nn.Linear``-layout tensor: same shape and values,
so every TransformerLens API and hook sees exactly what it saw before, but the per-call transform
is now a no-op view and the matrix product runs on the very memory layout it ran on before (the
results are bit-identical). Loading, ``state_dict``, ``load_state_dict`` and ``.to(device)`` keep
the layout.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformer_lens import HookedTransformer


def _relayout(
    param: nn.Parameter,
    to_linear: Callable[[torch.Tensor], torch.Tensor],
    from_linear: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    with torch.no_grad():
        base = to_linear(param.data).contiguous()
        view = from_linear(base)
        assert view.shape == param.shape
        param.data = view


def _laid_out(w: torch.Tensor, to_linear: Callable, from_linear: Callable) -> bool:
    """Is ``w`` already the view :func:`_relayout` makes (its strides, not just its values)?"""
    expected = from_linear(to_linear(torch.empty_like(w, device="meta")).contiguous())
    return w.stride() == expected.stride()


def _heads_in(w: torch.Tensor) -> tuple[Callable, Callable]:
    """``[head, d_model, d_head]`` used as ``[(head d_head), d_model]``."""
    h, m, d = w.shape
    return (lambda t: t.permute(0, 2, 1).reshape(h * d, m), lambda b: b.view(h, d, m).permute(0, 2, 1))


def _heads_out(w: torch.Tensor) -> tuple[Callable, Callable]:
    """``[head, d_head, d_model]`` used as ``[d_model, (head d_head)]``."""
    h, d, m = w.shape
    return (lambda t: t.permute(2, 0, 1).reshape(m, h * d), lambda b: b.view(m, h, d).permute(1, 2, 0))


def _transposed(_: torch.Tensor) -> tuple[Callable, Callable]:
    """``[in, out]`` used as ``[out, in]``."""
    return (lambda t: t.T, lambda b: b.T)


_RULES = {  # parameter name (last component) -> layout rule
    "W_Q": _heads_in,
    "W_K": _heads_in,
    "W_V": _heads_in,
    "_W_K": _heads_in,
    "_W_V": _heads_in,
    "W_O": _heads_out,
    "W_in": _transposed,
    "W_gate": _transposed,
    "W_out": _transposed,
    "W_U": _transposed,
}


def linear_layout(model: HookedTransformer) -> HookedTransformer:
    """Store attention, MLP and unembedding matrices in ``nn.Linear`` layout (see module docstring).

    Idempotent; quantised (non-floating) weights are left alone. Returns ``model``.
    """
    for name, param in model.named_parameters():
        rule = _RULES.get(name.rsplit(".", 1)[-1])
        if rule is None or not param.is_floating_point() or param.ndim != (3 if rule is not _transposed else 2):
            continue
        to_linear, from_linear = rule(param)
        if _laid_out(param.data, to_linear, from_linear):
            continue
        _relayout(param, to_linear, from_linear)
    return model
