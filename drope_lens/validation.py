"""Validators shared by every layer (errors come from :mod:`drope_lens.errors`)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from drope_lens.errors import DropeLensInputError


def check_choice(name: str, value: Any, allowed: Sequence) -> None:
    """Refuse ``value`` unless it is one of ``allowed`` (a :class:`DropeLensInputError`, so a ``ValueError``,
    naming ``name`` and the choices)."""
    if value not in allowed:
        raise DropeLensInputError(f"Unknown {name} {value!r}; choose one of {tuple(allowed)}.")


def check_batch_size(batch_size: int) -> int:
    """Refuse a batch size below 1."""
    if batch_size < 1:
        raise DropeLensInputError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


def check_threshold(threshold: float, name: str = "threshold (lambda)") -> float:
    """Validate a massive-value λ: a finite number > 0."""
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or threshold <= 0
    ):
        raise DropeLensInputError(f"{name} must be a finite number > 0, e.g. 5.0; got {threshold!r}")
    return float(threshold)


def check_tau(tau: float, name: str = "tau") -> float:
    """Validate a threshold in (0, 1]."""
    tau = float(tau)
    if not (0.0 < tau <= 1.0):
        raise DropeLensInputError(f"{name} must be in (0, 1], got {tau}")
    return tau


def check_layer(model: Any, layer: int) -> int:
    """Refuse a layer that is not an int >= 0 (and, given a model, below its ``cfg.n_layers``)."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise DropeLensInputError(f"layer must be an int, got {layer!r}")
    n_layers = model.cfg.n_layers if model is not None else None
    if layer < 0 or (n_layers is not None and layer >= n_layers):
        limit = f"the model has {n_layers} layers, 0…{n_layers - 1}" if n_layers is not None else ">= 0"
        raise DropeLensInputError(f"layer {layer} is out of range ({limit}); pass a layer in that range.")
    return layer
