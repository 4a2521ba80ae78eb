"""Phase profile of a model in one forward pass per batch: sinks, BOS norm/ratio, entropy.

:func:`phase_profile` streams sink scores and Gu importance from every layer's ``hook_rot_q/k`` in
query chunks (:mod:`drope_lens.analysis.stream_sinks`; ``sinks_from="pattern"`` reads
``blocks.{l}.attn.hook_pattern`` instead) and hooks
every ``blocks.{l}.hook_resid_post`` (BOS norm/ratio, entropy); each hook reduces its activation to a
few numbers per text at once, so nothing is cached. Every statistic uses each text's real tokens
only (right padding is excluded), so the RoPE and DroPE profiles of the same texts are like for like.

:func:`phase_experiment` adds the interventions of the study's Exp 4 — BOS-MLP ablation at the spike
layer, Q/K mean replacement, both combined — with the perplexity of each condition.

Layer ``l`` is the residual stream after block ``l`` (HF ``hidden_states[l+1]``). For the last layer,
``last_layer="resid"`` (default) keeps the raw residual like every other layer; ``"final_norm"`` uses
the final RMSNorm output with its gain, as the study did (HF ``hidden_states[-1]``; §2, B14).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer

from drope_lens.analysis import bos_metrics, entropy, sinks
from drope_lens.hooks.types import FwdHooks
from drope_lens.loading.tokens import TokenBatch, as_batch

from drope_lens.errors import DropeLensInputError

#: Texts, a right-padded :class:`TokenBatch`, or an unpadded ``[batch, pos]`` id tensor.
Inputs = Union[Sequence[str], TokenBatch, torch.Tensor]

LAST_LAYER_MODES = ("resid", "final_norm")
#: Profile options and their defaults (see :func:`phase_profile`).
PROFILE_DEFAULTS = dict(tau=0.3, include_bos_row=False, last_layer="resid", attention="native",
                        gu_eps=0.3, spike_threshold=2.0, sinks_from="stream")
#: Where native sink scores come from: streamed from ``hook_rot_q/k`` in query chunks (O(chunk·T),
#: the model keeps its fast attention) or from ``hook_pattern`` (O(T²), the reference).
SINK_SOURCES = ("stream", "pattern")
CONDITIONS = ("baseline", "bos_mlp", "qk", "combined")


def _mean_std(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return a.mean(0), a.std(0)  # population std over texts, as the study; NaN propagates


@dataclass
class PhaseProfile:
    """Per-layer phase metrics of one model on one set of texts (means/std over texts).

    Per-text arrays have shape ``[text, layer]`` (``[text, layer, head]`` for heads); the
    aggregated ones drop the first axis.
    """

    sink_scores_per_text: Float[np.ndarray, "text layer head"]
    gu_importance_per_text: Float[np.ndarray, "text layer head"]
    bos_norm_per_text: Float[np.ndarray, "text layer"]
    bos_ratio_per_text: Float[np.ndarray, "text layer"]
    entropy_sq_per_text: Float[np.ndarray, "text layer"]
    entropy_norm_per_text: Float[np.ndarray, "text layer"]
    anisotropy_per_text: Float[np.ndarray, "text layer"]
    lengths: list[int]
    tau: float = 0.3
    gu_eps: float = 0.3
    include_bos_row: bool = False
    last_layer: str = "resid"
    attention: str = "native"
    spike_threshold: float = 2.0
    sinks_from: str = "stream"
    model: str = ""
    position_encoding: str = ""
    wall_s: float = 0.0

    # ---- per layer ------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.bos_norm_per_text.shape[1]

    @property
    def sink_score(self) -> Float[np.ndarray, "layer head"]:
        """Per-head sink score map (mean over texts) — for views."""
        return self.sink_scores_per_text.mean(0)

    @property
    def gu_importance(self) -> Float[np.ndarray, "layer head"]:
        return self.gu_importance_per_text.mean(0)

    @property
    def sink_rate_per_text(self) -> Float[np.ndarray, "text layer"]:
        return (self.sink_scores_per_text >= self.tau).mean(-1)

    @property
    def gu_rate_per_text(self) -> Float[np.ndarray, "text layer"]:
        return (self.gu_importance_per_text > self.gu_eps).mean(-1)

    def layer_stats(self) -> dict[str, np.ndarray]:
        """Every per-layer curve, ``name`` (mean over texts) and ``name_std`` (population std)."""
        out: dict[str, np.ndarray] = {}
        for name, arr in (
            ("sink_rate", self.sink_rate_per_text), ("gu_rate", self.gu_rate_per_text),
            ("bos_norm", self.bos_norm_per_text), ("bos_ratio", self.bos_ratio_per_text),
            ("entropy_sq", self.entropy_sq_per_text), ("entropy_norm", self.entropy_norm_per_text),
            ("anisotropy", self.anisotropy_per_text),
        ):
            out[name], out[name + "_std"] = _mean_std(arr)
        return out

    # ---- scalars ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Headline numbers: mean sink rate, Gu's Sink^ε, both spike layers, peak BOS, valleys."""
        st = self.layer_stats()
        peak_norm, peak_layer = bos_metrics.peak(st["bos_norm"], mode="max")
        h_sq, h_sq_layer = bos_metrics.peak(st["entropy_sq"], mode="min")
        h_n, h_n_layer = bos_metrics.peak(st["entropy_norm"], mode="min")
        return {
            "mean_sink_rate": float(np.mean(st["sink_rate"])),
            "gu_sink": float(np.mean(st["gu_rate"])),
            "spike_layer_argmax": bos_metrics.spike_layer(st["bos_ratio"], rule="argmax"),
            "spike_layer_first_above": bos_metrics.spike_layer(
                st["bos_ratio"], rule="first_above", threshold=self.spike_threshold),
            "spike_threshold": self.spike_threshold,
            "max_bos_ratio": float(np.nanmax(st["bos_ratio"])) if not np.isnan(st["bos_ratio"]).all() else float("nan"),
            "peak_bos_norm": peak_norm, "peak_bos_layer": peak_layer,
            "min_entropy_sq": h_sq, "min_entropy_sq_layer": h_sq_layer,
            "min_entropy_norm": h_n, "min_entropy_norm_layer": h_n_layer,
            "uniform_sink_score": float(np.mean([
                sinks.uniform_sink_score(n, include_bos_row=self.include_bos_row) for n in self.lengths])),
        }

    def spike_layer(self, rule: str = "argmax") -> Optional[int]:
        return bos_metrics.spike_layer(
            self.layer_stats()["bos_ratio"], rule=rule, threshold=self.spike_threshold)

    # ---- export ----------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "tau", "gu_eps", "include_bos_row", "last_layer", "attention", "spike_threshold",
            "sinks_from")}

    def to_dict(self, *, per_text: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model, "position_encoding": self.position_encoding,
            "options": self.options(), "n_texts": len(self.lengths), "lengths": list(self.lengths),
            "wall_s": round(self.wall_s, 3), "summary": self.summary(),
            "layers": {k: v.tolist() for k, v in self.layer_stats().items()},
            "sink_score": self.sink_score.tolist(), "gu_importance": self.gu_importance.tolist(),
        }
        if per_text:
            d["per_text"] = {f.name[: -len("_per_text")]: getattr(self, f.name).tolist()
                             for f in dataclasses.fields(self) if f.name.endswith("_per_text")}
        return d

    def to_dataframe(self):
        """One row per layer with every per-layer curve."""
        import pandas as pd

        df = pd.DataFrame(self.layer_stats())
        df.insert(0, "layer", np.arange(self.n_layers))
        return df

    def head_dataframe(self):
        """Long format ``layer, head, sink_score, gu_importance`` (per-head maps)."""
        import pandas as pd

        n_l, n_h = self.sink_score.shape
        return pd.DataFrame({
            "layer": np.repeat(np.arange(n_l), n_h), "head": np.tile(np.arange(n_h), n_l),
            "sink_score": self.sink_score.ravel(), "gu_importance": self.gu_importance.ravel(),
        })


class _Collector:
    """Hook functions that reduce patterns and residuals to per-text numbers as they pass."""

    def __init__(self, model: HookedTransformer, n_texts: int, *, include_bos_row: bool,
                 last_layer: str, attention: str, sinks_from: str = "stream"):
        cfg = model.cfg
        self.model, self.include_bos_row, self.attention = model, include_bos_row, attention
        self.stream = None
        if attention == "native" and sinks_from == "stream":
            from drope_lens.analysis.stream_sinks import SinkStream

            self.stream = SinkStream(model, self._column)
        self.last_layer = last_layer
        L, H = cfg.n_layers, cfg.n_heads
        self.sink = np.full((n_texts, L, H), np.nan)
        self.gu = np.full((n_texts, L, H), np.nan)
        self.bos_norm = np.full((n_texts, L), np.nan)
        self.bos_ratio = np.full((n_texts, L), np.nan)
        self.h_sq = np.full((n_texts, L), np.nan)
        self.h_norm = np.full((n_texts, L), np.nan)
        self.aniso = np.full((n_texts, L), np.nan)
        self.idx: list[int] = []
        self.lengths = torch.zeros(0, dtype=torch.long)
        self._qk: dict[str, torch.Tensor] = {}
        if attention == "pre_rope_manual":
            self.attn_scale = float(cfg.attn_scale) if cfg.use_attn_scale else 1.0

    def set_batch(self, idx: list[int], lengths: torch.Tensor) -> None:
        self.idx, self.lengths = idx, lengths.cpu()
        if self.stream is not None:
            self.stream.set_lengths(lengths)

    # ---- attention -------------------------------------------------------------------------
    def _stash(self, x: torch.Tensor, hook) -> None:
        self._qk[hook.name.rsplit("_", 1)[1]] = x.detach()

    def _pattern(self, pattern: torch.Tensor, hook) -> None:
        layer = hook.layer()
        if self.attention == "pre_rope_manual":
            pattern = sinks.manual_pre_rope_pattern(self._qk.pop("q"), self._qk.pop("k"), self.attn_scale)
        lengths = self.lengths.to(pattern.device)
        sinks.check_pattern(pattern, lengths, layer)
        scores = sinks.sink_scores(pattern, lengths, include_bos_row=self.include_bos_row)
        gu = sinks.gu_importance(pattern, lengths)
        self.sink[self.idx, layer] = scores.cpu().numpy()
        self.gu[self.idx, layer] = gu.cpu().numpy()

    def _column(self, col0: torch.Tensor, layer: int) -> None:
        """Streaming path: ``A[:, :, q, 0]`` of one layer (see :mod:`.stream_sinks`)."""
        lengths = self.lengths.to(col0.device)
        self.sink[self.idx, layer] = sinks.sink_scores_from_column(
            col0, lengths, include_bos_row=self.include_bos_row).cpu().numpy()
        self.gu[self.idx, layer] = sinks.sink_scores_from_column(
            col0, lengths, include_bos_row=True).cpu().numpy()

    # ---- residual stream ------------------------------------------------------------------
    def _resid(self, resid: torch.Tensor, hook, layer: Optional[int] = None) -> None:
        if layer is None:
            layer = hook.layer()
        if hook.name == "ln_final.hook_normalized":
            resid = resid.to(self.model.cfg.dtype) * self.model.ln_final.w
        lengths = self.lengths.to(resid.device)
        bos, other = bos_metrics.bos_norms(resid, lengths)
        self.bos_norm[self.idx, layer] = bos.cpu().numpy()
        self.bos_ratio[self.idx, layer] = (bos / other).cpu().numpy()
        for row, text in enumerate(self.idx):
            n = int(self.lengths[row])
            self.h_sq[text, layer], self.h_norm[text, layer], self.aniso[text, layer] = \
                entropy.spectrum_metrics(resid[row, :n], where=f"layer {layer}, text {text}")

    def hooks(self) -> FwdHooks:
        L = self.model.cfg.n_layers
        hooks: FwdHooks = []
        for layer in range(L):
            if self.attention == "pre_rope_manual":
                hooks += [(f"blocks.{layer}.attn.hook_q", self._stash),
                          (f"blocks.{layer}.attn.hook_k", self._stash)]
            if self.stream is None:
                hooks.append((f"blocks.{layer}.attn.hook_pattern", self._pattern))
            if layer < L - 1 or self.last_layer == "resid":
                hooks.append((f"blocks.{layer}.hook_resid_post", self._resid))
        if self.last_layer == "final_norm":
            hooks.append(("ln_final.hook_normalized",
                          lambda x, hook: self._resid(x, hook, layer=L - 1)))
        if self.stream is not None:
            hooks += self.stream.hooks()
        return hooks


def _check_options(model, tau, gu_eps, last_layer, attention, batch_size, sinks_from="stream") -> None:
    if sinks_from not in SINK_SOURCES:
        raise DropeLensInputError(f"Unknown sinks_from {sinks_from!r}; choose one of {SINK_SOURCES}.")
    sinks.check_tau(tau)
    sinks.check_tau(gu_eps, "gu_eps")
    if last_layer not in LAST_LAYER_MODES:
        raise DropeLensInputError(f"Unknown last_layer {last_layer!r}; choose one of {LAST_LAYER_MODES}.")
    if attention not in sinks.ATTENTION_SOURCES:
        raise DropeLensInputError(f"Unknown attention {attention!r}; choose one of {sinks.ATTENTION_SOURCES}.")
    if batch_size < 1:
        raise DropeLensInputError(f"batch_size must be >= 1, got {batch_size}")
    if last_layer == "final_norm" and not hasattr(model.ln_final, "w"):
        raise DropeLensInputError("last_layer='final_norm' needs the final RMSNorm gain; it was folded away "
                         "(process_weights=True). Load with process_weights=False.")


@torch.no_grad()
def phase_profile(
    model: HookedTransformer,
    inputs: Inputs,
    *,
    tau: float = 0.3,
    include_bos_row: bool = False,
    last_layer: str = "resid",
    attention: str = "native",
    gu_eps: float = 0.3,
    spike_threshold: float = 2.0,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    fwd_hooks: FwdHooks = (),
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
        fwd_hooks: interventions active during the pass (e.g. :func:`condition_hooks`).
        sinks_from: ``"stream"`` (default: native sink scores from ``hook_rot_q/k`` in query chunks,
            O(chunk·T) memory, fast attention kept) or ``"pattern"`` (from ``hook_pattern``, the
            reference). Both give the same numbers (tested).
    """
    profile, _ = _measure(model, inputs, profile=True, ppl=False, fwd_hooks=fwd_hooks,
                          batch_size=batch_size, max_length=max_length, progress=progress,
                          tau=tau, include_bos_row=include_bos_row, last_layer=last_layer,
                          attention=attention, gu_eps=gu_eps, spike_threshold=spike_threshold,
                          sinks_from=sinks_from)
    return profile


@torch.no_grad()
def _measure(
    model: HookedTransformer,
    inputs: Inputs,
    *,
    profile: bool,
    ppl: bool,
    fwd_hooks: FwdHooks = (),
    batch_size: int = 8,
    max_length: Optional[int] = None,
    progress: bool = False,
    **options: Any,
) -> tuple[Optional[PhaseProfile], Optional["PerplexityResult"]]:
    """One forward per batch giving the phase profile, the perplexity, or both from the same pass."""
    from drope_lens.analysis.perplexity import NLLAccumulator, forward_batch

    unknown = set(options) - set(PROFILE_DEFAULTS)
    if unknown:
        raise TypeError(f"Unknown phase option(s) {sorted(unknown)}; known: {sorted(PROFILE_DEFAULTS)}.")
    opts = {**PROFILE_DEFAULTS, **options}
    if any(str(name).endswith(("hook_pattern", "hook_attn_scores")) for name, _ in fwd_hooks
           if isinstance(name, str)):
        opts["sinks_from"] = "pattern"  # an intervention edits the pattern: read the real one
    _check_options(model, opts["tau"], opts["gu_eps"], opts["last_layer"], opts["attention"], batch_size,
                   opts["sinks_from"])
    t0 = time.perf_counter()
    batch = as_batch(model, inputs, max_length=max_length)
    if bool((batch.lengths < 2).any()):
        raise DropeLensInputError("Every text needs at least one token after BOS (BOS ratio, sink rows, PPL).")
    col = (_Collector(model, len(batch), include_bos_row=opts["include_bos_row"],
                      last_layer=opts["last_layer"], attention=opts["attention"],
                      sinks_from=opts["sinks_from"]) if profile else None)
    acc = NLLAccumulator(len(batch)) if ppl else None
    parts = list(batch.batches(batch_size))
    if progress:
        from tqdm.auto import tqdm

        parts = tqdm(parts, desc=f"phase {getattr(model.cfg, 'position_encoding', '')}", leave=False)
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
        sink_scores_per_text=col.sink, gu_importance_per_text=col.gu,
        bos_norm_per_text=col.bos_norm, bos_ratio_per_text=col.bos_ratio,
        entropy_sq_per_text=col.h_sq, entropy_norm_per_text=col.h_norm,
        anisotropy_per_text=col.aniso, lengths=[int(n) for n in batch.lengths], **opts,
        model=getattr(model.cfg, "model_name", ""),
        position_encoding=str(getattr(model.cfg, "position_encoding", "rope")),
        wall_s=time.perf_counter() - t0,
    )
    return prof, acc.result() if acc else None


# ------------------------------------------------------------------------------------------------
# Interventions (Exp 4) and perplexity per condition
# ------------------------------------------------------------------------------------------------


def condition_hooks(
    model: HookedTransformer,
    condition: str,
    *,
    bos_layer: Optional[int] = None,
    bos_mode: str = "zero",
    bos_mean_vector: Optional[torch.Tensor] = None,
    study_compatible: bool = False,
    qk_kwargs: Optional[dict] = None,
) -> FwdHooks:
    """The hooks of one Exp-4 condition. ``combined`` = BOS-MLP ablation + Q/K mean replacement.

    This is the single place where the two interventions are combined.
    """
    from drope_lens.hooks.bos import bos_mlp_ablation_hooks

    if condition not in CONDITIONS:
        raise DropeLensInputError(f"Unknown condition {condition!r}; choose from {CONDITIONS}.")
    hooks: FwdHooks = []
    if condition in ("bos_mlp", "combined"):
        if bos_layer is None:
            raise DropeLensInputError(f"condition {condition!r} needs bos_layer (the spike layer).")
        hooks += bos_mlp_ablation_hooks(bos_layer, mode=bos_mode, mean_vector=bos_mean_vector,
                                        study_compatible=study_compatible, model=model)
    if condition in ("qk", "combined"):
        from drope_lens.hooks.channels import qk_mean_replacement_hooks  # Q/K mean replacement

        hooks += qk_mean_replacement_hooks(model, **(qk_kwargs or {}))
    return hooks


@dataclass
class ConditionResult:
    name: str
    ppl: Optional[dict] = None  # PerplexityResult.to_dict()
    profile: Optional[PhaseProfile] = None

    def to_dict(self, *, per_text: bool = False) -> dict[str, Any]:
        return {"name": self.name, "ppl": self.ppl,
                "profile": None if self.profile is None else self.profile.to_dict(per_text=per_text)}


@dataclass
class PhaseExperiment:
    """Baseline phase profile + perplexity (and optionally profile) under each condition."""

    baseline: PhaseProfile
    bos_layer: Optional[int]
    spike_rule: str
    bos_mode: str
    conditions: dict[str, ConditionResult] = field(default_factory=dict)
    qk_kwargs: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self, *, per_text: bool = False) -> dict[str, Any]:
        return {
            "baseline": self.baseline.to_dict(per_text=per_text),
            "bos_layer": self.bos_layer, "spike_rule": self.spike_rule, "bos_mode": self.bos_mode,
            "qk_kwargs": self.qk_kwargs, "wall_s": round(self.wall_s, 3),
            "conditions": {k: v.to_dict(per_text=per_text) for k, v in self.conditions.items()},
        }

    def to_dataframe(self):
        """One row per condition: perplexity, its ratio to baseline, and profile headlines if any."""
        import pandas as pd

        base = (self.conditions.get("baseline") or ConditionResult("baseline")).ppl
        rows = []
        for name, res in self.conditions.items():
            row: dict[str, Any] = {"condition": name}
            if res.ppl is not None:
                row.update(ppl=res.ppl.get("ppl"), nll_sum=res.ppl.get("nll_sum"),
                           n_targets=res.ppl.get("n_targets"))
                if base is not None:
                    row["ppl_ratio"] = res.ppl.get("ppl") / base.get("ppl")
            if res.profile is not None:
                s = res.profile.summary()
                row.update(mean_sink_rate=s["mean_sink_rate"], max_bos_ratio=s["max_bos_ratio"],
                           min_entropy_sq=s["min_entropy_sq"])
            rows.append(row)
        return pd.DataFrame(rows)


@torch.no_grad()
def phase_experiment(
    model: HookedTransformer,
    inputs: Inputs,
    *,
    conditions: Sequence[str] = CONDITIONS,
    ppl_texts: Optional[Inputs] = None,
    bos_layer: Optional[int] = None,
    spike_rule: str = "argmax",
    bos_mode: str = "zero",
    study_compatible: bool = False,
    qk_kwargs: Optional[dict] = None,
    profile_conditions: bool = False,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    progress: bool = False,
    **profile_kwargs,
) -> PhaseExperiment:
    """Phase profile + per-condition perplexity (baseline, bos_mlp, qk, combined).

    The BOS-MLP layer is ``bos_layer`` or else the baseline spike layer by ``spike_rule``
    (``"argmax"``, the study's code, by default). ``bos_mode="mean"`` replaces the BOS MLP output by
    the mean MLP output over the non-BOS tokens of ``inputs``. Perplexity is computed on
    ``ppl_texts`` (default: ``inputs``, as the study's Exp 4). ``profile_kwargs`` go to
    :func:`phase_profile` (``tau``, ``include_bos_row``, ``last_layer``, ``attention``, ...).
    """
    from drope_lens.hooks.bos import mlp_out_mean

    t0 = time.perf_counter()
    conditions = (conditions,) if isinstance(conditions, str) else tuple(conditions)
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise DropeLensInputError(f"Unknown condition(s) {unknown}; choose from {CONDITIONS}.")
    if spike_rule not in bos_metrics.SPIKE_RULES:
        raise DropeLensInputError(f"Unknown spike rule {spike_rule!r}; choose one of {bos_metrics.SPIKE_RULES}.")
    kw = dict(batch_size=batch_size, max_length=max_length, progress=progress, **profile_kwargs)
    same_texts = ppl_texts is None  # PPL on the profile's texts: one pass gives both
    want_base_ppl = "baseline" in conditions and same_texts
    baseline, base_ppl = _measure(model, inputs, profile=True, ppl=want_base_ppl, **kw)
    needs_bos = any(c in ("bos_mlp", "combined") for c in conditions)
    if bos_layer is None and needs_bos:
        bos_layer = baseline.spike_layer(spike_rule)
        if bos_layer is None:
            raise DropeLensInputError(f"No spike layer by rule {spike_rule!r} (no layer's BOS ratio exceeds "
                             f"{baseline.spike_threshold}); pass bos_layer explicitly.")
    mean_vec = None
    if needs_bos and bos_mode == "mean":
        mean_vec = mlp_out_mean(model, inputs, bos_layer, batch_size=batch_size, max_length=max_length)
    exp = PhaseExperiment(baseline=baseline, bos_layer=bos_layer, spike_rule=spike_rule,
                          bos_mode=bos_mode, qk_kwargs=dict(qk_kwargs or {}))
    from drope_lens.analysis.perplexity import perplexity

    for cond in conditions:
        if cond == "baseline" and base_ppl is not None:
            exp.conditions[cond] = ConditionResult(cond, ppl=base_ppl.to_dict(), profile=baseline)
            continue
        hooks = condition_hooks(model, cond, bos_layer=bos_layer, bos_mode=bos_mode,
                                bos_mean_vector=mean_vec, study_compatible=study_compatible,
                                qk_kwargs=qk_kwargs)
        want_prof = profile_conditions and cond != "baseline"
        if same_texts:
            prof, ppl = _measure(model, inputs, profile=want_prof, ppl=True, fwd_hooks=hooks, **kw)
        else:
            ppl = perplexity(model, ppl_texts, fwd_hooks=hooks, batch_size=batch_size, max_length=max_length)
            prof = phase_profile(model, inputs, fwd_hooks=hooks, **kw) if want_prof else None
        exp.conditions[cond] = ConditionResult(cond, ppl=ppl.to_dict(),
                                               profile=baseline if cond == "baseline" else prof)
    exp.wall_s = time.perf_counter() - t0
    return exp
