"""drope_lens.views: offline attention views (circuitsvis), heatmap views and matplotlib figures.

* :func:`attention_patterns`, :func:`attention_heads_view`, :func:`pair_attention_view`:
  one layer's real attention for one text, one model or a pair side by side.
* :func:`sink_score_map`, :func:`massive_channel_map`, :func:`heatmap_view`: inline-SVG maps.
* :func:`to_offline_html`, :func:`save_html`: pages that render with no network (the circuitsvis
  bundle is inlined once; ``str(view)`` would load it from a CDN and stay blank offline).
* ``plot_*`` and :func:`save_figure`: matplotlib figures from plain numbers.
"""

from drope_lens.views.attention import (
    attention_heads_view,
    attention_patterns,
    display_tokens,
    pair_attention_view,
)
from drope_lens.views.figures import (
    plot_disruption_ppl,
    plot_interventions,
    plot_layer_counts,
    plot_layer_metric,
    plot_mr,
    plot_qkv_totals,
    plot_sink_heatmap,
    plot_task_degradation,
    save_figure,
    short_label,
)
from drope_lens.views.html import (
    HtmlView,
    ViewGroup,
    check_offline,
    save_html,
    to_offline_fragment,
    to_offline_html,
)
from drope_lens.views.maps import heatmap_view, massive_channel_map, sink_score_map

__all__ = [
    "attention_patterns",
    "attention_heads_view",
    "pair_attention_view",
    "display_tokens",
    "sink_score_map",
    "massive_channel_map",
    "heatmap_view",
    "HtmlView",
    "ViewGroup",
    "to_offline_html",
    "to_offline_fragment",
    "save_html",
    "check_offline",
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
