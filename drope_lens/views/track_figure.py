"""Figure of a recalibration track: each metric against tokens seen, the RoPE model as a reference line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from matplotlib.figure import Figure

from drope_lens.options import DEFAULT_TAU
from drope_lens.views.figures import MODEL_COLORS

#: Panels drawn when present: (metric, axis label, log y).
TRACK_PANELS = (
    ("ppl_heldout", "held-out perplexity", True),
    ("massive_q_total", "massive Q channels (total)", False),
    ("massive_k_total", "massive K channels (total)", False),
    ("massive_v_total", "massive V channels (total)", False),
    ("massive_q_gini", "Gini of Q norms (mean layer)", False),
    ("sink_rate", f"sink rate (τ = {DEFAULT_TAU:g})", False),
    ("max_bos_ratio", "max BOS ratio", True),
    ("spike_layer", "BOS spike layer (argmax)", False),
    ("bos_mlp_ppl_factor", "BOS-MLP ablation ppl factor", True),
    ("m_minus_r", "massive − random zeroing (M−R, %)", False),
    ("passkey_acc", "passkey accuracy", False),
)


def plot_track(result, panels: Optional[Sequence[tuple[str, str, bool]]] = None) -> Figure:
    """One panel per metric present in ``result`` (a :class:`~drope_lens.track.pipeline.TrackResult`):
    the DroPE checkpoints against tokens seen, the RoPE original as a dashed horizontal line."""
    have = set(result.to_dataframe().get("metric", []))
    panels = [p for p in (panels or TRACK_PANELS) if p[0] in have]
    if not panels:
        raise ValueError("plot_track: the result has none of the plotted metrics")
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    rope_c, drope_c = MODEL_COLORS[0], MODEL_COLORS[1]
    for ax, (metric, label, log_y) in zip(axes, panels, strict=False):
        tokens, values, rope = result.series(metric)
        ax.plot(tokens, values, marker="o", color=drope_c, label="RoPE removed, recalibrating")
        if rope is not None:
            ax.axhline(rope, color=rope_c, linestyle="--", label="RoPE original")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("tokens seen")
        if log_y and all(v > 0 for v in values + ([rope] if rope else [])):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle("Recalibration track (RoPE → DroPE)")
    return fig
