"""drope_lens.views: offline attention views (circuitsvis), heatmap views and matplotlib figures.

* :func:`attention_patterns`, :func:`attention_heads_view`, :func:`pair_attention_view`:
  one layer's real attention for one text, one model or a pair side by side.
* :func:`sink_score_map`, :func:`massive_channel_map`, :func:`heatmap_view`: inline-SVG maps.
* :func:`to_offline_html`, :func:`save_html`: pages that render with no network (the circuitsvis
  bundle is inlined once; ``str(view)`` would load it from a CDN and stay blank offline).
* ``plot_*`` and :func:`save_figure`: matplotlib figures from plain numbers.
"""

from drope_lens.views import attention, figures, html, maps
from drope_lens.views.attention import *  # noqa: F403
from drope_lens.views.figures import *  # noqa: F403
from drope_lens.views.html import *  # noqa: F403
from drope_lens.views.maps import *  # noqa: F403

# Each module's own ``__all__`` is the list (the forms type checkers read, typing spec "Library interface").
__all__: list[str] = []
__all__ += attention.__all__
__all__ += figures.__all__
__all__ += html.__all__
__all__ += maps.__all__
