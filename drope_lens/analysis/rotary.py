"""Rotary frequency of each head dimension, and a coarse frequency band.

TransformerLens (and HF Llama) rotate in "rotate-half" layout: dims ``i`` and ``i + rotary_dim/2``
form a pair rotated by the angle ``p * theta_i`` at position ``p``. For plain RoPE
``theta_i = base ** (-2 i / rotary_dim)``; Llama-3 / YaRN scaling changes some ``theta_i``. The
frequencies here are read back from the model's own sin/cos table (angle at position 1), so every
scaling variant TransformerLens implements is covered.

Bands (:func:`band_of`) are relative to a context length ``C`` (default: the model's ``n_ctx``),
through the number of full turns a pair makes over the context, ``C / wavelength``:

* ``"low"``: fewer than 1 turn (wavelength >= C). The pair acts almost like a position-free channel;
  Jin et al. report massive Q/K values concentrated here.
* ``"mid"``: 1 to 32 turns.
* ``"high"``: more than 32 turns (wavelength < C / 32).
* ``"unrotated"``: dims past ``rotary_dim`` (partial rotary models).

NoPE / DroPE models (``rotary_dim == 0``) have no frequencies: every function returns ``None``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from jaxtyping import Float

from drope_lens.loading import surface

#: Turns over the context above which a pair is "high" frequency.
HIGH_TURNS = 32.0


@dataclass(frozen=True)
class RotaryBand:
    """Frequency facts of one head dimension."""

    dim: int
    pair: Optional[int]  # the dim it is rotated together with
    frequency: float  # radians per token
    wavelength: float  # tokens per full turn (inf for unrotated dims)
    band: str  # "high" | "mid" | "low" | "unrotated"

    def to_dict(self) -> dict:
        return asdict(self)


def is_rotary(model) -> bool:
    """True if the model actually rotates Q/K (RoPE), False for NoPE/DroPE twins."""
    cfg = model.cfg
    if getattr(cfg, "is_nope", False):
        return False
    return cfg.positional_embedding_type == "rotary" and int(cfg.rotary_dim or 0) > 0


def rotary_frequencies(model) -> Optional[Float[torch.Tensor, " d_head"]]:
    """Angular frequency (radians/token) of every head dim, 0 for unrotated dims; None for NoPE."""
    return surface.rotary_frequencies(model) if is_rotary(model) else None


def band_of(wavelength: float, context_length: int) -> str:
    """``"low"``, ``"mid"`` or ``"high"`` for a rotated pair (see module docstring)."""
    if not math.isfinite(wavelength):
        return "unrotated"
    turns = context_length / wavelength
    if turns < 1.0:
        return "low"
    return "high" if turns > HIGH_TURNS else "mid"


def rotary_bands(model, *, context_length: Optional[int] = None) -> Optional[list[RotaryBand]]:
    """One :class:`RotaryBand` per head dim, or None for NoPE models."""
    freqs = rotary_frequencies(model)
    if freqs is None:
        return None
    context = int(context_length or model.cfg.n_ctx)
    if context < 1:
        raise ValueError(f"context_length must be >= 1, got {context}")
    rot = int(model.cfg.rotary_dim)
    half = rot // 2
    out = []
    for d, f in enumerate(freqs.tolist()):
        if d >= rot or f <= 0:
            out.append(RotaryBand(d, None, 0.0, math.inf, "unrotated"))
            continue
        wavelength = 2 * math.pi / f
        pair = d + half if d < half else d - half
        out.append(RotaryBand(d, pair, f, wavelength, band_of(wavelength, context)))
    return out
