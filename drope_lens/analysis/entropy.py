"""Representation entropy and anisotropy of one text's hidden states (study §7.5, D11).

With ``σ`` the ``n = min(T, d)`` singular values of ``X`` (the ``T`` real rows of one text at one
layer; not centred, not row-normalised), taken as ``σ² = eigvalsh(X Xᵀ)`` (or ``XᵀX`` when ``T > d``)
in float64 — the study's route, and ~40× faster than an SVD on CPU:

* ``entropy_sq   = −Σ p ln p``, ``p = σ²/Σσ²`` — unnormalised, natural log; the numbers in the
  study's JSON (there via ``eigvalsh(X Xᵀ)``, the same spectrum);
* ``entropy_norm = −Σ q ln q / ln n``, ``q = σ/Σσ``, ``n = min(T, d)`` — the normalised σ-based
  entropy stated in the study's prose and PHASE_FINDINGS;
* ``anisotropy   = σ₁²/Σσ²`` — the top eigenvalue's share.

``0 ln 0 = 0``. A NaN/inf input or an all-zero matrix gives NaN (with a warning), never the study's
silent ``(0, 1)`` fallback (bug B2).
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
from jaxtyping import Float


@contextlib.contextmanager
def _single_thread(t: torch.Tensor):
    """One CPU thread for a small LAPACK call: multi-threaded eigvalsh on a busy CPU is ~100x slower."""
    if t.device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _plogp(p: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))


def spectrum_metrics(x: Float[torch.Tensor, "pos d_model"], *, where: str = "") -> tuple[float, float, float]:
    """``(entropy_sq, entropy_norm, anisotropy)`` of one ``[T, d]`` matrix (see module docstring)."""
    x = x.detach().double()
    nan = (float("nan"),) * 3
    if not bool(torch.isfinite(x).all()):
        warnings.warn(f"Entropy {where}: hidden states contain NaN/inf; recorded as NaN.", RuntimeWarning, stacklevel=2)
        return nan
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    with _single_thread(gram):
        sq = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0)
    s = sq.sqrt()
    total_sq = float(sq.sum())
    if total_sq <= 0.0 or len(s) < 2:
        warnings.warn(
            f"Entropy {where}: degenerate matrix (zero, or one singular value); recorded as NaN.",
            RuntimeWarning,
            stacklevel=2,
        )
        return nan
    p = sq / total_sq
    h_sq = float(-_plogp(p).sum())
    q = s / s.sum()
    h_norm = float(-_plogp(q).sum()) / math.log(len(s))
    return h_sq, h_norm, float(p.max())
