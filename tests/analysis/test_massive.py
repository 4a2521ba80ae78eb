"""Massive-value detection: planted channels, padding, hand/HF references, bands, concentration."""

import json
import math

import numpy as np
import pytest
import torch

from drope_lens.analysis.massive import detect_massive, gini, massive_mask, top_share
from drope_lens.analysis.rotary import band_of, rotary_bands, rotary_frequencies
from drope_lens.loading import hooked_from_hf, to_nope
from drope_lens.testing import TINY_TEXTS, plant_channels, tiny_llama
from tests.support import hooks_left

PLANTS = {
    "q": [(0, 0, 3), (0, 2, 10), (1, 1, 5), (1, 3, 20)],
    "k": [(0, 1, 7), (1, 0, 0)],
    "v": [(1, 1, 11)],
}


@pytest.fixture(scope="module")
def planted(tokenizer):
    return plant_channels(hooked_from_hf(tiny_llama(seed=3), tokenizer), PLANTS)


def planted_mask(model, tensor):
    heads = model.cfg.n_heads if tensor == "q" else model.cfg.n_key_value_heads
    mask = torch.zeros(model.cfg.n_layers, heads, model.cfg.d_head, dtype=torch.bool)
    for layer, head, dim in PLANTS[tensor]:
        mask[layer, head, dim] = True
    return mask


@pytest.mark.parametrize("scope", ["layer", "head"])
def test_detection_returns_exactly_the_planted_channels(planted, scope):
    res = detect_massive(planted, list(TINY_TEXTS), scope=scope, batch_size=2)
    assert res.sumsq["k"].shape[2] == planted.cfg.n_key_value_heads == 2  # GQA
    for t in ("q", "k", "v"):
        expected = planted_mask(planted, t)
        for i in range(res.n_texts):
            assert torch.equal(res.masks(t)[i], expected), (t, i)
        assert torch.equal(res.selection("mean_norm").masks[t], expected)
        assert torch.equal(res.selection("union").masks[t], expected)
        assert res.total_mean(t) == len(PLANTS[t]) and res.total_std(t) == 0.0


def test_nope_post_rotary_equals_pre(planted):
    nope = to_nope(planted)
    pre = detect_massive(nope, list(TINY_TEXTS), rotary="pre")
    post = detect_massive(nope, list(TINY_TEXTS), rotary="post", tensors=("q", "k"))
    for t in ("q", "k"):
        assert torch.equal(pre.sumsq[t], post.sumsq[t])
    assert pre.bands is None and pre.band_counts("q") is None
    # RoPE model: post-RoPE norms differ but each rotate-half pair keeps its energy (rotation).
    rpre = detect_massive(planted, list(TINY_TEXTS), rotary="pre", tensors=("q",))
    rpost = detect_massive(planted, list(TINY_TEXTS), rotary="post", tensors=("q",))
    half = planted.cfg.d_head // 2
    pair = lambda s: s[..., :half] + s[..., half:]  # noqa: E731
    assert not torch.allclose(rpre.sumsq["q"], rpost.sumsq["q"])
    torch.testing.assert_close(pair(rpre.sumsq["q"]), pair(rpost.sumsq["q"]), rtol=1e-4, atol=1e-6)


def test_padding_is_excluded_batched_equals_unbatched(planted):
    texts = list(TINY_TEXTS)
    one = detect_massive(planted, texts, batch_size=1)
    many = detect_massive(planted, texts, batch_size=5)
    assert len(set(one.lengths.tolist())) > 1  # the batch really is padded
    for t in ("q", "k", "v"):
        torch.testing.assert_close(one.sumsq[t], many.sumsq[t], rtol=1e-5, atol=1e-6)
        assert torch.equal(one.counts(t), many.counts(t))


def test_counts_equal_a_hand_computation_from_a_cache(tokenizer):
    model = hooked_from_hf(tiny_llama(seed=1), tokenizer)
    texts = list(TINY_TEXTS[:3])
    lam = 1.8  # low enough that an unplanted random model has some "massive" channels
    res = detect_massive(model, texts, threshold=lam, batch_size=3)
    totals = {t: [] for t in "qkv"}
    for i, text in enumerate(texts):
        tokens = model.to_tokens(text)  # unpadded, BOS prepended
        _, cache = model.run_with_cache(tokens)
        for t in "qkv":
            per_layer = []
            for layer in range(model.cfg.n_layers):
                x = cache[f"blocks.{layer}.attn.hook_{t}"][0].double()  # [T, H, D]
                m = x.pow(2).sum(0).sqrt() / math.sqrt(x.shape[0])  # the study's /sqrt(T) cancels
                per_layer.append(int((m > lam * m.mean()).sum()))
            assert res.counts(t)[i].tolist() == per_layer, (t, i)
            totals[t].append(sum(per_layer))
    for t in "qkv":
        assert res.total_mean(t) == pytest.approx(np.mean(totals[t]))
        assert res.total_std(t) == pytest.approx(np.std(totals[t]))  # ddof 0
        assert res.per_layer_mean(t).tolist() == pytest.approx(res.counts(t).double().mean(0).tolist())
    assert sum(res.total_mean(t) for t in "qkv") > 0  # the check above compared non-trivial counts


def test_rotary_bands_match_the_formula(planted):
    freqs = rotary_frequencies(planted)
    d = planted.cfg.d_head
    i = torch.arange(d) % (d // 2)
    expected = planted.cfg.rotary_base ** (-2 * i.double() / d)
    torch.testing.assert_close(freqs, expected, rtol=1e-5, atol=1e-7)
    bands = rotary_bands(planted, context_length=256)
    for b in bands:
        assert b.pair == (b.dim + d // 2) % d
        assert b.wavelength == pytest.approx(2 * math.pi / b.frequency)
        turns = 256 / b.wavelength
        assert b.band == ("low" if turns < 1 else "high" if turns > 32 else "mid")
    assert {b.band for b in bands} == {"low", "mid", "high"}
    assert band_of(math.inf, 100) == "unrotated"
    assert rotary_frequencies(to_nope(planted)) is None


def test_gini_and_top_share_hand_values():
    assert float(gini(torch.tensor([1.0, 1.0, 1.0, 1.0]))) == pytest.approx(0.0)
    assert float(gini(torch.tensor([0.0, 0.0, 0.0, 5.0]))) == pytest.approx(0.75)
    x = np.random.default_rng(0).random(50)
    xs = np.sort(x)
    n = len(xs)
    ref = 1 - 2 * np.sum((n - np.arange(n) - 0.5) * xs) / (n * xs.sum())  # Lorenz-curve form
    assert float(gini(torch.tensor(x))) == pytest.approx(ref)
    assert float(top_share(torch.tensor([1.0] * 99 + [101.0]), 0.01)) == pytest.approx(0.505)


def test_massive_mask_scopes_and_strictness():
    m = torch.tensor([[[1.0, 1.0, 1.0, 9.0], [10.0, 10.0, 10.0, 10.0]]])  # [layer=1, head=2, d=4]
    # layer mean 6.625 -> threshold 1.5 x = 9.94: only the 10s; head scope: head 0 mean 3 -> 9 > 4.5
    assert massive_mask(m, 1.5, "layer").tolist() == [[[False] * 4, [True] * 4]]
    assert massive_mask(m, 1.5, "head").tolist() == [[[False, False, False, True], [False] * 4]]
    # strict ">": a value exactly at the threshold is not massive
    assert not massive_mask(torch.tensor([[2.0, 2.0]]), 1.0, "layer").any()


def test_results_export(planted):
    res = detect_massive(planted, list(TINY_TEXTS[:2]), top=5)
    d = res.to_dict()
    json.dumps(d)
    assert d["tensors"]["q"]["total_mean"] == 4
    top = d["tensors"]["q"]["top_channels"]
    assert len(top) == 5
    assert {(c["layer"], c["head"], c["dim"]) for c in top[:4]} == set(PLANTS["q"])
    assert top[0]["band"] in ("low", "mid", "high") and top[0]["frequency"] > 0
    df = res.to_dataframe()
    assert len(df) == 3 * planted.cfg.n_layers and set(df.tensor) == {"q", "k", "v"}
    assert "Q: 4.0" in res.summary()


@pytest.mark.parametrize(
    "kw",
    [
        dict(threshold=0),
        dict(threshold=-1.0),
        dict(threshold=float("nan")),
        dict(scope="global"),
        dict(rotary="mid"),
        dict(tensors=("q", "o")),
        dict(tensors=()),
    ],
)
def test_bad_options_are_refused(planted, kw):
    with pytest.raises(ValueError):
        detect_massive(planted, ["the cat"], **kw)


def test_hooks_removed_when_detection_raises(planted, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")

    handle = planted.blocks[1].register_forward_pre_hook(boom)  # a torch hook: no TransformerLens hook of its own
    try:
        with pytest.raises(RuntimeError, match="boom"):
            detect_massive(planted, list(TINY_TEXTS))
    finally:
        handle.remove()
    assert not hooks_left(planted)
    from drope_lens.hooks.mask import _REAL_MASK

    assert _REAL_MASK.get() is None


# ------------------------------------------------------------------ the real embedded model (slow)
EMBEDDED_TEXTS = [
    "The committee met on Tuesday to discuss the new budget for the public library.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Rain fell softly on the quiet village while the baker lit his ovens before dawn, "
    "humming an old song about the sea.",
]


def hf_counts(hf, tokenizer, texts, lam=5.0):
    """Independent reference: plain HF forward hooks on q_proj/k_proj/v_proj, one text at a time."""
    cfg = hf.config
    heads = {"q": cfg.num_attention_heads, "k": cfg.num_key_value_heads, "v": cfg.num_key_value_heads}
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    out = {t: [] for t in "qkv"}
    for text in texts:
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        grabbed = {}
        handles = []
        for i, layer in enumerate(hf.model.layers):
            for t in "qkv":

                def grab(mod, inp, outp, i=i, t=t, grabbed=grabbed):
                    grabbed[(i, t)] = outp.detach()

                handles.append(getattr(layer.self_attn, f"{t}_proj").register_forward_hook(grab))
        try:
            with torch.no_grad():
                hf(torch.tensor([ids]))
        finally:
            for h in handles:
                h.remove()
        for t in "qkv":
            per_layer = []
            for i in range(cfg.num_hidden_layers):
                x = grabbed[(i, t)].view(1, len(ids), heads[t], d_head)
                m = x.norm(dim=1)[0]
                per_layer.append(int((m > lam * m.mean()).sum()))
            out[t].append(per_layer)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("nope", [False, True])
def test_embedded_counts_equal_hf_hooks(embedded_rope, embedded_nope, embedded_hf, nope):
    from drope_lens.loading.parity import IdentityRotary

    model = embedded_nope if nope else embedded_rope
    res = detect_massive(model, EMBEDDED_TEXTS, batch_size=2)  # padded batches
    rotary = embedded_hf.model.rotary_emb
    if nope:
        embedded_hf.model.rotary_emb = IdentityRotary(rotary)
    try:
        ref = hf_counts(embedded_hf, model.tokenizer, EMBEDDED_TEXTS)
    finally:
        embedded_hf.model.rotary_emb = rotary
    for t in "qkv":
        assert res.counts(t).tolist() == ref[t], t
    assert res.total_mean("q") > 0 and res.sumsq["k"].shape[2] == 3
