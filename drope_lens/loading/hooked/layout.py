"""Plain weights: every parameter a contiguous tensor in TransformerLens's own layout.

Earlier drope_lens versions stored ``W_Q/W_K/W_V/W_O/W_in/W_gate/W_out/W_U`` as strided views of
``nn.Linear``-layout tensors, to spare TransformerLens a copy of every matrix per call. Those views broke
tools that expect ordinary tensors (``safetensors`` saving, ``parameters_to_vector``, ``.view(-1)``). The
``nn.Linear`` layout now lives in the kernels' private cache (:mod:`drope_lens.loading.hooked.weights`),
with the same speed and the same numbers, and the parameters are plain. :func:`linear_layout` keeps its
name for code that called it: it now makes any strided matrix parameter contiguous (in place, values
unchanged) and returns the model.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer


def linear_layout(model: HookedTransformer) -> HookedTransformer:
    """Make every parameter of ``model`` a contiguous tensor (idempotent; values unchanged). Returns ``model``."""
    with torch.no_grad():
        for param in model.parameters():
            if not param.is_contiguous():
                param.data = param.detach().contiguous()
    return model
