"""Heatmap views (layers x heads, channels) as self-contained inline SVG with hover titles.

circuitsvis has no generic heatmap component, so these maps are drawn as SVG: every cell carries a
``<title>`` shown on hover, nothing is fetched, and the views work in notebooks and offline pages.
Inputs are plain arrays/tensors, so any analysis can feed them.
"""

from __future__ import annotations

import html as _html
import math
import uuid
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from jaxtyping import Float

from drope_lens.options import DEFAULT_TAU
from drope_lens.views.html import HtmlView

__all__ = ["heatmap_view", "sink_score_map", "massive_channel_map", "as_numpy"]

_MAX_TITLED_CELLS = 60_000  # beyond this, hover titles are per row (keeps pages small)


def as_numpy(values: Any, *, ndim: Optional[Sequence[int]] = None, name: str = "values") -> np.ndarray:
    """A float64 numpy copy of a tensor/array/list (bool kept as bool); checks dimensionality."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy() if values.dtype != _torch_bool() else values.cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype != bool:
        arr = arr.astype(np.float64)
    if ndim is not None and arr.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}).")
    return arr


def _torch_bool():
    import torch

    return torch.bool


def _rgb(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """``uint8 [..., 3]`` colours; NaN cells light grey."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    span = vmax - vmin if vmax > vmin else 1.0
    norm = np.clip((values - vmin) / span, 0.0, 1.0)
    rgb = (cm(np.nan_to_num(norm, nan=0.0))[..., :3] * 255).round().astype(np.uint8)
    rgb[np.isnan(values)] = 204
    return rgb


def _png_data_uri(rgb: np.ndarray) -> str:
    import base64
    import io

    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(buf, rgb, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: float, value_format: str) -> str:
    return "nan" if np.isnan(v) else value_format.format(v)


def heatmap_view(
    values: Float[Any, "rows cols"],
    *,
    row_labels: Optional[Sequence[str]] = None,
    col_labels: Optional[Sequence[str]] = None,
    title: str = "",
    caption: Optional[str] = None,
    cmap: str = "viridis",
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    log: bool = False,
    value_format: str = "{:.3g}",
    col_group: Optional[int] = None,
    group_labels: Optional[Sequence[str]] = None,
    highlight: Optional[Any] = None,
    cell_titles: Optional[Sequence[Sequence[str]]] = None,
    max_width: int = 1100,
) -> HtmlView:
    """A heatmap as inline SVG (hover a cell for its row, column and value).

    Args:
        values: ``[rows, cols]``; NaN cells are grey. Booleans are drawn as 0/1.
        col_group: draw a separator every ``col_group`` columns (e.g. ``d_head``) and label the
            groups with ``group_labels`` instead of labelling single columns.
        log: colour by ``log10(value)`` (values <= 0 become grey); the hover shows the raw value.
        highlight: ``[rows, cols]`` booleans; those cells get a black outline.
    """
    arr = as_numpy(values, ndim=(2,), name="values").astype(np.float64)
    n_rows, n_cols = arr.shape
    row_labels = [str(i) for i in range(n_rows)] if row_labels is None else list(map(str, row_labels))
    col_labels = [str(j) for j in range(n_cols)] if col_labels is None else list(map(str, col_labels))
    if len(row_labels) != n_rows or len(col_labels) != n_cols:
        raise ValueError(f"Got {len(row_labels)} row and {len(col_labels)} column labels for a {n_rows}x{n_cols} map.")
    if col_group is not None and (col_group < 1 or n_cols % col_group):
        raise ValueError(f"col_group={col_group} does not divide the {n_cols} columns.")
    color_vals = arr.copy()
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            color_vals = np.where(arr > 0, np.log10(arr), np.nan)
    finite = color_vals[np.isfinite(color_vals)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if vmin is not None:
        lo = (math.log10(vmin) if vmin > 0 else lo) if log else float(vmin)
    if vmax is not None:
        hi = (math.log10(vmax) if vmax > 0 else hi) if log else float(vmax)
    rgb = _rgb(color_vals, cmap, lo, hi)
    mask = None if highlight is None else as_numpy(highlight, ndim=(2,), name="highlight").astype(bool)
    if mask is not None and mask.shape != arr.shape:
        raise ValueError(f"highlight has shape {mask.shape}, values {arr.shape}.")

    left = 12 + 7 * max(len(s) for s in row_labels)
    top = 34
    cell_w = float(min(28.0, max(1.5, (max_width - left - 90) / n_cols)))
    cell_h = float(min(22.0, max(6.0, 560.0 / n_rows)))
    grid_w, grid_h = cell_w * n_cols, cell_h * n_rows
    width, height = left + grid_w + 90, top + max(grid_h, min(grid_h, 200.0) + 20) + 12
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'font-family="sans-serif" font-size="10" role="img" aria-label="{_html.escape(title)}">'
    ]
    # Column labels.
    if col_group is not None:
        n_groups = n_cols // col_group
        glabels = list(group_labels) if group_labels is not None else [f"G{g}" for g in range(n_groups)]
        if len(glabels) != n_groups:
            raise ValueError(f"Got {len(glabels)} group labels for {n_groups} groups.")
        step = max(1, math.ceil(n_groups * 24 / grid_w))
        for g in range(0, n_groups, step):
            x = left + (g + 0.5) * col_group * cell_w
            out.append(f'<text x="{x:.1f}" y="{top - 6}" text-anchor="middle">{_html.escape(glabels[g])}</text>')
    else:
        step = max(1, math.ceil(n_cols * 24 / grid_w))
        for j in range(0, n_cols, step):
            x = left + (j + 0.5) * cell_w
            out.append(f'<text x="{x:.1f}" y="{top - 6}" text-anchor="middle">{_html.escape(col_labels[j])}</text>')
    # Row labels.
    rstep = max(1, math.ceil(12 / cell_h))
    for i in range(0, n_rows, rstep):
        y = top + (i + 0.5) * cell_h + 3.5
        out.append(f'<text x="{left - 4}" y="{y:.1f}" text-anchor="end">{_html.escape(row_labels[i])}</text>')
    # Cells: one <rect> with a hover <title> each; large maps are one embedded PNG (one pixel per
    # cell, drawn pixelated) with a hover title per row, which keeps pages small.
    if arr.size <= _MAX_TITLED_CELLS:
        for i in range(n_rows):
            for j in range(n_cols):
                r, g, b = rgb[i, j]
                tip = (
                    cell_titles[i][j]
                    if cell_titles is not None
                    else f"{row_labels[i]} {col_labels[j]}: {_fmt(arr[i, j], value_format)}"
                )
                out.append(
                    f'<rect x="{left + j * cell_w:.2f}" y="{top + i * cell_h:.2f}" width="{cell_w + 0.05:.2f}" '
                    f'height="{cell_h + 0.05:.2f}" fill="#{r:02x}{g:02x}{b:02x}">'
                    f"<title>{_html.escape(tip)}</title></rect>"
                )
    else:
        out.append(
            f'<image x="{left}" y="{top}" width="{grid_w:.2f}" height="{grid_h:.2f}" preserveAspectRatio="none" '
            f'style="image-rendering:pixelated" href="{_png_data_uri(rgb)}"/>'
        )
        for i in range(n_rows):
            finite_row = arr[i][np.isfinite(arr[i])]
            tip = f"{row_labels[i]}: max {_fmt(finite_row.max(), value_format)}" if finite_row.size else row_labels[i]
            out.append(
                f'<rect x="{left}" y="{top + i * cell_h:.2f}" width="{grid_w:.2f}" height="{cell_h:.2f}" '
                f'fill="transparent"><title>{_html.escape(tip)}</title></rect>'
            )
    if col_group is not None:
        for g in range(1, n_cols // col_group):
            x = left + g * col_group * cell_w
            out.append(
                f'<line x1="{x:.2f}" y1="{top}" x2="{x:.2f}" y2="{top + grid_h:.2f}" stroke="#fff" stroke-width="1"/>'
            )
    if mask is not None:
        for i, j in zip(*np.nonzero(mask), strict=True):
            x, y = left + j * cell_w, top + i * cell_h
            out.append(
                f'<rect x="{x + 0.75:.2f}" y="{y + 0.75:.2f}" width="{max(cell_w - 1.5, 0.5):.2f}" '
                f'height="{max(cell_h - 1.5, 0.5):.2f}" fill="none" stroke="#000" stroke-width="1.5"/>'
            )
    # Colour bar.
    gid = f"dl-grad-{uuid.uuid4().hex[:10]}"
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    stops = "".join(
        f'<stop offset="{k / 10:.1f}" stop-color="{matplotlib.colors.to_hex(cm(1 - k / 10))}"/>' for k in range(11)
    )
    bx, bh = left + grid_w + 16, min(grid_h, 200.0)
    out.append(f'<defs><linearGradient id="{gid}" x1="0" y1="0" x2="0" y2="1">{stops}</linearGradient></defs>')
    out.append(f'<rect x="{bx:.1f}" y="{top}" width="12" height="{bh:.1f}" fill="url(#{gid})" stroke="#999"/>')
    hi_txt = value_format.format(10**hi if log else hi)
    lo_txt = value_format.format(10**lo if log else lo)
    out.append(f'<text x="{bx + 16:.1f}" y="{top + 8}">{_html.escape(hi_txt)}</text>')
    out.append(f'<text x="{bx + 16:.1f}" y="{top + bh:.1f}">{_html.escape(lo_txt)}</text>')
    if log:
        out.append(f'<text x="{bx:.1f}" y="{top + bh + 14:.1f}">log scale</text>')
    out.append("</svg>")
    head = f'<h3 style="margin:4px 0">{_html.escape(title)}</h3>' if title else ""
    cap = f'<p class="dl-caption" style="color:#555;font-size:0.9em">{_html.escape(caption)}</p>' if caption else ""
    svg = f'<div style="overflow-x:auto">{"".join(out)}</div>'
    return HtmlView(f'<div class="dl-map">{head}{cap}{svg}</div>', title=title or None)


def sink_score_map(
    sink_scores: Float[Any, "layers heads"],
    *,
    title: str = "Sink score by layer and head",
    threshold: Optional[float] = DEFAULT_TAU,
    cmap: str = "viridis",
    vmin: float = 0.0,
    vmax: float = 1.0,
    layer_labels: Optional[Sequence[str]] = None,
) -> HtmlView:
    """Layers x heads map of sink scores (e.g. mean attention to BOS); cells >= ``threshold`` outlined.

    The caption counts the (layer, head) pairs at or above ``threshold`` (the Sink^eps rate).
    """
    arr = as_numpy(sink_scores, ndim=(2,), name="sink_scores").astype(np.float64)
    n_layers, n_heads = arr.shape
    caption, highlight = None, None
    if threshold is not None:
        highlight = np.nan_to_num(arr, nan=-np.inf) >= threshold
        valid = int(np.isfinite(arr).sum())
        n = int(highlight.sum())
        rate = 100.0 * n / valid if valid else float("nan")
        caption = f"{n} of {valid} heads ({rate:.1f}%) have a sink score >= {threshold:g} (outlined)."
        if valid < arr.size:
            caption += f" {arr.size - valid} cells are NaN (grey)."
    return heatmap_view(
        arr,
        row_labels=list(layer_labels) if layer_labels is not None else [f"L{i}" for i in range(n_layers)],
        col_labels=[f"H{j}" for j in range(n_heads)],
        title=title,
        caption=caption,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        highlight=highlight,
    )


def massive_channel_map(
    values: Any,
    *,
    d_head: Optional[int] = None,
    title: str = "Massive channels",
    log: bool = False,
    cmap: Optional[str] = None,
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    value_name: str = "value",
) -> HtmlView:
    """Map of per-channel statistics or a massive-channel mask.

    Accepted shapes:
        * ``[heads, d_head]``: one layer, rows are heads, columns dimensions;
        * ``[layers, heads, d_head]``: rows are layers, columns ``heads*d_head`` grouped by head;
        * ``[layers, heads*d_head]`` with ``d_head=``: the same, already flattened.

    Values may be magnitudes (e.g. the channel norm over its layer mean; ``log=True`` helps) or a
    boolean mask (massive channels dark). Hover shows layer, head, dimension and value.
    """
    arr = as_numpy(values, ndim=(2, 3), name="values")
    is_mask = arr.dtype == bool
    arr = arr.astype(np.float64)
    if arr.ndim == 3:
        n_layers, n_heads, dh = arr.shape
        if d_head is not None and d_head != dh:
            raise ValueError(f"d_head={d_head} but values have shape {arr.shape}.")
        arr = arr.reshape(n_layers, n_heads * dh)
        layered = True
    elif d_head is not None:
        if d_head < 1 or arr.shape[1] % d_head:
            raise ValueError(f"d_head={d_head} does not divide the {arr.shape[1]} columns.")
        dh, n_heads, layered = d_head, arr.shape[1] // d_head, True
    else:
        n_heads, dh = arr.shape
        layered = False
    if is_mask:
        cmap, vmin, vmax, log = cmap or "Reds", 0.0, 1.0, False
    cmap = cmap or "magma"

    def show(v: float) -> str:
        if is_mask:
            return "massive" if v >= 0.5 else "-"
        return _fmt(v, "{:.4g}")

    if layered:
        rows = [f"L{i}" for i in range(arr.shape[0])]
        cols = [f"H{h} d{d}" for h in range(n_heads) for d in range(dh)]
        titles = (
            [
                [f"L{i} H{j // dh} dim {j % dh}: {value_name} {show(arr[i, j])}" for j in range(arr.shape[1])]
                for i in range(arr.shape[0])
            ]
            if arr.size <= _MAX_TITLED_CELLS
            else None
        )
        group = dict(col_group=dh, group_labels=[f"H{h}" for h in range(n_heads)])
    else:
        rows = [f"H{h}" for h in range(n_heads)]
        cols = [f"d{d}" for d in range(dh)]
        titles = [[f"H{i} dim {j}: {value_name} {show(arr[i, j])}" for j in range(dh)] for i in range(n_heads)]
        group = {}
    caption = None
    if is_mask:
        caption = f"{int(arr.sum())} massive channels of {arr.size}."
    return heatmap_view(
        arr,
        row_labels=rows,
        col_labels=cols,
        title=title,
        caption=caption,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        log=log,
        cell_titles=titles,
        **group,
    )
