"""Validators shared by every layer (errors come from :mod:`drope_lens.errors`)."""

from __future__ import annotations

from typing import Any, Sequence


def check_choice(name: str, value: Any, allowed: Sequence) -> None:
    """Refuse ``value`` unless it is one of ``allowed`` (``ValueError`` naming ``name`` and the choices)."""
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; use one of {tuple(allowed)}.")
