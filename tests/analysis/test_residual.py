"""Residual-stream massive activations (Sun et al.): known answers, padding, interventions, HF parity."""

import math

import numpy as np
import pytest
import torch

from drope_lens.analysis.residual import (
    compare_residual_massive,
    first_delimiter,
    is_delimiter,
    massive_activation_hooks,
    residual_intervention,
    residual_massive_activations,
    true_median,
)
from drope_lens.loading import encode, hooked_from_hf
from drope_lens.testing import TINY_TEXTS, tiny_llama
from tests.support import EMBEDDED_TEXTS

BIG_CHANNEL = 13


@pytest.fixture(scope="module")
def model(tokenizer):
    return hooked_from_hf(tiny_llama(seed=3, num_hidden_layers=3), tokenizer)


@pytest.fixture(scope="module")
def embedding_model(tokenizer):
    """Attention and MLP write nothing, so every resid_post is the embedding; BOS has one huge channel."""
    m = hooked_from_hf(tiny_llama(seed=4, num_hidden_layers=3), tokenizer)
    with torch.no_grad():
        for b in m.blocks:
            b.attn.W_O.zero_()
            b.mlp.W_out.zero_()
        m.W_E[tokenizer.bos_token_id, BIG_CHANNEL] = -700.0
    return m


def test_true_median():
    assert float(true_median(torch.tensor([3.0, 1.0, 2.0]))) == 2.0
    assert float(true_median(torch.tensor([4.0, 1.0, 2.0, 3.0]))) == 2.5
    with pytest.raises(ValueError):
        true_median(torch.tensor([]))


def test_delimiters():
    assert is_delimiter(".") and is_delimiter(" .") and is_delimiter("\n") and is_delimiter("\n\n")
    assert not is_delimiter("a.") and not is_delimiter(",") and not is_delimiter(" ")
    assert first_delimiter(["<s>", "a", ".", "b", "."]) == 2
    assert first_delimiter([".", "a"]) == -1  # BOS never counts


def test_known_bos_outlier_in_every_layer(embedding_model, tokenizer):
    m = embedding_model
    texts = list(TINY_TEXTS)
    res = residual_massive_activations(m, texts, top_k=3)
    batch = encode(tokenizer, texts)
    W_E = m.W_E.detach().double()
    for t, n in enumerate(batch.lengths.tolist()):
        emb = W_E[batch.tokens[t, :n]].abs().numpy()  # the residual of every layer, independently
        med = float(np.median(emb))
        for li in range(m.cfg.n_layers):
            assert res.position[t, li, 0] == 0 and res.channel[t, li, 0] == BIG_CHANNEL
            assert res.value[t, li, 0] == pytest.approx(700.0, rel=1e-6)
            assert res.signed[t, li, 0] == pytest.approx(-700.0, rel=1e-6)
            assert res.median[t, li] == pytest.approx(med, rel=1e-6)
            assert res.ratio[t, li, 0] == pytest.approx(700.0 / med, rel=1e-6)
            assert res.n_over[t, li, 0] == int((emb > 100 * med).sum())
            assert res.at_bos[t, li, 0] and not res.at_bos[t, li, 1]
            assert res.token[t][li][0] == tokenizer.decode([tokenizer.bos_token_id])
    assert res.massive_layers(100.0) == [0, 1, 2]
    assert res.top1_channel() == [BIG_CHANNEL] * 3
    df = res.to_dataframe()
    assert len(df) == len(texts) * 3 * 3
    assert {"text", "layer", "rank", "value", "position", "channel", "median"} <= set(df.columns)


def test_planted_outlier_at_delimiter(model, tokenizer):
    """A hook plants 5000 at the first '.', channel 7, layer 1: found there with the right ratio."""
    text = "paris is in france . rome is in italy ."
    batch = encode(tokenizer, [text])
    toks = [tokenizer.decode([i]) for i in batch.tokens[0].tolist()]
    pos = toks.index(".")

    def plant(x, hook):
        x = x.clone()
        x[0, pos, 7] = 5000.0
        return x

    res = residual_massive_activations(model, [text], top_k=2, fwd_hooks=[("blocks.1.hook_resid_post", plant)])
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", plant)]):
        _, cache = model.run_with_cache(batch.tokens)
    ref = cache["blocks.1.hook_resid_post"][0].abs().double().numpy()
    assert res.position[0, 1, 0] == pos and res.channel[0, 1, 0] == 7
    assert res.first_delimiter == [pos] and res.at_first_delimiter[0, 1, 0]
    assert res.ratio[0, 1, 0] == pytest.approx(5000.0 / np.median(ref), rel=1e-6)
    assert res.value[0, 1, 1] == pytest.approx(np.sort(ref.ravel())[-2], rel=1e-6)


def test_padding_does_not_matter(model):
    texts = list(TINY_TEXTS)
    batched = residual_massive_activations(model, texts, top_k=4, batch_size=5)
    single = residual_massive_activations(model, texts, top_k=4, batch_size=1)
    np.testing.assert_allclose(batched.value, single.value, rtol=1e-5)
    np.testing.assert_allclose(batched.median, single.median, rtol=1e-5)
    np.testing.assert_array_equal(batched.position, single.position)
    np.testing.assert_array_equal(batched.channel, single.channel)


def test_set_to_zero_and_mean(embedding_model, tokenizer):
    m = embedding_model
    texts = list(TINY_TEXTS)
    res = residual_massive_activations(m, texts, top_k=3)
    zero = massive_activation_hooks(res, mode="zero", ratio=100.0)
    assert zero[0][0] == "blocks.0.hook_resid_post" and zero[0][1].channels == [BIG_CHANNEL]
    batch = encode(tokenizer, texts[:1])
    with m.hooks(fwd_hooks=zero):
        _, cache = m.run_with_cache(batch.tokens)
    assert float(cache["blocks.2.hook_resid_post"][0, 0, BIG_CHANNEL]) == 0.0
    base = residual_massive_activations(m, texts[:1], top_k=3)
    after = residual_massive_activations(m, texts[:1], top_k=3, fwd_hooks=zero)
    assert after.value[0, 2, 0] < base.value[0, 2, 0] / 10
    # mean of the massive entries over texts is -700 here: set-to-mean changes nothing
    iv = residual_intervention(m, texts, res, ratio=100.0)
    assert iv.ppl["mean"].ppl == pytest.approx(iv.ppl["baseline"].ppl, rel=1e-6)
    assert iv.means == {BIG_CHANNEL: pytest.approx(-700.0)}
    assert not math.isclose(iv.ppl["zero"].ppl, iv.ppl["baseline"].ppl, rel_tol=1e-3)
    assert set(iv.to_dataframe()["condition"]) == {"baseline", "zero", "mean"}


def test_intervention_errors(model):
    res = residual_massive_activations(model, list(TINY_TEXTS), top_k=2)
    with pytest.raises(ValueError, match="mode"):
        massive_activation_hooks(res, mode="half")
    with pytest.raises(ValueError, match="nothing to intervene"):
        massive_activation_hooks(res, ratio=1e9)
    with pytest.raises(ValueError, match="top_k"):
        residual_massive_activations(model, ["the cat"], top_k=0)


def test_compare_pair(embedding_model, model):
    texts = list(TINY_TEXTS)
    a = residual_massive_activations(embedding_model, texts)
    c = compare_residual_massive(a, a)
    assert c.layer_jaccard == 1.0 and c.same_channel_layers == [0, 1, 2]
    b = residual_massive_activations(model, texts)
    cb = compare_residual_massive(a, b, ratio=100.0)
    assert cb.massive_layers[0] == [0, 1, 2]
    assert len(cb.to_dataframe()) == 3 and "layer_jaccard" in cb.to_dict()


@pytest.mark.slow
def test_embedded_matches_hf_hidden_states(embedded_rope, embedded_hf):
    """Top-k |resid_post| entries and medians equal a plain-HF computation (hidden states)."""
    k = 5
    res = residual_massive_activations(embedded_rope, list(EMBEDDED_TEXTS), top_k=k)
    batch = encode(embedded_rope.tokenizer, list(EMBEDDED_TEXTS))
    L = embedded_rope.cfg.n_layers
    for t, n in enumerate(batch.lengths.tolist()):
        grabbed = {}
        handle = embedded_hf.model.layers[-1].register_forward_hook(
            lambda mod, args, out, grabbed=grabbed: grabbed.__setitem__(
                "last", out[0] if isinstance(out, tuple) else out
            )
        )
        try:
            with torch.no_grad():
                out = embedded_hf(batch.tokens[t : t + 1, :n], output_hidden_states=True)
        finally:
            handle.remove()
        hidden = [out.hidden_states[layer + 1][0] for layer in range(L - 1)] + [grabbed["last"].reshape(n, -1)]
        for layer, h in enumerate(hidden):
            a = h.abs().double().numpy()
            order = np.argsort(-a.ravel(), kind="stable")[:k]
            np.testing.assert_allclose(res.value[t, layer], a.ravel()[order], rtol=1e-4)
            np.testing.assert_array_equal(res.position[t, layer], order // a.shape[1])
            np.testing.assert_array_equal(res.channel[t, layer], order % a.shape[1])
            assert res.median[t, layer] == pytest.approx(float(np.median(a)), rel=1e-4)


def test_cli_activations_refuses_bad_options_before_loading(capsys):
    from drope_lens.cli import main

    assert main(["activations", "--top-k", "0"]) == 1
    assert "--top-k" in capsys.readouterr().err
    assert main(["extended", "--max-length", "1"]) == 1
