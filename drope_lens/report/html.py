"""report.html: the whole report as one self-contained page that opens with no network.

Top: the pair, a notice when the DroPE side is not a recalibrated twin (with the commands for one),
and the findings (one row per claim of the study, with its verdict). Then one section per report
step, in the report's order: the section's text and tables (rendered from the same Markdown as
report.md, with markdown-it-py) on the left, the figures that show those numbers on the right, and
the step's views under them. Provenance and the file list close the page.

Everything is inside the file: figures as base64 PNG ``data:`` URIs, the views rendered inline
(circuitsvis's JavaScript bundle inlined once, never its CDN), CSS inline, no web fonts, no script or
style from anywhere else (checked with :func:`drope_lens.views.check_offline` before writing).
"""

from __future__ import annotations

import base64
import html as _html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from drope_lens.report.findings import (
    CONFIRMED,
    CONTRADICTED,
    MARK,
    Finding,
    findings_summary,
    twin_notice,
    twin_status,
)
from drope_lens.report.markdown import Section, header_lines, report_sections

__all__ = ["render_html", "markdown_to_html", "LONG_TABLE_ROWS", "FOLD_ANY_ROWS", "INLINE_VIEW_BYTES"]

#: Per-layer tables (first column ``layer``) longer than this are folded (``<details>``) under their
#: section, and any table longer than ``FOLD_ANY_ROWS``; the headline tables stay open.
LONG_TABLE_ROWS = 12
FOLD_ANY_ROWS = 48
#: A view whose HTML (the shared circuitsvis bundle aside) is larger than this is linked, not inlined:
#: the channel maps of a 30-layer model are ~5 MB of SVG. Its own page (views/) opens offline too.
INLINE_VIEW_BYTES = 1_500_000

_CSS = """
:root { --ok: #1a7f37; --bad: #b42318; --na: #6b7280; --line: #d8dde3; --soft: #f5f7f9; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; padding: 20px 28px 60px; max-width: 1500px; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6em; margin: 4px 0 6px; }
h2 { font-size: 1.25em; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 14px 0 6px; }
code { background: var(--soft); padding: 0 3px; border-radius: 3px; font-size: 0.92em; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.88em; }
th, td { border: 1px solid var(--line); padding: 3px 7px; vertical-align: top; text-align: left; }
th { background: var(--soft); }
.meta { color: #444; font-size: 0.92em; margin: 0; padding-left: 18px; }
.notice { border-left: 5px solid #d4a72c; background: #fff8e1; padding: 10px 14px; margin: 14px 0; }
.notice code { background: #fff1c2; }
.summary { margin: 6px 0 10px; }
table.findings { width: 100%; font-size: 0.9em; }
table.findings td.verdict { white-space: nowrap; font-weight: 600; }
tr.confirmed td.verdict { color: var(--ok); }
tr.contradicted td.verdict { color: var(--bad); }
tr.not-testable td.verdict { color: var(--na); }
.badge { display: inline-block; min-width: 1.2em; text-align: center; }
nav.toc { margin: 12px 0; font-size: 0.92em; }
nav.toc a { margin-right: 14px; }
.step { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.step > .text { flex: 1 1 560px; min-width: 0; overflow-x: auto; }
.step > .figs { flex: 1 1 460px; max-width: 640px; }
figure { margin: 0 0 16px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: #555; font-size: 0.85em; margin-top: 2px; }
details { margin: 6px 0 12px; }
summary { cursor: pointer; color: #0b5cad; }
.views { margin-top: 10px; }
.view { border: 1px solid var(--line); padding: 10px; margin: 10px 0; overflow-x: auto; }
.view > h3 { margin-top: 0; }
"""


# ------------------------------------------------------------------------------------ Markdown → HTML
def markdown_to_html(text: str) -> str:
    """Render the report's own Markdown (headings, paragraphs, lists, pipe tables, code, emphasis) to
    HTML; raw HTML in the text is escaped, never passed through."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    return md.render(text)


def _inline(text: str) -> str:
    """One line of Markdown (code, emphasis) as inline HTML."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).renderInline(text)


def _blocks(text: str) -> list[str]:
    """Markdown split at blank lines (a table, a paragraph, a list: one block each)."""
    return [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]


def _table_rows(block: str) -> int:
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    return max(0, len(lines) - 2) if len(lines) == len(block.splitlines()) else 0


def _section_text_html(markdown: str) -> str:
    """A section's Markdown as HTML, with long tables folded under the line that introduces them."""
    blocks = _blocks(markdown)
    out: list[str] = []
    for block in blocks:
        rows = _table_rows(block)
        per_layer = block.lstrip("| ").lower().startswith("layer ")
        if (per_layer and rows > LONG_TABLE_ROWS) or rows > FOLD_ANY_ROWS:
            label = "table"
            if out and out[-1].startswith("<p>") and out[-1].rstrip().endswith(":</p>"):
                label = re.sub(r"<[^>]+>", "", out.pop()).strip().rstrip(":")
            out.append(
                f"<details><summary>{_html.escape(label)} ({rows} rows)</summary>\n{markdown_to_html(block)}</details>"
            )
        else:
            out.append(markdown_to_html(block).strip())
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ parts
def _figure(out: Path, name: str, caption: str) -> str:
    data = base64.b64encode((out / "figures" / name).read_bytes()).decode("ascii")
    cap = _html.escape(caption)
    return (
        f'<figure><img alt="{cap}" src="data:image/png;base64,{data}">'
        f"<figcaption>{cap} (<code>figures/{_html.escape(name)}</code>)</figcaption></figure>"
    )


def _findings_table(findings: Sequence[Finding]) -> str:
    rows = []
    for f in findings:
        cls = {CONFIRMED: "confirmed", CONTRADICTED: "contradicted"}.get(f.verdict, "not-testable")
        rows.append(
            f'<tr class="{cls}" id="finding-{_html.escape(f.id)}">'
            f'<td class="verdict"><span class="badge">{MARK[f.verdict]}</span> {_html.escape(f.verdict)}</td>'
            f"<td>{_html.escape(f.claim)}</td>"
            f"<td>{_html.escape(f.study)} <em>[{_html.escape(f.provenance)}]</em></td>"
            f"<td>{_html.escape(f.here)}</td>"
            f'<td title="{_html.escape(f.rule)}">{_html.escape(f.why)}</td></tr>'
        )
    return (
        '<table class="findings"><thead><tr><th>verdict</th><th>the study\'s claim</th>'
        "<th>the study [provenance]</th><th>this pair</th><th>why (hover: the rule)</th></tr></thead>"
        "<tbody>" + "\n".join(rows) + "</tbody></table>"
    )


def _notice(results: dict) -> str:
    notice = twin_notice(twin_status(results))
    if not notice:
        return ""
    body = _html.escape(notice[1])
    body = re.sub(r"`([^`]+)`", r"<code>\1</code>", body)
    return f'<div class="notice" id="twin-notice"><strong>{_html.escape(notice[0])}:</strong> {body}</div>'


def _provenance(results: dict) -> str:
    prov = results["provenance"]
    rows = [("python", prov.get("python")), ("platform", prov.get("platform"))]
    rows += [(f"package {k}", v) for k, v in sorted((prov.get("packages") or {}).items())]
    for role, m in (prov.get("models") or {}).items():
        for k, v in m.items():
            rows.append((f"{role}: {k}", v))
    rows += [(f"option {k}", v) for k, v in (prov.get("options") or {}).items()]
    rows += [(f"step {s}", f"{v['status']}, {v['seconds']:.1f} s") for s, v in results["steps"].items()]
    body = "".join(f"<tr><td>{_html.escape(str(k))}</td><td>{_html.escape(str(v))}</td></tr>" for k, v in rows)
    return (
        '<section id="provenance"><h2>Provenance</h2><details><summary>packages, models, options and step '
        f"timings ({len(rows)} rows; all of it is in <code>results.json</code>)</summary>"
        f"<table><tbody>{body}</tbody></table></details></section>"
    )


def _section_title(markdown: str, key: str) -> str:
    m = re.match(r"#+\s*(.+)", markdown.strip())
    return m.group(1).strip() if m else key


def render_html(
    results: dict,
    out: Path,
    findings: Sequence[Finding],
    views: Optional[Mapping[str, Sequence[tuple[str, Any]]]] = None,
) -> str:
    """The page (a string). ``out``: the results folder (figures are read from ``out/figures``);
    ``views``: ``{"views/<file>": [(title, view), ...]}`` as :func:`drope_lens.report.build.write_views`
    collected them (rendered inline; views not given are linked)."""
    from drope_lens.views.html import OfflinePage, check_offline

    page = OfflinePage()
    views = views or {}
    pair = results["pair"]
    figs = set((results.get("files") or {}).get("figures") or [])
    written_views = set((results.get("files") or {}).get("views") or [])
    body: list[str] = [
        "<h1>drope_lens report</h1>",
        '<ul class="meta">' + "".join(f"<li>{_inline(line[2:])}</li>" for line in header_lines(results)[:3]) + "</ul>",
        _notice(results),
        '<section id="findings"><h2>Findings: the study\'s claims on this pair</h2>',
        f'<p class="summary">{_html.escape(findings_summary(findings, results))} How each verdict is decided: '
        "<code>docs/findings.md</code> (hover a reason to see its rule).</p>",
        _findings_table(findings),
        "</section>",
    ]
    toc = []
    sections: list[str] = []
    for section in report_sections():
        md = section.render(results, results["experiments"])
        if not md:
            continue
        title = _section_title(md, section.key)
        toc.append(f'<a href="#step-{section.key}">{_html.escape(title)}</a>')
        sections.append(_render_section(section, md, title, out, figs, written_views, views, page))
    body.append('<nav class="toc">' + "".join(toc) + "</nav>")
    body += sections
    body.append(_provenance(results))
    title = f"drope_lens report: {pair['rope']} vs {pair['drope']}"
    doc = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_html.escape(title)}</title>\n<style>{_CSS}</style>\n{page.bundle_script()}\n</head>\n"
        "<body>\n" + "\n".join(b for b in body if b) + "\n</body>\n</html>\n"
    )
    check_offline(doc)
    return doc


def _render_section(
    section: Section,
    md: str,
    title: str,
    out: Path,
    figs: set,
    written_views: set,
    views: Mapping[str, Sequence[tuple[str, Any]]],
    page: Any,
) -> str:
    text = md.strip()
    if text.startswith("#"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
    figures = [_figure(out, name, cap) for name, cap in section.figures if f"figures/{name}" in figs]
    parts = [
        f'<section id="step-{section.key}"><h2>{_html.escape(title)}</h2>',
        '<div class="step">',
        f'<div class="text">{_section_text_html(text)}</div>',
    ]
    if figures:
        parts.append('<div class="figs">' + "\n".join(figures) + "</div>")
    parts.append("</div>")
    shown = []
    for name, cap in section.views:
        rel = f"views/{name}"
        inner = ""
        if rel in views:
            inner = "\n".join(
                f"<h3>{_html.escape(t)}</h3>\n{page.render(v)}" if t else page.render(v) for t, v in views[rel]
            )
        if inner and len(inner) <= INLINE_VIEW_BYTES:
            shown.append(
                f'<div class="view" data-view="{_html.escape(rel)}"><h3>{_html.escape(cap[:1].upper() + cap[1:])} '
                f'<small>(also <a href="{_html.escape(rel)}">{_html.escape(rel)}</a>)</small></h3>\n{inner}</div>'
            )
        elif rel in written_views:
            size = f", {len(inner) / 1e6:.1f} MB" if inner else ""
            shown.append(
                f'<p class="view-link">View: <a href="{_html.escape(rel)}">{_html.escape(cap)}</a> '
                f"(its own page{size}; opens offline)</p>"
            )
    if shown:
        parts.append('<div class="views">' + "\n".join(shown) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)
