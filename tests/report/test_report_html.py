"""report.html: one self-contained page (findings at the top, figures beside their numbers, views inline),
report.md with its figures inline, and the page opened in headless Chromium with the network off."""

from __future__ import annotations

import json
import os
import re

import pytest

from drope_lens.loading import ModelPair, hooked_from_hf, to_nope
from drope_lens.report.findings import CLAIMS
from drope_lens.report.runner import ReportOptions, run_report
from drope_lens.testing import plant_channels, tiny_llama
from tests.browser import REQUIRE_ENV, Chromium, find_chromium

STEPS = ("massive", "phase", "disruption")


@pytest.fixture(scope="module")
def report_dir(tokenizer, tmp_path_factory):
    rope = hooked_from_hf(tiny_llama(seed=11), tokenizer)
    plant_channels(rope, {"q": [(0, 1, 3), (1, 2, 5)], "k": [(0, 0, 7), (1, 1, 2)]}, scale=30.0)
    out = tmp_path_factory.mktemp("report")
    run_report(ModelPair(rope, to_nope(rope)), out, ReportOptions(quick=True, n_seeds=3, max_length=48, steps=STEPS))
    return out


def test_report_html_is_one_offline_page_with_findings_figures_and_views(report_dir):
    from drope_lens.views import check_offline

    results = json.loads((report_dir / "results.json").read_text())
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    check_offline(page)  # no external script, style, image or import
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert "@font-face" not in page and "fonts.googleapis" not in page
    assert results["files"]["html"] == "report.html"
    assert not [p for p in report_dir.iterdir() if p.name.startswith(".report.html")]  # atomic write: no temp left
    # findings first: the twin notice with the commands, then one row per claim
    top = page[: page.index('id="step-massive"')]
    assert 'id="twin-notice"' in top and "drope-lens recalibrate" in top and "--drope recalibrated" in top
    assert top.count('<tr class="') == len(CLAIMS) == len(results["findings"])
    assert {f["verdict"] for f in results["findings"]} <= {"confirmed", "contradicted", "not testable here"}
    # every figure embedded once, as a PNG data URI, in its step's section, beside that step's text
    figures = results["files"]["figures"]
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)) == len(figures) > 5
    sections = re.findall(r'<section id="step-(\w+)">', page)
    assert sections[:3] == ["massive", "disruption", "phase"]  # the report's own order (report.md's 1., 2., 3.)
    massive = page[page.index('id="step-massive"') : page.index('id="step-disruption"')]
    assert "qkv_totals.png" in massive and '<div class="figs">' in massive and "<table>" in massive
    # views: the circuitsvis attention heads inline (bundle once), every view file linked
    assert page.count('class="dl-cv"') >= 2 and page.count("CircuitsVis.render(") >= 2
    from drope_lens.views.html import _bundle

    assert page.count(_bundle()[:300]) == 1  # circuitsvis's bundle, inlined once
    for view in results["files"]["views"]:
        assert f'href="{view}"' in page
    # long per-layer tables are folded, short ones shown
    assert "<details><summary>" in page
    assert 'id="provenance"' in page and "transformer-lens" in page


def test_report_md_shows_its_figures_inline_and_the_findings_first(report_dir):
    results = json.loads((report_dir / "results.json").read_text())
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    findings_at = md.index("## Findings: the study's claims on this pair")
    assert findings_at < md.index("## 1. Massive values")
    assert "> **The DroPE side is a zero-shot twin:**" in md[: findings_at + 2000]
    for fig in results["files"]["figures"]:
        assert re.search(rf"!\[[^\]]+\]\({re.escape(fig)}\)", md), fig
        assert (report_dir / fig).is_file()
    for view in results["files"]["views"]:
        assert f"]({view})" in md


# ------------------------------------------------------------------------------------------ the browser
def _browser() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but no Chromium is installed (apt-get install -y chromium)")
        pytest.skip(f"no Chromium installed (apt-get install -y chromium; CI sets {REQUIRE_ENV}=1 and installs it)")
    return path


def test_report_html_renders_in_headless_chromium_with_the_network_off(report_dir, tmp_path):
    binary = _browser()
    shot = tmp_path / "report_top.png"
    with Chromium(binary) as browser:
        page = browser.open_page(report_dir / "report.html", screenshot=shot)
        views = [
            browser.open_page(report_dir / v)
            for v in json.loads((report_dir / "results.json").read_text())["files"]["views"]
        ]
    assert page.external_requests == [] and page.requests[0].startswith("file:")
    assert page.console_errors == [] and page.exceptions == []
    assert len(page.images) >= 5 and all(i["complete"] and i["naturalWidth"] > 0 for i in page.images), page.images
    assert page.circuitsvis and all(v["children"] > 0 and v["height"] > 0 for v in page.circuitsvis), page.circuitsvis
    assert "Findings: the study's claims on this pair" in page.text_head and "zero-shot twin" in page.text_head
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    for v in views:
        assert v.external_requests == [] and v.console_errors == [] and v.exceptions == [], v.url
        assert all(c["children"] > 0 for c in v.circuitsvis), v.url
    assert any(v.circuitsvis for v in views)  # attention.html mounts circuitsvis


def test_the_browser_check_sees_network_requests_and_broken_images(tmp_path):
    """The check above can fail: a page that reaches for the network is caught."""
    binary = _browser()
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><script src="https://cdn.example.com/x.js"></script></head>'
        '<body><img src="https://example.com/a.png"><img src="data:image/png;base64,AAAA">'
        "<script>console.error('boom')</script></body></html>"
    )
    with Chromium(binary) as browser:
        page = browser.open_page(bad, settle=0.5)
    assert "https://cdn.example.com/x.js" in page.external_requests
    assert "https://example.com/a.png" in page.external_requests
    assert [i["naturalWidth"] for i in page.images] == [0, 0]
    assert any("boom" in e for e in page.console_errors)


def test_per_layer_tables_fold_headline_tables_stay_open():
    from drope_lens.report.html import _section_text_html

    layer_table = "Per layer:\n\n| layer | a | b |\n|---|---|---|\n" + "".join(f"| {i} | 1 | 2 |\n" for i in range(30))
    task_table = "| model | task | acc |\n|---|---|---|\n" + "".join(f"| m | t{i} | 0.5 |\n" for i in range(32))
    html = _section_text_html(layer_table + "\n" + task_table)
    assert html.count("<details>") == 1 and "<summary>Per layer (30 rows)</summary>" in html
    assert html.index("</details>") < html.index("t31")  # the task table is after the fold, open


def test_a_large_view_is_linked_not_inlined(report_dir, monkeypatch):
    from drope_lens.report import html as H
    from drope_lens.report.findings import evaluate_findings
    from drope_lens.views import HtmlView

    results = json.loads((report_dir / "results.json").read_text())
    big = HtmlView("<div>" + "<span>x</span>" * 500 + "</div>")
    small = HtmlView("<div>small map</div>")
    views = {"views/massive_channels.html": [("big", big)], "views/sink_scores.html": [("small", small)]}
    monkeypatch.setattr(H, "INLINE_VIEW_BYTES", 1000)
    page = H.render_html(results, report_dir, evaluate_findings(results), views)
    assert "small map" in page and "<span>x</span>" not in page
    assert 'class="view-link">View: <a href="views/massive_channels.html">' in page
