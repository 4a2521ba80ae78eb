"""Offline HTML: circuitsvis views, drope_lens HTML views and matplotlib figures on one page.

circuitsvis offers two renderings of a view: ``str(view)`` imports its JavaScript bundle from a CDN
(blank without network) and ``view.local_src`` inlines the ~1.3 MB bundle *per view*. Pages built
here inline the bundle once, then mount every circuitsvis view into its own ``<div>`` with a small
script, so a page with many views stays small and renders with no network at all. Matplotlib figures
are embedded as base64 PNG ``data:`` URIs. :func:`check_offline` refuses any external resource.
"""

from __future__ import annotations

import base64
import functools
import html as _html
import io
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

__all__ = [
    "HtmlView",
    "ViewGroup",
    "OfflinePage",
    "to_offline_html",
    "to_offline_fragment",
    "save_html",
    "check_offline",
]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.5em; margin: 0 0 12px; }
h2 { font-size: 1.2em; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1.0em; margin: 8px 0; }
.dl-row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.dl-row > .dl-cell { flex: 1 1 0; min-width: 420px; }
.dl-col > .dl-cell { margin-bottom: 16px; }
.dl-caption { color: #555; font-size: 0.9em; margin: 4px 0 8px; }
.dl-fig img { max-width: 100%; height: auto; }
"""

# A view is whatever one of these accepts: a circuitsvis RenderedHTML, an HtmlView, a ViewGroup,
# a matplotlib Figure, or a raw HTML string (checked for external resources).
View = Any


class HtmlView:
    """A self-contained HTML fragment (inline SVG/CSS only; nothing is fetched).

    Displays in notebooks (``_repr_html_``) and composes with circuitsvis views in
    :func:`to_offline_html`.
    """

    def __init__(self, html: str, *, title: Optional[str] = None) -> None:
        check_offline(html)
        self.html = html
        self.title = title

    @property
    def local_src(self) -> str:
        """The HTML itself (same name as circuitsvis's offline rendering)."""
        return self.html

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html

    def save(self, path: Union[str, os.PathLike], *, title: Optional[str] = None) -> Path:
        """Write a complete offline HTML page holding this view."""
        return save_html(path, to_offline_html(self, title=title or self.title or "drope_lens view"))


class ViewGroup:
    """Several views with titles, side by side (``layout="row"``) or stacked (``"column"``).

    In a notebook it renders offline (the circuitsvis bundle inlined once for the whole group).
    """

    def __init__(
        self,
        views: Sequence[tuple[str, View]],
        *,
        layout: str = "row",
        title: Optional[str] = None,
        caption: Optional[str] = None,
    ) -> None:
        if layout not in ("row", "column"):
            raise ValueError(f"layout must be 'row' or 'column', got {layout!r}")
        views = list(views)
        if not views:
            raise ValueError("A ViewGroup needs at least one view.")
        for item in views:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise ValueError("ViewGroup takes a sequence of (title, view) pairs.")
        self.views = views
        self.layout = layout
        self.title = title
        self.caption = caption

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, i: int) -> View:
        return self.views[i][1]

    @property
    def local_src(self) -> str:
        return to_offline_fragment(self)

    def _repr_html_(self) -> str:
        return to_offline_fragment(self)

    def save(self, path: Union[str, os.PathLike], *, title: Optional[str] = None) -> Path:
        """Write a complete offline HTML page holding this group."""
        return save_html(path, to_offline_html(self, title=title or self.title or "drope_lens views"))


# --------------------------------------------------------------------------- circuitsvis plumbing


@functools.lru_cache(maxsize=1)
def _bundle() -> str:
    """circuitsvis's browser bundle (IIFE defining the global ``CircuitsVis``), safe to inline."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise FileNotFoundError(
            f"circuitsvis's bundle is missing at {path}; reinstall circuitsvis (pip install circuitsvis)."
        )
    return _escape_script(path.read_text(encoding="utf-8"))


def _escape_script(js: str) -> str:
    """Make text safe inside ``<script>``: no ``</script`` and no ``<!--`` (same JS meaning)."""
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)
    return js.replace("<!--", "<\\!--")


def _is_circuitsvis(view: Any) -> bool:
    return hasattr(view, "local_src") and hasattr(view, "cdn_src")


def _split_circuitsvis(view: Any) -> Optional[tuple[str, str]]:
    """``(component, props_json)`` of a circuitsvis RenderedHTML, or None if its layout is unknown."""
    src = view.local_src
    start = src.rfind("CircuitsVis.render(")
    if start < 0:
        return None
    m = re.match(
        r'CircuitsVis\.render\(\s*"[^"]*"\s*,\s*CircuitsVis\.(\w+)\s*,\s*(\{.*\})\s*\)\s*</script>\s*$',
        src[start:],
        flags=re.DOTALL,
    )
    if m is None:
        return None
    return m.group(1), m.group(2)


class OfflinePage:
    """Renders views into fragments of one page and knows whether the circuitsvis bundle is needed.

    ``render(view)`` gives each view's HTML (circuitsvis views mount into their own ``<div>``);
    ``bundle_script()`` is the one ``<script>`` (the inlined bundle) the page then needs, or ``""``.
    """

    def __init__(self) -> None:
        self.needs_bundle = False

    def render(self, view: View) -> str:
        if isinstance(view, ViewGroup):
            return self._group(view)
        if isinstance(view, HtmlView):
            return view.html
        if _is_circuitsvis(view):
            return self._circuitsvis(view)
        if _is_figure(view):
            return _figure_html(view)
        if isinstance(view, str):
            check_offline(view)
            return view
        raise TypeError(
            f"Cannot render a {type(view).__name__}: expected a circuitsvis view, HtmlView, "
            "ViewGroup, matplotlib Figure or HTML string."
        )

    def _circuitsvis(self, view: Any) -> str:
        parts = _split_circuitsvis(view)
        if parts is None:  # unknown circuitsvis layout: fall back to its own offline rendering
            return f'<div class="dl-cv">{view.local_src}</div>'
        component, props = parts
        self.needs_bundle = True
        div_id = f"dl-cv-{uuid.uuid4().hex[:12]}"
        return (
            f'<div id="{div_id}" class="dl-cv"></div>\n'
            f"<script>CircuitsVis.render({_js_str(div_id)}, CircuitsVis.{component}, "
            f"{_escape_script(props)});</script>"
        )

    def _group(self, group: ViewGroup) -> str:
        cells = []
        for title, view in group.views:
            head = f"<h3>{_html.escape(title)}</h3>" if title else ""
            cells.append(f'<div class="dl-cell">{head}\n{self.render(view)}</div>')
        out = f'<div class="dl-{group.layout}">' + "\n".join(cells) + "</div>"
        if group.caption:
            out = f'<p class="dl-caption">{_html.escape(group.caption)}</p>\n' + out
        return out

    def bundle_script(self) -> str:
        return f"<script>\n{_bundle()}\n</script>" if self.needs_bundle else ""


def _js_str(s: str) -> str:
    import json

    return _escape_script(json.dumps(s))


def _is_figure(obj: Any) -> bool:
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Figure)


def _figure_html(fig: Any, dpi: int = 110) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<div class="dl-fig"><img alt="figure" src="data:image/png;base64,{data}"></div>'


def _sections(view_or_views: Any) -> list[tuple[Optional[str], View]]:
    items: list[tuple[Optional[str], Any]]
    if isinstance(view_or_views, Mapping):
        items = [(str(k), v) for k, v in view_or_views.items()]
    elif isinstance(view_or_views, (list, tuple)) and not isinstance(view_or_views, str):
        items = []
        for item in view_or_views:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                items.append(item)
            else:
                items.append((None, item))
    else:
        items = [(None, view_or_views)]
    if not items:
        raise ValueError("No views given.")
    return items


# --------------------------------------------------------------------------- public API


def to_offline_fragment(view_or_views: Any) -> str:
    """HTML fragment (no ``<html>`` wrapper) that renders offline; the bundle is inlined once."""
    page = OfflinePage()
    body = []
    for heading, view in _sections(view_or_views):
        if heading:
            body.append(f"<h2>{_html.escape(heading)}</h2>")
        body.append(page.render(view))
    out = '<div class="dl-views">' + f"<style>{_CSS}</style>" + page.bundle_script() + "\n".join(body) + "</div>"
    check_offline(out)
    return out


def to_offline_html(
    view_or_views: Any,
    *,
    title: str,
    description: Optional[str] = None,
) -> str:
    """A complete HTML page that renders with no network.

    Args:
        view_or_views: one view, a list of views, a list of ``(heading, view)`` pairs, or a
            ``{heading: view}`` mapping. A view is a circuitsvis object, :class:`HtmlView`,
            :class:`ViewGroup`, matplotlib ``Figure`` or an HTML string without external resources.
        title: page title and top heading.
        description: optional paragraph under the title.

    circuitsvis views are rendered from their inlined bundle (never the CDN ``str(view)``).
    """
    page = OfflinePage()
    body = [f"<h1>{_html.escape(title)}</h1>"]
    if description:
        body.append(f'<p class="dl-caption">{_html.escape(description)}</p>')
    rendered = []
    for heading, view in _sections(view_or_views):
        if heading:
            rendered.append(f"<h2>{_html.escape(heading)}</h2>")
        rendered.append(page.render(view))
    out = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_html.escape(title)}</title>\n<style>{_CSS}</style>\n"
        f"{page.bundle_script()}\n</head>\n<body>\n" + "\n".join(body + rendered) + "\n</body>\n</html>\n"
    )
    check_offline(out)
    return out


_EXTERNAL = [
    re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//", re.IGNORECASE),
    re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?\s*(?:https?:)?//", re.IGNORECASE),
    re.compile(r"<(?:img|iframe|source|video|audio|embed)\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//", re.IGNORECASE),
    re.compile(r"\bimport\s*(?:[\w{}\s,*]+\s*from\s*)?[\"'](?:https?:)?//", re.IGNORECASE),
    re.compile(r"@import\s+(?:url\()?\s*[\"']?(?:https?:)?//", re.IGNORECASE),
]


def check_offline(html: str) -> None:
    """Raise ValueError if ``html`` loads anything from the network (scripts, styles, images, imports)."""
    for pattern in _EXTERNAL:
        m = pattern.search(html)
        if m:
            snippet = html[m.start() : m.start() + 120]
            raise ValueError(
                f"HTML references an external resource and would not render offline: {snippet!r}. "
                "Use view.local_src (circuitsvis) or drope_lens.views.to_offline_html, never str(view)."
            )


def save_html(path: Union[str, os.PathLike], html: Union[str, View], *, title: Optional[str] = None) -> Path:
    """Write ``html`` atomically (temp file + ``os.replace``); a view is turned into a page first.

    A string must be a complete page or fragment without external resources.
    """
    if not isinstance(html, str):
        html = to_offline_html(html, title=title or getattr(html, "title", None) or "drope_lens views")
    check_offline(html)
    from drope_lens.atomic import atomic_write_text

    atomic_write_text(path, html)
    path = Path(path)
    return path
