"""Attention sinks: how much attention each head pays to position 0 (BOS).

Definitions (``A`` = one head's attention pattern of one text, rows = queries, ``T`` real tokens):

* **Sink score** (study §7.6): ``s_h = mean_q A[q, 0]`` over the real query rows; ``include_bos_row``
  keeps row 0 (where ``A[0, 0] = 1`` always, which adds ≈1/T — the study's choice) or drops it
  (default, rows 1…T−1). Padding rows are never counted.
* **Sink rate** at τ: the share of a layer's heads with ``s_h ≥ τ`` (inclusive, τ = :data:`DEFAULT_TAU` = 0.3 by
  default).
* **Gu et al. 2025** ("When Attention Sink Emerges in Language Models", ICLR 2025): the importance
  of key ``j`` is ``α_j = 1/(T−j) Σ_{q≥j} A[q, j]`` (mean over the queries that can see it). For
  ``j = 0`` this is the mean over **all** real rows, BOS row included. ``Sink^ε`` is the share of
  (layer, head) pairs with ``α_0 > ε`` (strict, ε = 0.3). Here it is computed per text and then
  averaged over texts, like the study's sink rate.

Patterns come from ``hook_pattern`` (the model's real attention, post-RoPE, fp32 — see
:mod:`drope_lens.loading.numerics`) or, for comparison with the published numbers (bug B1), from
:func:`manual_pre_rope_pattern`: ``softmax(q kᵀ / attn_scale)`` on the *pre-RoPE* ``hook_q``/``hook_k``.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int

from drope_lens.errors import DropeLensInputError, NonFiniteError

#: Sink-rate threshold τ (inclusive ``≥``) and Gu et al.'s ε (strict ``>``), defined in :mod:`drope_lens.options`.
from drope_lens.options import ATTENTION_SOURCES, DEFAULT_GU_EPS, DEFAULT_TAU  # noqa: F401  (re-exported)
from drope_lens.validation import check_tau  # noqa: F401  (re-exported)


def query_rows(
    lengths: Int[torch.Tensor, " batch"], n_pos: int, *, include_bos_row: bool
) -> Bool[torch.Tensor, "batch pos"]:
    """Query rows that count: real tokens (not padding), optionally without row 0."""
    pos = torch.arange(n_pos, device=lengths.device)
    rows = pos[None, :] < lengths[:, None]
    if not include_bos_row:
        rows = rows & (pos[None, :] > 0)
    return rows


def check_pattern(
    pattern: Float[torch.Tensor, "batch head q k"], lengths: Int[torch.Tensor, " batch"], layer: int
) -> None:
    """Raise :class:`NonFiniteError` on NaN/inf or on real rows that do not sum to 1.

    TransformerLens turns NaN patterns into zeros before ``hook_pattern``; an all-zero real row is
    therefore reported as the NaN it was, never used as a valid attention row.
    """
    if not bool(torch.isfinite(pattern).all()):
        raise NonFiniteError(f"Layer {layer}: attention pattern contains NaN/inf.")
    rows = query_rows(lengths.to(pattern.device), pattern.shape[2], include_bos_row=True)
    sums = pattern.sum(-1)  # [batch, head, q]
    bad = (sums - 1.0).abs() > 1e-3
    bad &= rows[:, None, :]
    if bool(bad.any()):
        n = int(bad.sum())
        raise NonFiniteError(
            f"Layer {layer}: {n} real attention rows do not sum to 1 (min {float(sums[bad].min()):.3g}). "
            "TransformerLens replaces NaN patterns by 0: the scores overflowed or a hook wrote NaN. "
            "Keep cfg.check_finite=True and cfg.fp32_attention=True to see where."
        )


def sink_scores(
    pattern: Float[torch.Tensor, "batch head q k"],
    lengths: Int[torch.Tensor, " batch"],
    *,
    include_bos_row: bool = False,
) -> Float[torch.Tensor, "batch head"]:
    """Per text and head: mean attention to position 0 over the counted query rows (float64)."""
    return sink_scores_from_column(pattern[..., 0], lengths, include_bos_row=include_bos_row)


def sink_scores_from_column(
    col0: Float[torch.Tensor, "batch head q"],
    lengths: Int[torch.Tensor, " batch"],
    *,
    include_bos_row: bool = False,
) -> Float[torch.Tensor, "batch head"]:
    """:func:`sink_scores` from the pattern's first column ``A[:, :, q, 0]`` alone (streaming path)."""
    rows = query_rows(lengths.to(col0.device), col0.shape[2], include_bos_row=include_bos_row)
    n_rows = rows.sum(-1)
    if bool((n_rows == 0).any()):
        raise DropeLensInputError("A text has no query row to average (length 1 without the BOS row).")
    total = (col0.double() * rows[:, None, :]).sum(-1)
    return total / n_rows[:, None].double()


def gu_importance(
    pattern: Float[torch.Tensor, "batch head q k"], lengths: Int[torch.Tensor, " batch"]
) -> Float[torch.Tensor, "batch head"]:
    """Gu et al. 2025 importance of the first token: mean of ``A[q, 0]`` over all real rows."""
    return sink_scores(pattern, lengths, include_bos_row=True)


def sink_rate(scores: Float[torch.Tensor, "... head"], tau: float = DEFAULT_TAU) -> Float[torch.Tensor, "..."]:
    """Share of heads whose sink score is ``≥ tau`` (inclusive)."""
    check_tau(tau)
    return (scores >= tau).double().mean(-1)


def gu_sink_rate(
    importance: Float[torch.Tensor, "... head"], eps: float = DEFAULT_GU_EPS
) -> Float[torch.Tensor, "..."]:
    """Share of heads whose Gu importance is ``> eps`` (strict, as in Gu et al. 2025)."""
    check_tau(eps, "gu_eps")
    return (importance > eps).double().mean(-1)


def uniform_sink_score(length: int, *, include_bos_row: bool = False) -> float:
    """The sink score uniform causal attention (``A[q, 0] = 1/(q+1)``) would give: a floor to compare with."""
    start = 0 if include_bos_row else 1
    rows = range(start, length)
    if len(rows) == 0:
        raise DropeLensInputError("No query rows to average.")
    return sum(1.0 / (q + 1) for q in rows) / len(rows)


def manual_pre_rope_pattern(
    q: Float[torch.Tensor, "batch pos head d_head"],
    k: Float[torch.Tensor, "batch pos kv_head d_head"],
    attn_scale: float,
) -> Float[torch.Tensor, "batch head pos pos"]:
    """The study's "manual Q/K" attention (§7.6 S3): causal ``softmax(q kᵀ / attn_scale)`` in fp32.

    ``q``/``k`` are the pre-RoPE projections (``hook_q``/``hook_k``). For a RoPE model this is **not**
    the model's attention (bug B1); for a plain NoPE model it equals ``hook_pattern``.
    """
    q, k = q.float(), k.float()
    if k.shape[2] != q.shape[2]:
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / float(attn_scale)
    n = q.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(causal, float("-inf"))
    return torch.softmax(scores, dim=-1)
