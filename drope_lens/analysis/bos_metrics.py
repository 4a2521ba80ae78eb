"""BOS norm, BOS ratio, spike layer and peak BOS norm (study §7.2–7.4, D10, B14).

Per text and layer, on the residual stream ``X`` (real rows only, float64):
``bos_norm = ‖X[0]‖₂`` and ``bos_ratio = ‖X[0]‖₂ / mean_{t=1..T−1} ‖X[t]‖₂`` (the study adds 1e-8 to
the denominator; that changes nothing measurable and is left out). Texts need ``T ≥ 2``.

Spike layer, from the mean ratio over texts (both rules are reported; D10):

* ``"argmax"``: the layer with the largest mean ratio — what the study's code used and what
  drope_lens's BOS-MLP ablation uses by default;
* ``"first_above"``: the first layer whose mean ratio exceeds ``threshold`` (2.0) — the study's prose.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from jaxtyping import Float, Int

from drope_lens.options import SPIKE_RULES  # noqa: E402  (re-exported)


def bos_norms(
    resid: Float[torch.Tensor, "batch pos d_model"], lengths: Int[torch.Tensor, " batch"]
) -> tuple[Float[torch.Tensor, " batch"], Float[torch.Tensor, " batch"]]:
    """Per text: ``(‖X[0]‖, mean ‖X[t]‖ over real t ≥ 1)`` in float64 (NaN propagates, never zeroed)."""
    norms = resid.double().norm(dim=-1)  # [batch, pos]
    pos = torch.arange(resid.shape[1], device=resid.device)
    others = (pos[None, :] > 0) & (pos[None, :] < lengths.to(resid.device)[:, None])
    n_other = others.sum(-1)
    if bool((n_other == 0).any()):
        raise ValueError("BOS ratio needs at least one token after BOS in every text.")
    other_mean = torch.where(others, norms, torch.zeros_like(norms)).sum(-1) / n_other.double()
    # torch.where would hide a NaN in a real row; put it back.
    bad = (torch.isnan(norms) & others).any(-1)
    other_mean = torch.where(bad, torch.full_like(other_mean, float("nan")), other_mean)
    return norms[:, 0], other_mean


def spike_layer(
    mean_ratio: Float[np.ndarray, " layer"], *, rule: str = "argmax", threshold: float = 2.0
) -> Optional[int]:
    """Spike layer by ``rule``; ``None`` for ``"first_above"`` when no layer exceeds ``threshold``."""
    ratio = np.asarray(mean_ratio, dtype=float)
    if rule == "argmax":
        if np.isnan(ratio).all():
            return None
        return int(np.nanargmax(ratio))
    if rule == "first_above":
        above = np.flatnonzero(ratio > threshold)
        return int(above[0]) if above.size else None
    raise ValueError(f"Unknown spike rule {rule!r}; choose one of {SPIKE_RULES}.")


def peak(values: Float[np.ndarray, " layer"], *, mode: str = "max") -> tuple[float, Optional[int]]:
    """``(value, layer)`` of the max (or min) of a per-layer curve, NaN layers skipped."""
    arr = np.asarray(values, dtype=float)
    if np.isnan(arr).all():
        return float("nan"), None
    idx = int(np.nanargmax(arr) if mode == "max" else np.nanargmin(arr))
    return float(arr[idx]), idx
