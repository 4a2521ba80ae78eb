"""Massive values in Q/K/V (the study's Exp 1, Jin et al.'s criterion), computed by streaming.

Definition (study, ``src/massive_values/analysis.py``), per text, layer and tensor X in {Q, K, V}:

    M[h, d] = sqrt( sum_t X[t, h, d]^2 )        (L2 over the text's real tokens, BOS included)
    massive  = M > threshold * mean(M)          (strict; threshold "lambda" = 5 by default)

``scope="layer"`` (the study) takes the mean over the layer's whole ``[heads x d_head]`` matrix,
``scope="head"`` over each head's ``d_head`` entries. The study divided M by sqrt(T), which cancels in
the test and is not done here. K and V have the KV-head count (GQA). ``rotary="pre"`` reads
``hook_q/k/v`` (the study's ``q_proj/k_proj/v_proj`` outputs); ``"post"`` reads ``hook_rot_q/k``
(Jin's choice; V is never rotated and is read from ``hook_v``). For NoPE twins both coincide.

Only per-text sums of squares ``[texts, layers, heads, d_head]`` are kept: each hook reduces its
activation over the real tokens of its batch (right padding excluded through the batch mask) and the
forward stops before the unembedding. No activation cache is built.

Reported like the study: per-text counts, then mean and population std (ddof=0) over texts; per
layer, the mean count over texts. Channel sets for interventions come from :meth:`MassiveValues.selection`:
``"mean_norm"`` (the study's Exp 2: threshold the mean of the per-text M), ``"pooled"`` (M over all
tokens of all texts) or ``"union"`` (massive in any text).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from jaxtyping import Bool, Float, Int

from drope_lens.analysis.rotary import RotaryBand, rotary_bands
from drope_lens.errors import DropeLensInputError
from drope_lens.hooks.points import check_tensors, hook_name, n_heads_of
from drope_lens.hooks.selection import ChannelSelection
from drope_lens.loading.forward import forward_batch, model_label, to_batch
from drope_lens.options import AGGREGATES, DEFAULT_BATCH_SIZE, SCOPES, MassiveOptions  # noqa: F401  (re-exported)
from drope_lens.validation import check_choice, check_threshold  # noqa: F401  (re-exported)


def massive_mask(
    norms: Float[torch.Tensor, "... head d_head"], threshold: float, scope: str = "layer"
) -> Bool[torch.Tensor, "... head d_head"]:
    """``norms > threshold * mean``, the mean over (head, d_head) or, for ``scope='head'``, over d_head."""
    check_choice("scope", scope, SCOPES)
    dims = (-2, -1) if scope == "layer" else (-1,)
    return norms > threshold * norms.mean(dim=dims, keepdim=True)


def gini(x: Float[torch.Tensor, "... n"]) -> Float[torch.Tensor, "..."]:
    """Gini coefficient of non-negative values along the last axis (0 = equal, -> 1 = concentrated)."""
    wide = torch.float32 if x.device.type == "mps" else torch.float64  # no float64 on MPS
    x = x.to(wide).sort(dim=-1).values
    n = x.shape[-1]
    i = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    total = x.sum(-1)
    g = (2 * (i * x).sum(-1)) / (n * total) - (n + 1) / n
    return torch.where(total > 0, g, torch.zeros_like(g))


def top_share(x: Float[torch.Tensor, "... n"], frac: float = 0.01) -> Float[torch.Tensor, "..."]:
    """Share of ``sum(x)`` held by the top ``ceil(frac * n)`` entries (the study's top-1% mass ratio)."""
    k = max(1, math.ceil(frac * x.shape[-1]))
    x = x.double()
    total = x.sum(-1)
    return torch.where(total > 0, x.topk(k, dim=-1).values.sum(-1) / total, torch.zeros_like(total))


@dataclass
class MassiveValues:
    """Result of :func:`detect_massive`. Tensors are on CPU; ``sumsq[t]`` is ``[text, layer, head, d_head]``."""

    sumsq: dict[str, Float[torch.Tensor, "text layer head d_head"]]
    lengths: Int[torch.Tensor, " text"]
    threshold: float
    scope: str
    rotary: str
    model_label: str
    position_encoding: str
    bands: Optional[list[RotaryBand]] = None
    context_length: Optional[int] = None
    top: int = 20
    top_frac: float = 0.01
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # -- basic views ---------------------------------------------------------------------------
    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(self.sumsq)

    @property
    def n_texts(self) -> int:
        return int(self.lengths.numel())

    @property
    def n_layers(self) -> int:
        return next(iter(self.sumsq.values())).shape[1]

    def norms(self, tensor: str) -> Float[torch.Tensor, "text layer head d_head"]:
        """M per text: L2 over real tokens of each channel."""
        return self.sumsq[tensor].sqrt()

    def masks(self, tensor: str) -> Bool[torch.Tensor, "text layer head d_head"]:
        """Massive channels per text."""
        # keyed by everything the mask depends on, so changing threshold/scope never returns a stale mask
        key = ("mask", tensor, float(self.threshold), self.scope, id(self.sumsq[tensor]))
        if key not in self._cache:
            self._cache[key] = massive_mask(self.norms(tensor), self.threshold, self.scope)
        return self._cache[key]

    def counts(self, tensor: str) -> Int[torch.Tensor, "text layer"]:
        return self.masks(tensor).flatten(2).sum(-1)

    def totals(self, tensor: str) -> Int[torch.Tensor, " text"]:
        return self.counts(tensor).sum(-1)

    def total_mean(self, tensor: str) -> float:
        return float(self.totals(tensor).double().mean())

    def total_std(self, tensor: str) -> float:
        """Population std over texts (ddof=0, like the study)."""
        return float(self.totals(tensor).double().std(unbiased=False)) if self.n_texts > 1 else 0.0

    def per_layer_mean(self, tensor: str) -> Float[torch.Tensor, " layer"]:
        return self.counts(tensor).double().mean(0)

    def per_layer_std(self, tensor: str) -> Float[torch.Tensor, " layer"]:
        return self.counts(tensor).double().std(0, unbiased=False) if self.n_texts > 1 else torch.zeros(self.n_layers)

    def subset(self, indices: Sequence[int]) -> "MassiveValues":
        """The same measurement restricted to some texts (``indices`` into the input order)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        if idx.numel() == 0:
            raise DropeLensInputError("subset needs at least one text index.")
        return dataclasses.replace(
            self, sumsq={t: v[idx] for t, v in self.sumsq.items()}, lengths=self.lengths[idx], _cache={}
        )

    # -- channel sets ----------------------------------------------------------------------------
    def aggregate_mask(self, tensor: str, how: str = "mean_norm") -> Bool[torch.Tensor, "layer head d_head"]:
        """One channel set over all texts (see module docstring for ``how``)."""
        check_choice("aggregate", how, AGGREGATES)
        if how == "union":
            return self.masks(tensor).any(0)
        if how == "pooled":
            return massive_mask(self.sumsq[tensor].sum(0).sqrt(), self.threshold, self.scope)
        return massive_mask(self.norms(tensor).mean(0), self.threshold, self.scope)

    def selection(self, how: str = "mean_norm", tensors: Optional[Sequence[str]] = None) -> ChannelSelection:
        """A :class:`~drope_lens.hooks.selection.ChannelSelection` for zeroing / random controls."""
        tensors = check_tensors(tensors) if tensors is not None else self.tensors
        missing = [t for t in tensors if t not in self.sumsq]
        if missing:
            raise DropeLensInputError(f"Tensors {missing} were not measured; detect with tensors including them.")
        return ChannelSelection(
            {t: self.aggregate_mask(t, how) for t in tensors},
            rotary=self.rotary,
            label="massive",
            meta={"aggregate": how, "threshold": self.threshold, "scope": self.scope},
        )

    # -- concentration, top channels, bands ----------------------------------------------------
    def concentration(self, tensor: str) -> dict[str, Float[torch.Tensor, "text layer"]]:
        """Gini of the layer's flattened M and share of sum(M) in its top ``top_frac`` channels."""
        flat = self.norms(tensor).flatten(2)
        return {"gini": gini(flat), "top_share": top_share(flat, self.top_frac)}

    def band_of(self, dim: int) -> Optional[RotaryBand]:
        return None if self.bands is None else self.bands[dim]

    def top_channels(self, tensor: str, n: Optional[int] = None) -> list[dict]:
        """The ``n`` channels with the largest text-mean M relative to their layer's mean."""
        n = self.top if n is None else n
        mean_m = self.norms(tensor).mean(0)  # [layer, head, d]
        ratio = mean_m / mean_m.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
        frac = self.masks(tensor).double().mean(0)
        flat = ratio.flatten()
        order = flat.argsort(descending=True)[:n]
        _, H, D = ratio.shape
        out = []
        for i in order.tolist():
            layer, head, dim = i // (H * D), (i // D) % H, i % D
            band = self.band_of(dim)
            out.append(
                {
                    "tensor": tensor,
                    "layer": layer,
                    "head": head,
                    "dim": dim,
                    "norm": float(mean_m[layer, head, dim]),
                    "ratio_to_layer_mean": float(flat[i]),
                    "massive_fraction_of_texts": float(frac[layer, head, dim]),
                    "frequency": None if band is None else band.frequency,
                    "wavelength": None if band is None else band.wavelength,
                    "band": None if band is None else band.band,
                }
            )
        return out

    def band_counts(self, tensor: str) -> Optional[dict[str, float]]:
        """Mean number of massive channels per text in each rotary band (None for NoPE)."""
        if self.bands is None:
            return None
        labels = [b.band for b in self.bands]
        per_dim = self.masks(tensor).double().sum(dim=(2,)).sum(1).mean(0)  # [d_head]
        out: dict[str, float] = {}
        for d, lab in enumerate(labels):
            out[lab] = out.get(lab, 0.0) + float(per_dim[d])
        return out

    # -- export -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "model": self.model_label,
            "position_encoding": self.position_encoding,
            "threshold": self.threshold,
            "scope": self.scope,
            "rotary": self.rotary,
            "n_texts": self.n_texts,
            "text_lengths": self.lengths.tolist(),
            "n_layers": self.n_layers,
            "context_length_for_bands": self.context_length,
            "tensors": {},
        }
        for t in self.tensors:
            conc = self.concentration(t)
            out["tensors"][t] = {
                "heads": int(self.sumsq[t].shape[2]),
                "d_head": int(self.sumsq[t].shape[3]),
                "total_mean": self.total_mean(t),
                "total_std": self.total_std(t),
                "totals_per_text": self.totals(t).tolist(),
                "per_layer_mean": self.per_layer_mean(t).tolist(),
                "per_layer_std": self.per_layer_std(t).tolist(),
                "counts_per_text": self.counts(t).tolist(),
                "gini_per_layer": conc["gini"].mean(0).tolist(),
                "top_share_per_layer": conc["top_share"].mean(0).tolist(),
                "top_channels": self.top_channels(t),
                "band_counts": self.band_counts(t),
            }
        return out

    def to_dataframe(self):
        """One row per (tensor, layer): mean/std count over texts, Gini, top share."""
        import pandas as pd

        rows = []
        for t in self.tensors:
            conc = self.concentration(t)
            mean, std = self.per_layer_mean(t), self.per_layer_std(t)
            for layer in range(self.n_layers):
                rows.append(
                    {
                        "model": self.model_label,
                        "tensor": t,
                        "layer": layer,
                        "count_mean": float(mean[layer]),
                        "count_std": float(std[layer]),
                        "gini": float(conc["gini"][:, layer].mean()),
                        "top_share": float(conc["top_share"][:, layer].mean()),
                    }
                )
        return pd.DataFrame(rows)

    def summary(self) -> str:
        lines = [
            f"{self.model_label}: massive values (lambda={self.threshold:g}, scope={self.scope}, "
            f"{self.rotary}-RoPE), {self.n_texts} texts"
        ]
        for t in self.tensors:
            line = f"  {t.upper()}: {self.total_mean(t):.1f} ± {self.total_std(t):.1f} per text"
            bc = self.band_counts(t)
            if bc:
                line += "  bands: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(bc.items()))
            lines.append(line)
        return "\n".join(lines)


@torch.no_grad()
def detect_massive(
    model,
    inputs,
    options: Optional[MassiveOptions] = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    progress: bool = False,
    **overrides,
) -> MassiveValues:
    """Massive Q/K/V channels of ``model`` on ``inputs`` (texts or a TokenBatch), per text.

    ``options`` (:class:`~drope_lens.options.MassiveOptions`: λ ``threshold``, ``scope``,
    ``rotary``, ``tensors``, ``top``, ``context_length``); keyword arguments override its fields.
    One forward per batch of texts (no unembedding); hooks only accumulate per-channel sums of
    squares over real tokens. ``context_length`` sets the reference for rotary bands (default
    ``n_ctx``). See the module docstring for the definition and the study's conventions.
    """
    o = MassiveOptions.resolve(options, overrides)
    threshold, scope, rotary, tensors, top, context_length = (
        o.threshold,
        o.scope,
        o.rotary,
        o.tensors,
        o.top,
        o.context_length,
    )
    batch = to_batch(model, inputs, max_length=max_length)
    cfg = model.cfg
    n = len(batch)
    sumsq: dict[str, torch.Tensor] = {
        t: torch.zeros(n, cfg.n_layers, n_heads_of(model, t), cfg.d_head, dtype=torch.float64) for t in tensors
    }
    current: dict = {}

    def make_hook(layer: int, t: str):
        # L2 over positions as one fp32 reduction (no squared or upcast copy of the activation);
        # padded rows are reduced over their real tokens only.
        def hook(x, hook=None):
            if current["lengths"] is None:
                norm = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32)
            else:
                norm = torch.stack(
                    [
                        torch.linalg.vector_norm(x[i, :n], dim=0, dtype=torch.float32)
                        for i, n in enumerate(current["lengths"])
                    ]
                )
            current["out"][t][layer] = norm.square()
            return None

        return hook

    hooks = [(hook_name(li, t, rotary), make_hook(li, t)) for li in range(cfg.n_layers) for t in tensors]
    from drope_lens.progress import progress_bar

    parts = list(batch.batches(batch_size))
    for idx, sub in progress_bar(parts, what="massive values", model=model, enabled=progress):
        padded = not bool(sub.mask.all())
        current.update(
            lengths=sub.lengths.tolist() if padded else None, out={t: [None] * cfg.n_layers for t in tensors}
        )
        with model.hooks(fwd_hooks=hooks):
            forward_batch(model, sub, return_type=None)
        for t in tensors:
            # one tensor per layer, each on its layer's device (device maps, n_devices): gathered on the CPU
            sumsq[t][idx] = torch.stack([o.double().cpu() for o in current["out"][t]], dim=1)
    current.clear()
    context = int(context_length or cfg.n_ctx)
    return MassiveValues(
        sumsq=sumsq,
        lengths=batch.lengths.clone().cpu(),
        threshold=threshold,
        scope=scope,
        rotary=rotary,
        model_label=model_label(model),
        position_encoding=getattr(cfg, "position_encoding", "rope"),
        bands=rotary_bands(model, context_length=context),
        context_length=context,
        top=top,
    )
