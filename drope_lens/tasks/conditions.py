"""Conditions of the knowledge tasks: baseline, Q/K mean replacement, BOS-MLP ablation, combined.

The hooks come from :func:`drope_lens.hooks.conditions.condition_hooks` (the one place where the
interventions are combined): ``qk`` = Jin-style mean replacement of the top-1 Q/K dim per head
(pre-RoPE, the study's J-A), ``bos_mlp`` = zeroing ``blocks.{bos_layer}.hook_mlp_out`` at absolute
position 0, ``combined`` = both. They are attached for the whole scoring call and act on the
prompt only: Q/K mean replacement skips KV-cache decode steps (generated tokens, later option
tokens), and the BOS ablation touches absolute position 0 only (bug B3 fixed). Statistics inside
the Q/K hooks use real tokens only (the runner declares each padded batch's mask), so batching
does not change the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from drope_lens.errors import DropeLensInputError
from drope_lens.hooks.conditions import CONDITIONS, NEEDS_BOS, NEEDS_QK, QK_DEFAULTS, QkSettings, qk_settings
from drope_lens.hooks.types import FwdHooks
from drope_lens.loading.backend import Model
from drope_lens.options import DEFAULT_BATCH_SIZE


@dataclass(frozen=True)
class Condition:
    """A named intervention: ``make_hooks(model)`` returns fresh hooks for one scoring call.

    ``batch_safe``: the hooks treat rows and positions independently, or read the real-token mask
    (:func:`drope_lens.hooks.mask.real_token_mask`), so right-padded batches are exact.
    Otherwise the runner feeds prompts one at a time.
    """

    name: str
    make_hooks: Callable[[Model], FwdHooks]
    batch_safe: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def standard_condition(
    name: str, *, bos_layer: Optional[int] = None, bos_mode: str = "zero", qk_kwargs: QkSettings = None
) -> Condition:
    """One of :data:`CONDITIONS` (``bos_layer`` required for ``bos_mlp`` / ``combined``; ``qk_kwargs``:
    a :class:`~drope_lens.options.MeanReplacementOptions` or a dict of its keywords)."""
    if name not in CONDITIONS:
        raise DropeLensInputError(
            f"Unknown condition {name!r}; choose from {CONDITIONS} or pass a Condition for your own hooks."
        )
    if name in NEEDS_BOS and bos_layer is None:
        raise DropeLensInputError(f"Condition {name!r} needs bos_layer (the BOS spike layer).")
    qk_kwargs = qk_settings(qk_kwargs)

    def make(model: Model) -> FwdHooks:
        if name == "baseline":
            return []
        from drope_lens.hooks.conditions import condition_hooks

        return condition_hooks(model, name, bos_layer=bos_layer, bos_mode=bos_mode, qk_kwargs=qk_kwargs)

    info: dict[str, Any] = {}
    if name in NEEDS_BOS:
        info.update(bos_layer=bos_layer, bos_mode=bos_mode)
    if name in NEEDS_QK:
        info.update(qk={**QK_DEFAULTS, **qk_kwargs})
    return Condition(name, make, batch_safe=True, info=info)


def resolve_conditions(
    conditions: Sequence[Union[str, Condition]],
    *,
    bos_layer: Optional[int],
    bos_mode: str = "zero",
    qk_kwargs: QkSettings = None,
) -> list[Condition]:
    """Names and :class:`Condition` objects → conditions (names must be unique)."""
    if isinstance(conditions, (str, Condition)):
        conditions = [conditions]
    out = [
        c
        if isinstance(c, Condition)
        else standard_condition(c, bos_layer=bos_layer, bos_mode=bos_mode, qk_kwargs=qk_kwargs)
        for c in conditions
    ]
    names = [c.name for c in out]
    if not out:
        raise DropeLensInputError("No conditions given.")
    if len(set(names)) != len(names):
        raise DropeLensInputError(f"Condition names must be unique, got {names}.")
    return out


def default_bos_layer(model: Model, *, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """The BOS spike layer (argmax of the mean BOS ratio, the study's rule) on the built-in texts."""
    from drope_lens.analysis.profile_pass import phase_profile
    from drope_lens.data import builtin_texts

    layer = phase_profile(model, builtin_texts(), batch_size=batch_size).spike_layer("argmax")
    if layer is None:
        raise DropeLensInputError("Could not find a BOS spike layer; pass bos_layer explicitly.")
    return int(layer)
