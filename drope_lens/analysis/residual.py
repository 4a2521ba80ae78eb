"""Massive activations in the residual stream (Sun et al. 2024, "Massive Activations in LLMs").

Per text and layer ``l`` (``blocks.l.hook_resid_post``, the residual after block ``l``), over the
text's real tokens only (never padding):

* the top-k entries of ``|h[t, c]|`` with their position ``t``, token string and channel ``c``;
* the layer's **median** ``|h|`` over all real ``(t, c)`` entries (the true median: the mean of the
  two middle values for an even count);
* ``ratio = value / median``; how many entries exceed ``100×`` and ``1000×`` the median
  (``ratios``); whether an entry sits at BOS (position 0) or at the text's first delimiter token
  (by default the first ``.`` or newline after BOS; Sun et al. found them at the start token and the
  first period / newline).

Everything is reduced inside the hooks (one layer's ``[T, d_model]`` at a time; no cache).
:func:`massive_activation_hooks` sets massive entries to zero or to their mean over texts (Sun's
"set to zero / set to mean" intervention) and :func:`residual_intervention` measures perplexity
under both; :func:`compare_residual_massive` lines up the two models of a pair.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from drope_lens.analysis.perplexity import PerplexityResult, perplexity
from drope_lens.errors import NonFiniteError
from drope_lens.hooks.mask import current_real_mask
from drope_lens.hooks.types import FwdHook, FwdHooks
from drope_lens.loading.forward import hooked_passes, model_label, to_batch
from drope_lens.options import DEFAULT_BATCH_SIZE
from drope_lens.validation import check_batch_size

DEFAULT_RATIOS = (100.0, 1000.0)
DEFAULT_DELIMITERS = (".", "\n")
INTERVENTION_MODES = ("zero", "mean")


def true_median(x: torch.Tensor) -> torch.Tensor:
    """Median of all entries of ``x`` (mean of the two middle values for an even count), float64."""
    flat = x.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("median of an empty tensor")
    lo = flat.kthvalue((n + 1) // 2).values
    hi = flat.kthvalue(n // 2 + 1).values
    return (lo.double() + hi.double()) / 2


def is_delimiter(token: str, delimiters: Sequence[str] = DEFAULT_DELIMITERS) -> bool:
    """``token`` (decoded) is a delimiter: stripped of spaces it equals one, or is only newlines."""
    t = token.strip(" ")
    if t in delimiters:
        return True
    return "\n" in delimiters and bool(t) and set(t) <= {"\n"}


def first_delimiter(tokens: Sequence[str], delimiters: Sequence[str] = DEFAULT_DELIMITERS) -> int:
    """Position of the first delimiter after BOS (position ≥ 1), or -1 if none."""
    for pos, tok in enumerate(tokens):
        if pos >= 1 and is_delimiter(tok, delimiters):
            return pos
    return -1


def layer_entries(
    resid: Float[torch.Tensor, "pos d_model"], top_k: int, ratios: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One text's one layer (real rows only): ``(abs_values, signed, flat_index, median, counts)``."""
    a = resid.float().abs()
    if not bool(torch.isfinite(a).all()):
        raise NonFiniteError("residual stream contains NaN/inf")
    flat = a.reshape(-1)
    k = min(top_k, flat.numel())
    top = flat.topk(k)
    med = true_median(flat)
    counts = torch.stack([(flat.double() > r * med).sum() for r in ratios]) if ratios else torch.zeros(0)
    signed = resid.reshape(-1)[top.indices].float()
    return top.values, signed, top.indices, med, counts


@dataclass
class ResidualMassive:
    """Top-k residual entries per text and layer (see the module docstring)."""

    model: str
    top_k: int
    ratios: tuple[float, ...]
    value: Float[np.ndarray, "text layer k"]  # |h| of each entry
    signed: Float[np.ndarray, "text layer k"]  # h of each entry
    position: Int[np.ndarray, "text layer k"]
    channel: Int[np.ndarray, "text layer k"]
    median: Float[np.ndarray, "text layer"]
    n_over: Int[np.ndarray, "text layer ratio"]  # entries with |h| > ratio × median
    token: list[list[list[str]]]  # token string of each entry [text][layer][rank]
    lengths: list[int]
    first_delimiter: list[int]  # per text, -1 if none
    delimiters: tuple[str, ...] = DEFAULT_DELIMITERS
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_texts(self) -> int:
        return self.value.shape[0]

    @property
    def n_layers(self) -> int:
        return self.value.shape[1]

    @property
    def ratio(self) -> Float[np.ndarray, "text layer k"]:
        return self.value / self.median[..., None]

    @property
    def at_bos(self) -> Bool[np.ndarray, "text layer k"]:
        return self.position == 0

    @property
    def at_first_delimiter(self) -> Bool[np.ndarray, "text layer k"]:
        fd = np.asarray(self.first_delimiter)[:, None, None]
        return (self.position == fd) & (fd >= 0)

    def layer_stats(self) -> dict[str, np.ndarray]:
        """Per layer, over texts: mean top-1 |h|, median, ratio; share of texts with top-1 at BOS."""
        return {
            "top1_mean": self.value[:, :, 0].mean(0),
            "top1_max": self.value[:, :, 0].max(0),
            "median_mean": self.median.mean(0),
            "ratio_mean": self.ratio[:, :, 0].mean(0),
            "top1_at_bos": self.at_bos[:, :, 0].mean(0),
            "top1_at_first_delimiter": self.at_first_delimiter[:, :, 0].mean(0),
            **{f"n_over_{r:g}_mean": self.n_over[:, :, i].mean(0) for i, r in enumerate(self.ratios)},
        }

    def top1_channel(self) -> list[int]:
        """Per layer: the most frequent channel of the top-1 entry over texts."""
        return [Counter(self.channel[:, li, 0].tolist()).most_common(1)[0][0] for li in range(self.n_layers)]

    def massive_layers(self, ratio: float = 100.0, share: float = 0.5) -> list[int]:
        """Layers whose top-1 entry exceeds ``ratio × median`` in at least ``share`` of the texts."""
        hit = (self.ratio[:, :, 0] > ratio).mean(0)
        return [layer for layer in range(self.n_layers) if hit[layer] >= share]

    def massive_channels(self, layer: int, ratio: float = 100.0) -> list[int]:
        """Channels of the top-k entries above ``ratio × median`` at ``layer`` (any text), sorted."""
        sel = self.ratio[:, layer] > ratio
        return sorted(set(self.channel[:, layer][sel].tolist()))

    def summary(self, ratio: float = 100.0) -> dict[str, Any]:
        layers = self.massive_layers(ratio)
        i = int(np.argmax(self.value[:, :, 0].mean(0)))
        st = self.layer_stats()
        return {
            "model": self.model,
            "massive_layers": layers,
            "first_massive_layer": layers[0] if layers else None,
            "peak_layer": i,
            "peak_top1_mean": float(st["top1_mean"][i]),
            "peak_median_mean": float(st["median_mean"][i]),
            "peak_ratio_mean": float(st["ratio_mean"][i]),
            "peak_channel": self.top1_channel()[i],
            "peak_top1_at_bos": float(st["top1_at_bos"][i]),
            "peak_top1_at_first_delimiter": float(st["top1_at_first_delimiter"][i]),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "top_k": self.top_k,
            "ratios": list(self.ratios),
            "value": self.value.tolist(),
            "signed": self.signed.tolist(),
            "position": self.position.tolist(),
            "channel": self.channel.tolist(),
            "median": self.median.tolist(),
            "n_over": self.n_over.tolist(),
            "token": self.token,
            "lengths": self.lengths,
            "first_delimiter": self.first_delimiter,
            "delimiters": list(self.delimiters),
            "options": self.options,
            "layer_stats": {k: v.tolist() for k, v in self.layer_stats().items()},
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ResidualMassive":
        return cls(
            model=d["model"],
            top_k=int(d["top_k"]),
            ratios=tuple(d["ratios"]),
            value=np.asarray(d["value"], dtype=float),
            signed=np.asarray(d["signed"], dtype=float),
            position=np.asarray(d["position"], dtype=int),
            channel=np.asarray(d["channel"], dtype=int),
            median=np.asarray(d["median"], dtype=float),
            n_over=np.asarray(d["n_over"], dtype=int).reshape(len(d["value"]), -1, len(d["ratios"])),
            token=d["token"],
            lengths=list(d["lengths"]),
            first_delimiter=list(d["first_delimiter"]),
            delimiters=tuple(d.get("delimiters", DEFAULT_DELIMITERS)),
            options=d.get("options", {}),
        )

    def to_dataframe(self):
        """One row per (text, layer, rank)."""
        import pandas as pd

        T, L, K = self.value.shape
        t, li, k = np.meshgrid(np.arange(T), np.arange(L), np.arange(K), indexing="ij")
        ratio = self.ratio
        df = pd.DataFrame(
            {
                "text": t.ravel(),
                "layer": li.ravel(),
                "rank": k.ravel(),
                "value": self.value.ravel(),
                "signed": self.signed.ravel(),
                "position": self.position.ravel(),
                "channel": self.channel.ravel(),
                "token": [self.token[a][b][c] for a, b, c in zip(t.ravel(), li.ravel(), k.ravel(), strict=True)],
                "median": np.repeat(self.median.ravel(), K),
                "ratio": ratio.ravel(),
                "at_bos": self.at_bos.ravel(),
                "at_first_delimiter": self.at_first_delimiter.ravel(),
            }
        )
        df.insert(0, "model", self.model)
        return df

    def layer_dataframe(self):
        """One row per (text, layer): median, top-1, ratio and the counts above each ratio."""
        import pandas as pd

        rows = []
        for t in range(self.n_texts):
            for li in range(self.n_layers):
                row = {
                    "model": self.model,
                    "text": t,
                    "layer": li,
                    "median": self.median[t, li],
                    "top1": self.value[t, li, 0],
                    "ratio": self.ratio[t, li, 0],
                    "top1_position": int(self.position[t, li, 0]),
                    "top1_channel": int(self.channel[t, li, 0]),
                }
                for i, r in enumerate(self.ratios):
                    row[f"n_over_{r:g}"] = int(self.n_over[t, li, i])
                rows.append(row)
        return pd.DataFrame(rows)


def _check(model, top_k: int, ratios: Sequence[float], batch_size: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if any(not float(r) > 0 for r in ratios):
        raise ValueError(f"ratios must be > 0, got {list(ratios)}")
    check_batch_size(batch_size)


@torch.no_grad()
def residual_massive_activations(
    model,
    inputs,
    *,
    top_k: int = 5,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    delimiters: Sequence[str] = DEFAULT_DELIMITERS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    fwd_hooks: Sequence[FwdHook] = (),
    progress: bool = False,
) -> ResidualMassive:
    """Top-``top_k`` ``|resid_post|`` entries per text and layer, with the layer median (Sun et al.).

    Args:
        inputs: texts, a :class:`~drope_lens.loading.tokens.TokenBatch` or an unpadded id tensor.
        ratios: thresholds (× the layer median) whose exceedances are counted.
        delimiters: token strings counted as delimiters for ``at_first_delimiter``.
        fwd_hooks: interventions active during the pass (e.g. :func:`massive_activation_hooks`).
    """
    _check(model, top_k, ratios, batch_size)
    ratios = tuple(float(r) for r in ratios)
    batch = to_batch(model, inputs, max_length=max_length)
    n, L, K = len(batch), model.cfg.n_layers, top_k
    value = np.full((n, L, K), np.nan)
    signed = np.full((n, L, K), np.nan)
    position = np.full((n, L, K), -1, dtype=int)
    channel = np.full((n, L, K), -1, dtype=int)
    median = np.full((n, L), np.nan)
    n_over = np.zeros((n, L, len(ratios)), dtype=int)
    lengths = batch.lengths.tolist()
    tok = model.tokenizer
    token_str = [[tok.decode([int(i)]) for i in batch.tokens[r, : lengths[r]].tolist()] for r in range(n)]
    first_delim = [first_delimiter(s, delimiters) for s in token_str]
    state: dict[str, Any] = {}

    def collect(resid: torch.Tensor, hook) -> None:
        layer = hook.layer()
        d = resid.shape[-1]
        for row, text in enumerate(state["idx"]):
            m = lengths[text]
            vals, sgn, flat, med, counts = layer_entries(resid[row, :m], K, ratios)
            k = vals.numel()
            value[text, layer, :k] = vals.cpu().numpy()
            signed[text, layer, :k] = sgn.cpu().numpy()
            position[text, layer, :k] = (flat // d).cpu().numpy()
            channel[text, layer, :k] = (flat % d).cpu().numpy()
            median[text, layer] = float(med)
            n_over[text, layer] = counts.cpu().numpy()

    hooks = list(fwd_hooks) + [(f"blocks.{li}.hook_resid_post", collect) for li in range(L)]
    hooked_passes(model, batch, hooks, state, batch_size=batch_size, desc="residual", progress=progress)
    token = [[[token_str[t][p] if p >= 0 else "" for p in position[t, li]] for li in range(L)] for t in range(n)]
    return ResidualMassive(
        model=model_label(model),
        top_k=K,
        ratios=ratios,
        value=value,
        signed=signed,
        position=position,
        channel=channel,
        median=median,
        n_over=n_over,
        token=token,
        lengths=lengths,
        first_delimiter=first_delim,
        delimiters=tuple(delimiters),
        options={"top_k": K, "ratios": list(ratios), "max_length": max_length, "hook": "hook_resid_post"},
    )


# --------------------------------------------------------------------------------------- interventions
def massive_activation_hooks(
    result: ResidualMassive,
    *,
    mode: str = "zero",
    layer: Optional[int] = None,
    ratio: float = 1000.0,
) -> FwdHooks:
    """Sun et al.'s intervention on ``blocks.{layer}.hook_resid_post``.

    ``layer`` defaults to the first layer of ``result`` whose top-1 entry exceeds ``ratio ×`` the
    median in at least half the texts (where they appear; later layers carry them on the residual
    stream). The default ``ratio = 1000`` is Sun et al.'s "about 10,000× / ≥ 1000×" scale. The targeted
    channels are those of ``result``'s top entries above ``ratio × median`` at that layer. In each pass,
    every real entry of a targeted channel with ``|h| > ratio ×`` its row's median ``|h|`` (real tokens) is
    set to 0 (``mode="zero"``) or to the mean of that channel's massive entries over ``result``'s texts
    (``mode="mean"``, signed).
    """
    if mode not in INTERVENTION_MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of {INTERVENTION_MODES}.")
    if layer is None:
        layers = result.massive_layers(ratio)
        if not layers:
            raise ValueError(
                f"{result.model}: no layer has a top-1 entry above {ratio:g}× the median; "
                "nothing to intervene on (pass layer= explicitly or lower ratio)."
            )
        layer = layers[0]
    if not 0 <= layer < result.n_layers:
        raise ValueError(f"layer {layer} out of range 0…{result.n_layers - 1}")
    sel = result.ratio[:, layer] > ratio
    chans = sorted(set(result.channel[:, layer][sel].tolist()))
    if not chans:
        raise ValueError(f"{result.model}: no entry above {ratio:g}× the median at layer {layer}.")
    means = {c: float(result.signed[:, layer][sel & (result.channel[:, layer] == c)].mean()) for c in chans}
    chan_t = torch.tensor(chans)
    mean_t = torch.tensor([means[c] for c in chans])

    def fn(x: torch.Tensor, hook) -> torch.Tensor:
        real = current_real_mask(x)
        ci = chan_t.to(x.device)
        out = x.clone()
        for row in range(x.shape[0]):
            r = real[row]
            med = true_median(x[row][r].float().abs())
            sub = x[row][:, ci].float()  # [pos, n_chan]
            hit = (sub.abs() > ratio * med) & r[:, None]
            repl = torch.zeros_like(sub) if mode == "zero" else mean_t.to(sub)[None].expand_as(sub)
            out[row][:, ci] = torch.where(hit, repl, sub).to(x.dtype)
        return out

    fn.channels, fn.layer, fn.means = chans, layer, means  # type: ignore[attr-defined]  # for inspection
    return [(f"blocks.{layer}.hook_resid_post", fn)]


@dataclass
class ResidualIntervention:
    """Perplexity with the massive activations set to zero / to their mean (Sun et al.)."""

    model: str
    layer: int
    channels: list[int]
    means: dict[int, float]
    ratio: float
    ppl: dict[str, PerplexityResult]  # baseline, zero, mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "channels": self.channels,
            "means": {str(k): v for k, v in self.means.items()},
            "ratio": self.ratio,
            "ppl": {k: v.to_dict() for k, v in self.ppl.items()},
        }

    def to_dataframe(self):
        import pandas as pd

        base = self.ppl["baseline"].ppl
        return pd.DataFrame(
            [
                {
                    "model": self.model,
                    "condition": k,
                    "layer": self.layer,
                    "ppl": v.ppl,
                    "ratio_to_baseline": v.ppl / base,
                }
                for k, v in self.ppl.items()
            ]
        )


def residual_intervention(
    model,
    inputs,
    result: ResidualMassive,
    *,
    layer: Optional[int] = None,
    ratio: float = 1000.0,
    baseline: Optional[PerplexityResult] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
) -> ResidualIntervention:
    """Perplexity on ``inputs``: baseline, massive activations set to zero, set to their mean."""
    hooks = {m: massive_activation_hooks(result, mode=m, layer=layer, ratio=ratio) for m in INTERVENTION_MODES}
    fn = hooks["zero"][0][1]
    ppl = {"baseline": baseline or perplexity(model, inputs, batch_size=batch_size, max_length=max_length)}
    for m, h in hooks.items():
        ppl[m] = perplexity(model, inputs, fwd_hooks=h, batch_size=batch_size, max_length=max_length)
    return ResidualIntervention(
        model=result.model,
        layer=fn.layer,  # type: ignore[attr-defined]
        channels=fn.channels,  # type: ignore[attr-defined]
        means=fn.means,  # type: ignore[attr-defined]
        ratio=ratio,
        ppl=ppl,
    )


# --------------------------------------------------------------------------------------- pair
@dataclass
class ResidualComparison:
    """Two models' residual massive activations side by side (same layers? same channels?)."""

    models: tuple[str, str]
    ratio: float
    massive_layers: tuple[list[int], list[int]]
    top1_channel: tuple[list[int], list[int]]
    top1_mean: tuple[list[float], list[float]]
    ratio_mean: tuple[list[float], list[float]]

    @property
    def shared_layers(self) -> list[int]:
        return sorted(set(self.massive_layers[0]) & set(self.massive_layers[1]))

    @property
    def layer_jaccard(self) -> float:
        a, b = set(self.massive_layers[0]), set(self.massive_layers[1])
        return len(a & b) / len(a | b) if a | b else float("nan")

    @property
    def same_channel_layers(self) -> list[int]:
        """Massive layers of both models whose most frequent top-1 channel is the same."""
        return [layer for layer in self.shared_layers if self.top1_channel[0][layer] == self.top1_channel[1][layer]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "ratio": self.ratio,
            "massive_layers": [list(x) for x in self.massive_layers],
            "top1_channel": [list(x) for x in self.top1_channel],
            "top1_mean": [list(x) for x in self.top1_mean],
            "ratio_mean": [list(x) for x in self.ratio_mean],
            "shared_layers": self.shared_layers,
            "layer_jaccard": self.layer_jaccard,
            "same_channel_layers": self.same_channel_layers,
        }

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for li in range(len(self.top1_channel[0])):
            row: dict[str, Any] = {"layer": li}
            for i, tag in enumerate(("a", "b")):
                row.update(
                    {
                        f"massive_{tag}": li in self.massive_layers[i],
                        f"channel_{tag}": self.top1_channel[i][li],
                        f"top1_{tag}": self.top1_mean[i][li],
                        f"ratio_{tag}": self.ratio_mean[i][li],
                    }
                )
            row["same_channel"] = row["channel_a"] == row["channel_b"]
            rows.append(row)
        return pd.DataFrame(rows)


def compare_residual_massive(a: ResidualMassive, b: ResidualMassive, *, ratio: float = 100.0) -> ResidualComparison:
    if a.n_layers != b.n_layers:
        raise ValueError(f"Layer counts differ ({a.n_layers} vs {b.n_layers}); compare a model with its twin.")
    sa, sb = a.layer_stats(), b.layer_stats()
    return ResidualComparison(
        models=(a.model, b.model),
        ratio=ratio,
        massive_layers=(a.massive_layers(ratio), b.massive_layers(ratio)),
        top1_channel=(a.top1_channel(), b.top1_channel()),
        top1_mean=(sa["top1_mean"].tolist(), sb["top1_mean"].tolist()),
        ratio_mean=(sa["ratio_mean"].tolist(), sb["ratio_mean"].tolist()),
    )
