"""Figure of the context-length experiment: each metric against input length, one line per model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from drope_lens.views.figures import MODEL_COLORS, short_label

#: Panels drawn by default: (metric key in a point, axis label, log y).
CONTEXT_PANELS = (
    ("passkey_accuracy", "passkey accuracy", False),
    ("ppl", "perplexity", True),
    ("sink_rate", "sink rate (τ)", False),
    ("max_bos_ratio", "max BOS ratio", True),
    ("massive_q", "massive Q count", False),
    ("massive_k", "massive K count", False),
)


def plot_context(
    results: Mapping[str, Mapping[str, Any]], panels: Sequence[tuple[str, str, bool]] = CONTEXT_PANELS
) -> Figure:
    """``results``: model label -> :meth:`ContextExperiment.to_dict` (``points``, ``training_context``).

    Each panel shows one metric vs length (log2 x axis); each model's training context length (from
    its config) is a dashed vertical line in its colour.
    """
    if not results:
        raise ValueError("plot_context needs at least one model's results.")
    n = len(panels)
    cols = 3 if n > 4 else n
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (key, label, log_y) in zip(axes, panels, strict=False):
        for i, (name, res) in enumerate(results.items()):
            pts = res["points"]
            if not pts:
                continue
            color = MODEL_COLORS[i % len(MODEL_COLORS)]
            xs = [p["length"] for p in pts]
            ys = [p[key] for p in pts]
            ax.plot(xs, ys, marker="o", color=color, label=short_label(name))
            ctx = res.get("training_context")
            if ctx:
                ax.axvline(ctx, color=color, linestyle="--", linewidth=1, alpha=0.7)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("input length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    ctx_note = "; ".join(f"{short_label(k)}: {v.get('training_context')}" for k, v in results.items())
    fig.legend(handles, labels, loc="outside upper center", ncols=max(1, len(labels)), frameon=False)
    fig.supxlabel(f"dashed: training context from each config ({ctx_note})", fontsize=8)
    return fig
