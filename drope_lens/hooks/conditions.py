"""The study's Exp-4 intervention conditions and their hooks: the one place they are defined and combined.

``baseline`` = no hooks, ``bos_mlp`` = BOS-MLP ablation at the spike layer
(:mod:`drope_lens.hooks.bos`), ``qk`` = Jin-style Q/K mean replacement
(:mod:`drope_lens.hooks.mean_replacement`; defaults :data:`QK_DEFAULTS`, the study's J-A),
``combined`` = both. Used by the phase experiment and the knowledge tasks alike.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch

from drope_lens.errors import DropeLensInputError
from drope_lens.hooks.bos import bos_mlp_ablation_hooks
from drope_lens.hooks.mean_replacement import mean_replacement_hooks, qk_mean_replacement_hooks
from drope_lens.hooks.types import FwdHooks

from drope_lens.options import CONDITIONS, check_conditions  # noqa: E402,F401  (re-exported)
#: Conditions that ablate the BOS MLP (they need the spike layer).
NEEDS_BOS = ("bos_mlp", "combined")
#: Conditions that mean-replace Q/K.
NEEDS_QK = ("qk", "combined")
#: What ``qk`` means when no ``qk_kwargs`` are given: the defaults of
#: :func:`~drope_lens.hooks.mean_replacement.mean_replacement_hooks` (top-1 dim, pre-RoPE, decode
#: steps untouched), read from its signature.
QK_DEFAULTS = {name: inspect.signature(mean_replacement_hooks).parameters[name].default
               for name in ("k", "rotary", "decode")}


def condition_hooks(
    model,
    condition: str,
    *,
    bos_layer: Optional[int] = None,
    bos_mode: str = "zero",
    bos_mean_vector: Optional[torch.Tensor] = None,
    study_compatible: bool = False,
    qk_kwargs: Optional[dict] = None,
) -> FwdHooks:
    """The hooks of one Exp-4 condition. ``combined`` = BOS-MLP ablation + Q/K mean replacement."""
    if condition not in CONDITIONS:
        raise DropeLensInputError(f"Unknown condition {condition!r}; choose from {CONDITIONS}.")
    hooks: FwdHooks = []
    if condition in NEEDS_BOS:
        if bos_layer is None:
            raise DropeLensInputError(f"condition {condition!r} needs bos_layer (the spike layer).")
        hooks += bos_mlp_ablation_hooks(bos_layer, mode=bos_mode, mean_vector=bos_mean_vector,
                                        study_compatible=study_compatible, model=model)
    if condition in NEEDS_QK:
        hooks += qk_mean_replacement_hooks(model, **(qk_kwargs or {}))
    return hooks
