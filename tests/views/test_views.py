"""Views: attention patterns by hook, offline circuitsvis pages, SVG maps, matplotlib figures."""

import re

import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

import drope_lens.views as dv
from drope_lens.loading import ModelPair, hooked_from_hf, to_nope
from drope_lens.testing import tiny_llama

TEXT = "the cat saw the dog . remember the secret number 4 2 and say it"
BUNDLE_MARK = "var CircuitsVis="


@pytest.fixture(scope="module")
def pair(tokenizer):
    rope = hooked_from_hf(tiny_llama(), tokenizer)
    return ModelPair(rope, to_nope(rope))


def _n_tokens(pair, text=TEXT):
    return int(pair.encode(text).lengths[0])


def _assert_offline_page(page: str) -> None:
    dv.check_offline(page)
    assert "unpkg.com" not in page and not re.search(r"from\s*[\"']https?://", page)
    assert not re.search(r"<script[^>]*src=", page)
    assert page.count(BUNDLE_MARK) == 1  # bundle inlined exactly once


# --------------------------------------------------------------------------- attention patterns


@pytest.mark.parametrize("which", ["rope", "drope"])
def test_patterns_match_run_with_cache_and_rows_sum_to_one(pair, which):
    model = getattr(pair, which)
    n = _n_tokens(pair)
    pattern, str_tokens = dv.attention_patterns(model, TEXT, layer=1)
    assert pattern.dtype == torch.float32 and pattern.shape == (model.cfg.n_heads, n, n)
    assert len(str_tokens) == n and str_tokens[0] == "<s>" and str_tokens[2] == "cat"
    torch.testing.assert_close(pattern.sum(-1), torch.ones(model.cfg.n_heads, n), atol=1e-5, rtol=0)
    assert torch.all(pattern.triu(1) == 0)  # causal
    _, cache = model.run_with_cache(pair.encode(TEXT).tokens, names_filter="blocks.1.attn.hook_pattern")
    torch.testing.assert_close(pattern, cache["pattern", 1][0].float(), atol=1e-6, rtol=0)
    sub, _ = dv.attention_patterns(model, TEXT, layer=1, heads=[3, 0])
    torch.testing.assert_close(sub, pattern[[3, 0]])


def test_rope_and_nope_patterns_differ(pair):
    a, _ = dv.attention_patterns(pair.rope, TEXT, layer=0)
    b, _ = dv.attention_patterns(pair.drope, TEXT, layer=0)
    assert (a - b).abs().max() > 1e-3


def test_token_inputs_are_equivalent(pair):
    batch = pair.encode(TEXT)
    ref, toks = dv.attention_patterns(pair.rope, TEXT, layer=0, heads=1)
    for x in (batch, batch.tokens[0], batch.tokens, batch.tokens[0].tolist()):
        p, t = dv.attention_patterns(pair.rope, x, layer=0, heads=1)
        assert torch.equal(p, ref) and t == toks
    padded = pair.encode([TEXT, "the cat"]).select([1])  # one row of a padded batch: pads dropped
    p, t = dv.attention_patterns(pair.rope, padded, layer=0)
    assert p.shape[-1] == 3 and t == ["<s>", "the", "cat"]


def test_hooks_removed_even_on_error(pair):
    model = pair.rope
    hp = model.blocks[1].attn.hook_pattern
    dv.attention_patterns(model, TEXT, layer=1)
    assert len(hp._forward_hooks) == 0
    bad = torch.tensor([1, 5, 10_000])  # out of vocabulary: the forward pass raises inside the hooks
    with pytest.raises(IndexError):
        dv.attention_patterns(model, bad, layer=1)
    assert len(hp._forward_hooks) == 0 and model.context_level == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer=2), "out of range"),
        (dict(layer=-1), "out of range"),
        (dict(layer=0, heads=4), "out of range"),
        (dict(layer=0, heads=[]), "empty"),
        (dict(layer=0, heads=[0.5]), "ints"),
    ],
)
def test_pattern_argument_errors(pair, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dv.attention_patterns(pair.rope, TEXT, **kwargs)


def test_pattern_input_errors(pair):
    with pytest.raises(ValueError, match="empty"):
        dv.attention_patterns(pair.rope, "  ", layer=0)
    with pytest.raises(ValueError, match="one text"):
        dv.attention_patterns(pair.rope, pair.encode([TEXT, "a cat"]), layer=0)
    with pytest.raises(ValueError, match="No tokens"):
        dv.attention_patterns(pair.rope, torch.tensor([], dtype=torch.long), layer=0)
    with pytest.raises(ValueError, match="one text"):
        dv.attention_patterns(pair.rope, ["a", "b"], layer=0)


# --------------------------------------------------------------------------- circuitsvis views, HTML


def test_attention_heads_view_renders_offline(pair, tmp_path):
    view = dv.attention_heads_view(pair.rope, TEXT, layer=1, heads=[0, 2])
    assert hasattr(view, "local_src")  # a circuitsvis RenderedHTML for notebooks
    page = dv.to_offline_html(view, title="one model")
    _assert_offline_page(page)
    assert "CircuitsVis.AttentionHeads" in page
    for tok in ("secret", "remember", "<s>"):
        assert f'"{tok}"' in page
    assert '"L1H0"' in page and '"L1H2"' in page and '"L1H1"' not in page
    path = dv.save_html(tmp_path / "v" / "one.html", page)
    assert path.read_text(encoding="utf-8") == page
    assert [p.name for p in path.parent.iterdir()] == ["one.html"]  # no temp file left behind


def test_pair_view_side_by_side(pair, tmp_path):
    group = dv.pair_attention_view(pair, TEXT, layer=1)
    assert isinstance(group, dv.ViewGroup) and len(group) == 2 and group.layout == "row"
    assert [t for t, _ in group.views] == [pair.labels["rope"], pair.labels["drope"]]
    page = dv.to_offline_html(group, title="pair")
    _assert_offline_page(page)
    assert page.count("CircuitsVis.AttentionHeads") == 2
    assert '"RoPE L1H0"' in page and '"NoPE L1H3"' in page
    assert "zero-shot NoPE" in page and "(RoPE, theta=10000)" in page
    frag = group._repr_html_()  # notebook display works offline too
    assert frag.count(BUNDLE_MARK) == 1 and "<html" not in frag
    path = group.save(tmp_path / "pair.html")
    assert path.stat().st_size > 1_000_000


def test_cdn_html_is_refused_and_props_are_escaped():
    import circuitsvis as cv

    view = cv.tokens.colored_tokens(["</script><b>x", "<!--", "ok"], [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="external resource"):
        dv.check_offline(str(view))  # the CDN form
    with pytest.raises(ValueError, match="external resource"):
        dv.to_offline_html('<script src="https://example.org/x.js"></script>', title="bad")
    page = dv.to_offline_html([("tokens", view), ("again", view)], title="escaping")
    _assert_offline_page(page)
    # Only our 3 script tags (bundle + 2 views) are closed; the data and the bundle never close one.
    assert page.count("</script>") == 3
    assert "<\\/script><b>x" in page


def test_page_mixes_views_maps_and_figures(pair):
    fig = dv.plot_layer_metric({"a (RoPE, theta=1)": [1, 2, 3]}, ylabel="y", title="t")
    page = dv.to_offline_html(
        {
            "attention": dv.attention_heads_view(pair.drope, TEXT, layer=0),
            "sinks": dv.sink_score_map(np.full((2, 4), 0.5)),
            "figure": fig,
        },
        title="mixed",
        description="demo",
    )
    _assert_offline_page(page)
    assert page.count("<h2>") == 3 and "data:image/png;base64," in page and "<svg" in page
    with pytest.raises(ValueError, match="No views"):
        dv.to_offline_html([], title="x")
    with pytest.raises(TypeError):
        dv.to_offline_html(object(), title="x")


# --------------------------------------------------------------------------- SVG maps


def test_sink_score_map_cells_titles_and_caption():
    scores = np.array([[0.1, 0.9, 0.3], [np.nan, 0.2, 0.95]])
    view = dv.sink_score_map(torch.tensor(scores), threshold=0.3)
    html = view.html
    dv.check_offline(html)
    assert html.count("<title>") == 6  # one hover title per (layer, head)
    assert "<title>L0 H1: 0.9</title>" in html and "<title>L1 H0: nan</title>" in html
    assert "3 of 5 heads (60.0%)" in html and "1 cells are NaN" in html
    assert html.count('stroke="#000"') == 3  # outlined heads >= threshold
    assert view._repr_html_() == html
    with pytest.raises(ValueError, match="dimensions"):
        dv.sink_score_map(np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        dv.sink_score_map(np.zeros((0, 3)))


@pytest.mark.parametrize(
    "shape, d_head, n_titles",
    [((4, 8), None, 32), ((3, 4, 8), None, 96), ((3, 32), 8, 96)],
)
def test_massive_channel_map_shapes(shape, d_head, n_titles):
    values = np.arange(np.prod(shape), dtype=float).reshape(shape) + 1
    html = dv.massive_channel_map(values, d_head=d_head, log=True).html
    assert html.count("<title>") == n_titles and "log scale" in html
    if len(shape) == 3 or d_head:
        assert "<title>L2 H3 dim 7: value 96</title>" in html
        assert html.count("<line ") == 3  # separators between the 4 heads
    else:
        assert "<title>H3 dim 7: value 32</title>" in html


def test_large_map_is_one_embedded_png_with_row_titles():
    values = np.random.rand(30, 9, 256)  # 69k cells
    html = dv.massive_channel_map(values).html
    dv.check_offline(html)
    assert html.count("<image ") == 1 and "data:image/png;base64," in html
    assert html.count("<title>") == 30 and len(html) < 500_000  # ~8 MB as per-cell SVG


def test_massive_channel_mask_and_errors():
    mask = np.zeros((2, 3, 4), dtype=bool)
    mask[1, 2, 3] = mask[0, 0, 0] = True
    html = dv.massive_channel_map(torch.tensor(mask)).html
    assert "2 massive channels of 24." in html and "<title>L1 H2 dim 3: value massive</title>" in html
    with pytest.raises(ValueError, match="does not divide"):
        dv.massive_channel_map(np.zeros((2, 10)), d_head=4)
    with pytest.raises(ValueError, match="d_head=5"):
        dv.massive_channel_map(np.zeros((2, 3, 4)), d_head=5)


# --------------------------------------------------------------------------- figures

ROPE = "SmolLM2-135M-Instruct (RoPE, theta=100000)"
NOPE = "SmolLM2-135M-Instruct (zero-shot NoPE (RoPE removed, not recalibrated))"


def _bars(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def test_short_label():
    assert dv.short_label(ROPE) == "SmolLM2-135M-Instruct (RoPE)"
    assert dv.short_label(NOPE) == "SmolLM2-135M-Instruct (zero-shot NoPE)"
    assert dv.short_label("SakanaAI/Llama-2-7b-hf-DroPE (DroPE checkpoint (RoPE removed, recalibrated))") == (
        "Llama-2-7b-hf-DroPE (DroPE)"
    )
    assert dv.short_label(
        "SmolLM2-135M-Instruct (RoPE removed, recalibrated on 122,880 tokens; nope, lr 1e-04 "
        "cosine (warm-up 10), 256x4x1 tokens/step, float32, seed 0)"
    ) == ("SmolLM2-135M-Instruct (RoPE removed, recalibrated on 122,880 tokens)")
    assert len(dv.short_label("x" * 100, max_len=20)) == 20


def test_plot_qkv_totals_and_layer_counts(tmp_path):
    fig = dv.plot_qkv_totals({ROPE: {"Q": (120, 5), "K": (80, 3), "V": 4}, NOPE: {"Q": (60, 2), "K": (30, 1), "V": 2}})
    (ax,) = fig.axes
    bars = _bars(ax)
    assert len(bars) == 2 and all(len(b) == 3 for b in bars) and all(b.errorbar is not None for b in bars)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [dv.short_label(ROPE), dv.short_label(NOPE)]
    path = dv.save_figure(fig, tmp_path / "figs" / "qkv.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["qkv.png"]

    fig = dv.plot_layer_counts({ROPE: np.arange(6), NOPE: torch.arange(6) * 0.5}, tensor="K")
    (ax,) = fig.axes
    assert len(ax.lines) == 2 and len(ax.collections) == 1 and "K" in ax.get_title()
    fig = dv.plot_layer_counts({"a": [1, 2], "b": [2, 3], "c": [0, 1]})
    assert len(fig.axes[0].lines) == 3 and len(fig.axes[0].collections) == 0


def test_plot_disruption_mr_and_tasks():
    fig = dv.plot_disruption_ppl(
        {
            ROPE: {"baseline": 1.3, "massive": 1508.5, "random": (1.31, 0.01)},
            NOPE: {"baseline": 1.49, "massive": 22.7, "random": (1.49, 0.02)},
        }
    )
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and len(_bars(ax)) == 3 and all(len(b) == 2 for b in _bars(ax))

    fig = dv.plot_mr({ROPE: (115929, 110000, 120000), NOPE: (1421, 1300, 1500)})
    (ax,) = fig.axes
    assert len(_bars(ax)[0]) == 2 and any(t.get_text() == "ratio 81.6×" for t in ax.texts)

    acc = {
        label: {task: {"baseline": (0.9, 0.85, 0.95), "Q/K disrupted": 0.5} for task in ("cities", "passkey", "imdb")}
        for label in (ROPE, NOPE)
    }
    fig = dv.plot_task_degradation(acc)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    assert all(len(_bars(ax)) == 2 and len(_bars(ax)[0]) == 3 for ax in visible)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["baseline", "Q/K disrupted"]
    with pytest.raises(ValueError, match="non-empty dict"):
        dv.plot_task_degradation({})


def test_plot_layer_metric_interventions_heatmap(tmp_path):
    fig = dv.plot_layer_metric({ROPE: [1, 10, 100], NOPE: [2, 3, 4]}, ylabel="BOS norm", title="t", log=True)
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_yscale() == "log"
    zeros = dv.plot_layer_metric({ROPE: [0, 0, 0], NOPE: [0, 0, 0]}, ylabel="BOS write", title="t", log=True)
    assert zeros.axes[0].get_yscale() == "linear"  # no positive value: a log axis would be empty
    with pytest.raises(ValueError, match="1-D"):
        dv.plot_layer_metric({ROPE: [[1, 2]]}, ylabel="y", title="t")

    values = {c: {ROPE: np.random.rand(5), NOPE: np.random.rand(5)} for c in ("baseline", "BOS-MLP", "Q/K", "random")}
    fig = dv.plot_interventions(values, ylabel="BOS ratio")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == list(values) and all(len(ax.lines) == 2 for ax in visible)

    fig = dv.plot_sink_heatmap(np.random.rand(4, 3))
    assert len([ax for ax in fig.axes if ax.images]) == 1
    fig = dv.plot_sink_heatmap({ROPE: np.random.rand(4, 3), NOPE: torch.rand(4, 3)})
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 and panels[0].images[0].get_array().shape == (4, 3)
    assert isinstance(fig, Figure)
    dv.save_figure(fig, tmp_path / "sinks.svg")
    assert (tmp_path / "sinks.svg").read_text().lstrip().startswith("<?xml")


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_pair_view_on_embedded_model(embedded_rope, embedded_nope, tmp_path):
    pair = ModelPair(embedded_rope, embedded_nope)
    text = "The capital of France is Paris. The capital of Italy is Rome."
    pattern, toks = dv.attention_patterns(pair.drope, text, layer=1)
    assert pattern.shape == (9, len(toks), len(toks)) and torch.isfinite(pattern).all()
    torch.testing.assert_close(pattern.sum(-1), torch.ones(9, len(toks)), atol=1e-5, rtol=0)
    group = dv.pair_attention_view(pair, text, layer=1)
    path = group.save(tmp_path / "pair.html")
    page = path.read_text(encoding="utf-8")
    _assert_offline_page(page)
    assert '" Paris"' in page and '"RoPE L1H8"' in page and '"NoPE L1H8"' in page
    assert "SmolLM2-135M-Instruct (RoPE, theta=100000)" in page
