"""Figures for the residual massive activations and the study's Exp 5–9, from plain numbers.

Each takes ``{model label: values}`` mappings (what the results' ``to_dict()`` hold) and returns a
matplotlib :class:`~matplotlib.figure.Figure`; save with :func:`drope_lens.views.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from drope_lens.views.figures import MODEL_COLORS, _array, _fig, _grouped, _require, short_label

CLASS_COLORS = {"sink": "#d62728", "local": "#1f77b4", "distributed": "#2ca02c", "mixed": "#7f7f7f"}


def plot_residual_massive(
    top1: Mapping[str, Any],
    median: Mapping[str, Any],
    *,
    title: str = "Residual massive activations (top-1 |h| vs layer median)",
) -> Figure:
    """Per layer, log scale: each model's mean top-1 |resid_post| (solid) and median |h| (dashed)."""
    _require(top1, "top1")
    fig = _fig(8.0, 4.2)
    ax = fig.add_subplot()
    for i, label in enumerate(top1):
        c = MODEL_COLORS[i % len(MODEL_COLORS)]
        t = _array(top1[label], f"top1[{label!r}]")
        ax.plot(np.arange(t.size), t, marker="o", ms=3, color=c, label=f"{short_label(label)} top-1")
        if label in median:
            m = _array(median[label], f"median[{label!r}]")
            ax.plot(np.arange(m.size), m, ls="--", color=c, label=f"{short_label(label)} median")
    ax.set_yscale("log")
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("|h|")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def plot_head_classes(
    layer_counts: Mapping[str, Any], *, classes=tuple(CLASS_COLORS), title: str = "Attention-head classes per layer"
) -> Figure:
    """Stacked bars per layer, one panel per model; ``layer_counts[label]`` is ``[layer, class]``."""
    _require(layer_counts, "layer_counts")
    fig = _fig(9.0, 2.6 * len(layer_counts) + 0.6)
    axes = fig.subplots(len(layer_counts), 1, squeeze=False)[:, 0]
    for ax, (label, counts) in zip(axes, layer_counts.items(), strict=True):
        c = np.asarray(counts, dtype=float)
        bottom = np.zeros(c.shape[0])
        for j, name in enumerate(classes):
            ax.bar(np.arange(c.shape[0]), c[:, j], bottom=bottom, color=CLASS_COLORS.get(name), label=name)
            bottom += c[:, j]
        ax.set_title(short_label(label), fontsize=9)
        ax.set_ylabel("heads")
    axes[-1].set_xlabel("layer")
    axes[0].legend(fontsize=7, ncols=len(classes))
    fig.suptitle(title)
    return fig


def plot_ppl_conditions(ppl: Mapping[str, Mapping[str, float]], *, title: str) -> Figure:
    """Grouped bars (log scale): ``ppl[model][condition]`` perplexity."""
    _require(ppl, "ppl")
    conds = list(next(iter(ppl.values())))
    x, w = _grouped(len(ppl))
    fig = _fig(8.0, 4.2)
    ax = fig.add_subplot()
    base = np.arange(len(conds))
    for i, (label, d) in enumerate(ppl.items()):
        ax.bar(
            base + x[i], [d[c] for c in conds], w, label=short_label(label), color=MODEL_COLORS[i % len(MODEL_COLORS)]
        )
    ax.set_xticks(base, conds)
    ax.set_yscale("log")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig
