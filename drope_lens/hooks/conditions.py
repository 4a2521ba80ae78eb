"""The study's Exp-4 intervention conditions and their hooks: the one place they are defined and combined.

``baseline`` = no hooks, ``bos_mlp`` = BOS-MLP ablation at the spike layer
(:mod:`drope_lens.hooks.bos`), ``qk`` = Jin-style Q/K mean replacement
(:mod:`drope_lens.hooks.mean_replacement`; defaults :data:`QK_DEFAULTS`, the study's J-A),
``combined`` = both. Used by the phase experiment and the knowledge tasks alike.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from drope_lens.errors import DropeLensInputError
from drope_lens.hooks.bos import bos_mlp_ablation_hooks
from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks
from drope_lens.hooks.types import FwdHooks
from drope_lens.options import CONDITIONS, MeanReplacementOptions, check_conditions  # noqa: E402,F401

#: Conditions that ablate the BOS MLP (they need the spike layer).
NEEDS_BOS = ("bos_mlp", "combined")
#: Conditions that mean-replace Q/K.
NEEDS_QK = ("qk", "combined")
#: What ``qk`` means when no ``qk_kwargs`` are given: the defaults of
#: :class:`~drope_lens.options.MeanReplacementOptions` (top-1 dim, pre-RoPE, decode steps untouched).
QK_DEFAULTS = {name: MeanReplacementOptions.default(name) for name in ("k", "rotary", "decode")}

QkSettings = Union[None, dict, MeanReplacementOptions]


def qk_settings(qk_kwargs: QkSettings) -> dict:
    """The ``qk`` condition's settings as keywords of ``qk_mean_replacement_hooks``: from a
    :class:`~drope_lens.options.MeanReplacementOptions`, a dict of those keywords, or None (defaults)."""
    if isinstance(qk_kwargs, MeanReplacementOptions):
        return qk_kwargs.qk_kwargs()
    return dict(qk_kwargs or {})


def condition_hooks(
    model,
    condition: str,
    *,
    bos_layer: Optional[int] = None,
    bos_mode: str = "zero",
    bos_mean_vector: Optional[torch.Tensor] = None,
    study_compatible: bool = False,
    qk_kwargs: QkSettings = None,
) -> FwdHooks:
    """The hooks of one Exp-4 condition. ``combined`` = BOS-MLP ablation + Q/K mean replacement
    (``qk_kwargs``: see :func:`qk_settings`)."""
    if condition not in CONDITIONS:
        raise DropeLensInputError(f"Unknown condition {condition!r}; choose from {CONDITIONS}.")
    hooks: FwdHooks = []
    if condition in NEEDS_BOS:
        if bos_layer is None:
            raise DropeLensInputError(f"condition {condition!r} needs bos_layer (the spike layer).")
        hooks += bos_mlp_ablation_hooks(
            bos_layer, mode=bos_mode, mean_vector=bos_mean_vector, study_compatible=study_compatible, model=model
        )
    if condition in NEEDS_QK:
        hooks += qk_mean_replacement_hooks(model, **qk_settings(qk_kwargs))
    return hooks
