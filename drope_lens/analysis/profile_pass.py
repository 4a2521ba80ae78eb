"""The phase profile in one forward pass per batch, optionally with the perplexity of the same pass.

:func:`phase_profile` hooks every layer (:class:`~drope_lens.analysis.profile_collector.ProfileCollector`);
each hook reduces its activation to a few numbers per text at once, so nothing is cached. Every
statistic uses each text's real tokens only (right padding is excluded), so the RoPE and DroPE
profiles of the same texts are like for like. :func:`measure` is the shared pass: profile,
perplexity, or both from the same forward.

Layer ``l`` is the residual stream after block ``l`` (HF ``hidden_states[l+1]``). For the last layer,
``last_layer="resid"`` (default) keeps the raw residual like every other layer; ``"final_norm"`` uses
the final RMSNorm output with its gain, as the study did (HF ``hidden_states[-1]``; §2, B14).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import torch

from drope_lens.analysis.perplexity import NLLAccumulator
from drope_lens.analysis.profile import PROFILE_DEFAULTS, PhaseProfile
from drope_lens.analysis.profile_collector import ProfileCollector
from drope_lens.analysis.sinks import DEFAULT_GU_EPS, DEFAULT_TAU
from drope_lens.errors import DropeLensInputError
from drope_lens.hooks.types import FwdHook
from drope_lens.loading.backend import Model
from drope_lens.loading.forward import forward_batch
from drope_lens.loading.surface import final_norm_gain
from drope_lens.loading.tokens import TokenBatch, as_batch
from drope_lens.options import DEFAULT_BATCH_SIZE, check_profile_options
from drope_lens.validation import check_batch_size

if TYPE_CHECKING:
    from drope_lens.analysis.perplexity import PerplexityResult

#: Texts, a right-padded :class:`TokenBatch`, or an unpadded ``[batch, pos]`` id tensor.
Inputs = Union[Sequence[str], TokenBatch, torch.Tensor]


def _check_options(model, tau, gu_eps, last_layer, attention, batch_size, sinks_from="stream") -> None:
    check_profile_options(tau, gu_eps, last_layer, attention, sinks_from)
    check_batch_size(batch_size)
    if last_layer == "final_norm" and final_norm_gain(model) is None:
        raise DropeLensInputError(
            "last_layer='final_norm' needs the final RMSNorm gain; it was folded away "
            "(process_weights=True). Load with process_weights=False."
        )


@torch.no_grad()
def phase_profile(
    model: Model,
    inputs: Inputs,
    *,
    tau: float = DEFAULT_TAU,
    include_bos_row: bool = False,
    last_layer: str = "resid",
    attention: str = "native",
    gu_eps: float = DEFAULT_GU_EPS,
    spike_threshold: float = 2.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    fwd_hooks: Sequence[FwdHook] = (),
    progress: bool = False,
    sinks_from: str = "stream",
) -> PhaseProfile:
    """Sink scores/rates, BOS norm/ratio, entropy and anisotropy per layer, one forward per batch.

    Args:
        inputs: texts, a :class:`TokenBatch`, or an unpadded id tensor (BOS at position 0; ≥ 2 tokens).
        tau: sink-rate threshold (inclusive ``≥``). ``gu_eps``: Gu et al. 2025 threshold (strict ``>``).
        include_bos_row: count query row 0 in sink scores (the study did; default excludes it).
        last_layer: ``"resid"`` (raw residual after the last block) or ``"final_norm"`` (study).
        attention: ``"native"`` (``hook_pattern``, the model's real attention) or
            ``"pre_rope_manual"`` (the study's manual pre-RoPE Q/K softmax; bug B1 on RoPE models).
        fwd_hooks: interventions active during the pass (e.g. :func:`~drope_lens.hooks.conditions.condition_hooks`).
        sinks_from: ``"stream"`` (default: native sink scores from ``hook_rot_q/k`` in query chunks,
            O(chunk·T) memory, fast attention kept) or ``"pattern"`` (from ``hook_pattern``, the
            reference). Both give the same numbers (tested).
    """
    profile, _ = measure(
        model,
        inputs,
        profile=True,
        ppl=False,
        fwd_hooks=fwd_hooks,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        tau=tau,
        include_bos_row=include_bos_row,
        last_layer=last_layer,
        attention=attention,
        gu_eps=gu_eps,
        spike_threshold=spike_threshold,
        sinks_from=sinks_from,
    )
    assert profile is not None  # measure(profile=True)
    return profile


@torch.no_grad()
def measure(
    model: Model,
    inputs: Inputs,
    *,
    profile: bool,
    ppl: bool,
    fwd_hooks: Sequence[FwdHook] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    progress: bool = False,
    **options: Any,
) -> tuple[Optional[PhaseProfile], Optional["PerplexityResult"]]:
    """One forward per batch giving the phase profile, the perplexity, or both from the same pass."""
    unknown = set(options) - set(PROFILE_DEFAULTS)
    if unknown:
        raise TypeError(f"Unknown phase option(s) {sorted(unknown)}; known: {sorted(PROFILE_DEFAULTS)}.")
    opts = {**PROFILE_DEFAULTS, **options}
    if any(str(name).endswith(("hook_pattern", "hook_attn_scores")) for name, _ in fwd_hooks if isinstance(name, str)):
        opts["sinks_from"] = "pattern"  # an intervention edits the pattern: read the real one
    _check_options(
        model, opts["tau"], opts["gu_eps"], opts["last_layer"], opts["attention"], batch_size, opts["sinks_from"]
    )
    t0 = time.perf_counter()
    batch = as_batch(model, inputs, max_length=max_length)
    if bool((batch.lengths < 2).any()):
        raise DropeLensInputError("Every text needs at least one token after BOS (BOS ratio, sink rows, PPL).")
    col = (
        ProfileCollector(
            model,
            len(batch),
            include_bos_row=opts["include_bos_row"],
            last_layer=opts["last_layer"],
            attention=opts["attention"],
            sinks_from=opts["sinks_from"],
        )
        if profile
        else None
    )
    acc = NLLAccumulator(len(batch)) if ppl else None
    parts = list(batch.batches(batch_size))
    if progress:
        from drope_lens.progress import progress_bar

        parts = progress_bar(parts, what="phase", model=model)
    with model.hooks(fwd_hooks=list(fwd_hooks) + (col.hooks() if col else [])):
        for idx, sub in parts:
            if col is not None:
                col.set_batch(idx, sub.lengths)
            out = forward_batch(model, sub, return_type="logits" if ppl else None)  # declares the mask
            if acc is not None:
                acc.add(idx, out, sub)
            del out
    if col is None:
        return None, acc.result() if acc else None
    prof = PhaseProfile(
        sink_scores_per_text=col.sink,
        gu_importance_per_text=col.gu,
        bos_norm_per_text=col.bos_norm,
        bos_ratio_per_text=col.bos_ratio,
        entropy_sq_per_text=col.h_sq,
        entropy_norm_per_text=col.h_norm,
        anisotropy_per_text=col.aniso,
        lengths=[int(n) for n in batch.lengths],
        **opts,
        model=getattr(model.cfg, "model_name", ""),
        position_encoding=str(getattr(model.cfg, "position_encoding", "rope")),
        wall_s=time.perf_counter() - t0,
    )
    return prof, acc.result() if acc else None
