"""Matplotlib figures of the study's results, from plain numbers.

Every function takes dicts/arrays keyed by model label (e.g. ``pair.labels["rope"]``) and returns a
``matplotlib.figure.Figure`` built without pyplot (no display, no global state, works headless);
notebooks show it, :func:`save_figure` writes it, :func:`drope_lens.views.to_offline_html` embeds it.
Long labels are shortened for legends by :func:`short_label`.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from jaxtyping import Float
from matplotlib.figure import Figure

__all__ = [
    "short_label",
    "save_figure",
    "plot_qkv_totals",
    "plot_layer_counts",
    "plot_disruption_ppl",
    "plot_mr",
    "plot_task_degradation",
    "plot_layer_metric",
    "plot_interventions",
    "plot_sink_heatmap",
]

#: Model colours in label order (RoPE first, then its NoPE/DroPE twin, then any others).
MODEL_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f")
CONDITION_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def short_label(label: str, *, max_len: int = 42) -> str:
    """A legend-sized model label.

    ``"SmolLM2-135M-Instruct (RoPE, theta=100000)"`` -> ``"SmolLM2-135M-Instruct (RoPE)"``;
    ``"… (zero-shot NoPE (RoPE removed, not recalibrated))"`` -> ``"… (zero-shot NoPE)"``;
    ``"org/Model (DroPE checkpoint (RoPE removed, recalibrated))"`` -> ``"Model (DroPE)"``;
    ``"… (RoPE removed, recalibrated on 122,880 tokens; recipe)"`` ->
    ``"… (RoPE removed, recalibrated on 122,880 tokens)"`` (the recipe goes; this label is never cut).
    """
    s = str(label)
    s = re.sub(r",\s*theta\s*=\s*[^,()]*", "", s)
    prev = None
    while prev != s:  # drop parentheses nested inside parentheses
        prev = s
        s = re.sub(r"(\([^()]*?)\s*\([^()]*\)", r"\1", s)
    s = s.replace("DroPE checkpoint", "DroPE")
    recal = re.compile(r"\(RoPE removed, recalibrated on ([\d,]+) tokens[^()]*\)")
    keep = bool(recal.search(s))
    s = recal.sub(r"(RoPE removed, recalibrated on \1 tokens)", s)
    s = re.sub(r"^[^\s()]*/", "", s)  # hub org or folder path before the model name
    s = re.sub(r"\s+", " ", s).strip()
    return s if len(s) <= max_len or keep else s[: max_len - 1].rstrip() + "…"


def save_figure(fig: Figure, path: Union[str, os.PathLike], *, dpi: int = 120) -> Path:
    """Save atomically (temp file in the same folder + ``os.replace``); format from the suffix."""
    from drope_lens.atomic import atomic_path

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)  # constrained layout already fits the content
    return path


# --------------------------------------------------------------------------- helpers


def _require(data: Mapping, what: str) -> None:
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{what}: expected a non-empty dict, got {type(data).__name__} {data!r:.80}.")


def _mean_err(v: Any) -> tuple[float, float]:
    """``x`` or ``(mean, std)`` -> ``(mean, std)``."""
    if isinstance(v, (tuple, list, np.ndarray)):
        if len(v) != 2:
            raise ValueError(f"Expected a number or (mean, std), got {v!r}.")
        return float(v[0]), float(v[1])
    return float(v), 0.0


def _ci(v: Any) -> tuple[float, float, float]:
    """``x`` or ``(value, lo, hi)`` -> ``(value, lo, hi)``."""
    if isinstance(v, (tuple, list, np.ndarray)):
        if len(v) != 3:
            raise ValueError(f"Expected a number or (value, ci_low, ci_high), got {v!r}.")
        return float(v[0]), float(v[1]), float(v[2])
    return float(v), float(v), float(v)


def _array(v: Any, name: str) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().float().cpu().numpy()
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array (one value per layer), got shape {arr.shape}.")
    return arr


def _fig(width: float = 7.0, height: float = 4.2, **kw: Any) -> Figure:
    return Figure(figsize=(width, height), layout="constrained", **kw)


def _num(v: float) -> str:
    """Readable bar annotation: 1,508 / 22.7 / 1.31 / 0.0042."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _tick(label: str, width: int = 24) -> str:
    """Short label wrapped onto lines for ticks and panel titles."""
    return textwrap.fill(short_label(label, max_len=60), width=width)


def _bar_labels(ax: Any, bars: Any, values: Sequence[float]) -> None:
    for bar, v in zip(bars, values, strict=True):
        if np.isfinite(v):
            ax.annotate(
                _num(v),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )


def _model_line(ax: Any, i: int, label: str, arr: np.ndarray, ms: float = 3) -> None:
    """One model's per-layer line: dot markers, short label, the i-th model colour."""
    ax.plot(
        np.arange(arr.size),
        arr,
        marker="o",
        ms=ms,
        label=short_label(label),
        color=MODEL_COLORS[i % len(MODEL_COLORS)],
    )


def _grouped(n: int, width: float = 0.8) -> tuple[np.ndarray, float]:
    w = width / n
    return (np.arange(n) - (n - 1) / 2) * w, w


# --------------------------------------------------------------------------- figures


def plot_qkv_totals(
    totals: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "Massive values in Q, K, V",
    ylabel: str = "massive values (count, mean ± std over texts)",
) -> Figure:
    """Grouped bars: x = tensor (Q, K, V), one bar per model, error bars = std.

    ``totals = {label: {"Q": (mean, std), "K": ..., "V": ...}}`` (a plain number means no error bar).
    """
    _require(totals, "totals")
    tensors = list(dict.fromkeys(t for per in totals.values() for t in per))
    offsets, w = _grouped(len(totals))
    fig = _fig()
    ax = fig.add_subplot()
    x = np.arange(len(tensors))
    for i, (label, per) in enumerate(totals.items()):
        stats = [_mean_err(per[t]) if t in per else (np.nan, 0.0) for t in tensors]
        means, stds = [s[0] for s in stats], [s[1] for s in stats]
        bars = ax.bar(
            x + offsets[i],
            means,
            w,
            yerr=stds,
            capsize=4,
            label=short_label(label),
            color=MODEL_COLORS[i % len(MODEL_COLORS)],
        )
        _bar_labels(ax, bars, means)
    ax.set_xticks(x, tensors)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_layer_counts(
    counts: Mapping[str, Any],
    *,
    tensor: str = "Q",
    title: Optional[str] = None,
    ylabel: str = "massive values",
) -> Figure:
    """Per-layer lines (one per model); with two models the gap between them is shaded."""
    _require(counts, "counts")
    arrays = {label: _array(v, f"counts[{label!r}]") for label, v in counts.items()}
    fig = _fig(8.0, 4.2)
    ax = fig.add_subplot()
    for i, (label, arr) in enumerate(arrays.items()):
        _model_line(ax, i, label, arr)
    if len(arrays) == 2:
        a, b = arrays.values()
        n = min(a.size, b.size)
        ax.fill_between(np.arange(n), a[:n], b[:n], color="grey", alpha=0.2, label="difference")
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"Massive values in {tensor} by layer")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_disruption_ppl(
    ppl: Mapping[str, Mapping[str, Any]],
    *,
    conditions: Sequence[str] = ("baseline", "massive", "random"),
    title: str = "Perplexity after disrupting massive vs random channels",
    log: bool = True,
) -> Figure:
    """Grouped bars: one group per model, one bar per condition (``x`` or ``(mean, std)``), log y."""
    _require(ppl, "ppl")
    labels = list(ppl)
    offsets, w = _grouped(len(conditions))
    fig = _fig()
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    for j, cond in enumerate(conditions):
        stats = [_mean_err(ppl[label][cond]) if cond in ppl[label] else (np.nan, 0.0) for label in labels]
        means = [s[0] for s in stats]
        bars = ax.bar(
            x + offsets[j],
            means,
            w,
            yerr=[s[1] for s in stats],
            capsize=3,
            label=cond,
            color=CONDITION_COLORS[j % len(CONDITION_COLORS)],
        )
        _bar_labels(ax, bars, means)
    if log:
        ax.set_yscale("log")
    ax.set_xticks(x, [_tick(label) for label in labels], fontsize=8)
    ax.set_ylabel("perplexity" + (" (log)" if log else ""))
    ax.set_title(title)
    ax.legend(fontsize=8, title="condition")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_mr(
    mr: Mapping[str, Any],
    *,
    title: str = "Reliance on massive channels (M − R)",
    ylabel: str = "PPL increase, massive − random (%)",
    log: bool = False,
    annotate_ratio: bool = True,
) -> Figure:
    """One bar per model with its confidence interval; ``mr = {label: value or (value, lo, hi)}``.

    With two positive values, the ratio first/second is written on the plot.
    """
    _require(mr, "mr")
    labels = list(mr)
    vals = [_ci(mr[label]) for label in labels]
    v = np.array([t[0] for t in vals])
    err = np.array([[max(t[0] - t[1], 0.0) for t in vals], [max(t[2] - t[0], 0.0) for t in vals]])
    fig = _fig(6.0, 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    bars = ax.bar(x, v, 0.6, yerr=err, capsize=5, color=[MODEL_COLORS[i % len(MODEL_COLORS)] for i in x])
    _bar_labels(ax, bars, list(v))
    if log:
        ax.set_yscale("log")
    ax.set_xticks(x, [_tick(label) for label in labels], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if annotate_ratio and len(v) == 2 and v[0] > 0 and v[1] > 0:
        ax.text(0.5, 0.95, f"ratio {v[0] / v[1]:.3g}×", transform=ax.transAxes, ha="center", va="top")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_task_degradation(
    acc: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    title: str = "Task accuracy under interventions",
    ylabel: str = "accuracy",
) -> Figure:
    """One panel per model; x = task, grouped bars = condition, error bars = CI.

    ``acc = {label: {task: {condition: acc or (acc, ci_low, ci_high)}}}``.
    """
    _require(acc, "acc")
    tasks = list(dict.fromkeys(t for per in acc.values() for t in per))
    conditions = list(dict.fromkeys(c for per in acc.values() for conds in per.values() for c in conds))
    if not tasks or not conditions:
        raise ValueError("acc holds no task results.")
    offsets, w = _grouped(len(conditions))
    ncols, nrows = min(len(acc), 2), math.ceil(len(acc) / 2)
    fig = _fig(max(4.5, 1.1 * len(tasks) + 1.5) * ncols, 4.0 * nrows)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    x = np.arange(len(tasks))
    for ax, (label, per) in zip(axes, acc.items(), strict=False):
        for j, cond in enumerate(conditions):
            stats = [_ci(per[t][cond]) if t in per and cond in per[t] else (np.nan,) * 3 for t in tasks]
            v = np.array([s[0] for s in stats])
            err = np.array([[max(s[0] - s[1], 0.0) for s in stats], [max(s[2] - s[0], 0.0) for s in stats]])
            ax.bar(
                x + offsets[j],
                v,
                w,
                yerr=np.nan_to_num(err),
                capsize=3,
                label=cond,
                color=CONDITION_COLORS[j % len(CONDITION_COLORS)],
            )
        ax.set_xticks(x, tasks, fontsize=8)
        ax.set_title(_tick(label, 40), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(acc) :]:
        ax.set_visible(False)
    axes[0].set_ylabel(ylabel)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(conditions), fontsize=8, title="condition")
    fig.suptitle(title)
    return fig


def plot_layer_metric(
    values: Mapping[str, Any],
    *,
    ylabel: str,
    title: str,
    log: bool = False,
    xlabel: str = "layer",
) -> Figure:
    """Per-layer lines, one per model (sink rate, BOS norm, BOS ratio, entropy, BOS write …)."""
    _require(values, "values")
    fig = _fig(8.0, 4.2)
    ax = fig.add_subplot()
    positive = False
    for i, (label, v) in enumerate(values.items()):
        arr = _array(v, f"values[{label!r}]")
        _model_line(ax, i, label, arr)
        positive = positive or bool((arr > 0).any())
    if log and positive:  # a log axis of no positive value is empty: keep the zeros visible on a linear one
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_interventions(
    values: Mapping[str, Mapping[str, Any]],
    *,
    ylabel: str,
    title: str = "Per-layer metric under interventions",
    log: bool = False,
) -> Figure:
    """Small multiples: one panel per condition, one line per model; shared y axis.

    ``values = {condition: {label: array[layers]}}``.
    """
    _require(values, "values")
    n = len(values)
    ncols = 2 if n == 4 else min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = _fig(4.0 * ncols + 1, 3.2 * nrows)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax, (cond, per) in zip(axes, values.items(), strict=False):
        _require(per, f"values[{cond!r}]")
        for i, (label, v) in enumerate(per.items()):
            arr = _array(v, f"values[{cond!r}][{label!r}]")
            _model_line(ax, i, label, arr, ms=2)
        if log:
            ax.set_yscale("log")
        ax.set_title(cond, fontsize=10)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    for r in range(nrows):
        axes[r * ncols].set_ylabel(ylabel)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 3), fontsize=8)
    fig.suptitle(title)
    return fig


def plot_sink_heatmap(
    scores: Union[Float[Any, "layers heads"], Mapping[str, Float[Any, "layers heads"]]],
    *,
    title: str = "Sink score by layer and head",
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "viridis",
) -> Figure:
    """Layers x heads heatmap; pass ``{label: scores}`` for one panel per model (shared colour bar)."""
    panels = dict(scores) if isinstance(scores, Mapping) else {"": scores}
    if not panels:
        raise ValueError("scores: expected an array or a non-empty dict of arrays.")
    arrays = {}
    for label, s in panels.items():
        if hasattr(s, "detach"):
            s = s.detach().float().cpu().numpy()
        arr = np.asarray(s, dtype=np.float64)
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"scores[{label!r}]: expected a non-empty [layers, heads] array, got {arr.shape}.")
        arrays[label] = arr
    fig = _fig(3.2 * len(arrays) + 1.2, 5.0)
    axes = fig.subplots(1, len(arrays), squeeze=False).ravel()
    im = None
    for ax, (label, arr) in zip(axes, arrays.items(), strict=True):
        im = ax.imshow(arr, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        if label:
            ax.set_title(_tick(label, 26), fontsize=9)
    assert im is not None  # arrays is non-empty
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="sink score")
    fig.suptitle(title)
    return fig
