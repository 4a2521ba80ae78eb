"""Gu et al.'s importance of every key, norm curves, Jin's smallest-norm control, M similarity."""

import numpy as np
import pytest
import torch

from drope_lens.analysis.massive import detect_massive
from drope_lens.analysis.peers import concentration, key_importance, key_importance_from, massive_similarity
from drope_lens.hooks.mean_replacement import mean_replace
from drope_lens.loading import encode, hooked_from_hf
from drope_lens.testing import TINY_TEXTS, analytic_bos_attention, analytic_sink_model, plant_channels, tiny_llama


def test_key_importance_from_uniform():
    T = 6
    p = (torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None])[None]
    imp = key_importance_from(p)[0]
    for j in range(T):
        expect = sum(1 / (q + 1) for q in range(j, T)) / (T - j)
        assert float(imp[j]) == pytest.approx(expect)
    assert float(imp[-1]) == pytest.approx(1 / T)


def test_key_importance_analytic_sinks(tokenizer):
    logits = [[4.0, 2.0, -1.0, -3.0], [0.0, 5.0, -5.0, 1.0]]
    m, _ = analytic_sink_model(tokenizer, logits)
    text = TINY_TEXTS[0]
    n = int(encode(tokenizer, [text]).lengths[0])
    res = key_importance(m, [text], max_positions=n + 3)
    q = np.arange(n)
    for layer, row in enumerate(logits):
        for h, b in enumerate(row):
            e = np.exp(b)  # A[q, 0] = e / (e + q); A[q, j>0] = 1 / (e + q)
            a0 = analytic_bos_attention(b, n, include_bos_row=True)
            assert res.importance[layer, h, 0] == pytest.approx(a0, rel=1e-5)
            j = 3
            assert res.importance[layer, h, j] == pytest.approx(np.mean(1 / (e + q[j:])), rel=1e-5)
    assert np.isnan(res.importance[:, :, n:]).all() and res.n_texts[n] == 0
    # the residual never changes (W_O = 0, MLP out = 0): BOS's norm is its embedding's
    assert res.resid_norm[0, 0] == pytest.approx(float(m.W_E[tokenizer.bos_token_id].detach().norm()), rel=1e-5)


def test_norm_curves_vs_cache(tokenizer):
    m = hooked_from_hf(tiny_llama(seed=8), tokenizer)
    texts = list(TINY_TEXTS)
    res = key_importance(m, texts, max_positions=8, batch_size=5)
    batch = encode(tokenizer, texts)
    ks = []
    for t, n in enumerate(batch.lengths.tolist()):
        _, c = m.run_with_cache(batch.tokens[t : t + 1, :n])
        ks.append(c["blocks.1.attn.hook_k"][0, :8].reshape(min(n, 8), -1).norm(dim=-1))
    np.testing.assert_allclose(res.k_norm[1], torch.stack(ks).mean(0).numpy(), rtol=1e-5)


def test_smallest_norm_control_by_hand():
    x = torch.tensor([[[[3.0, 0.0]], [[1.0, 1.0]], [[5.0, 0.5]]]])  # [b=1, T=3, H=1, D=2]
    real = torch.tensor([[True, True, False]])
    new, sel, _ = mean_replace(x, real, k=1, largest=False)
    assert sel.tolist() == [[[False, True]]]  # dim 1 has the smaller norm
    assert new[0, :2, 0, 1].tolist() == [0.5, 0.5] and torch.equal(new[..., 0], x[..., 0])
    assert new[0, 2, 0, 1] == x[0, 2, 0, 1]  # padding untouched
    with pytest.raises(ValueError, match="largest=False"):
        mean_replace(x, real, k=1, largest=False, threshold=5.0)


def test_smallest_norm_hooks(tokenizer):
    from drope_lens.analysis.perplexity import perplexity
    from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks

    m = plant_channels(hooked_from_hf(tiny_llama(seed=9), tokenizer), {"q": [(0, 1, 3)], "k": [(0, 0, 7)]}, 30.0)
    texts = list(TINY_TEXTS)
    base = perplexity(m, texts).ppl
    small = perplexity(m, texts, fwd_hooks=qk_mean_replacement_hooks(m, largest=False)).ppl
    large = perplexity(m, texts, fwd_hooks=qk_mean_replacement_hooks(m)).ppl
    assert small != base and abs(large - base) > abs(small - base)


def test_concentration():
    c = concentration(torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]]))
    assert c["entropy"].tolist() == pytest.approx([np.log(4), 0.0])
    assert c["max_over_mean"].tolist() == pytest.approx([1.0, 4.0])


def test_massive_similarity(tokenizer):
    a_model = plant_channels(hooked_from_hf(tiny_llama(seed=10), tokenizer), {"q": [(0, 1, 3), (1, 2, 5)]}, 30.0)
    b_model = plant_channels(hooked_from_hf(tiny_llama(seed=10), tokenizer), {"q": [(0, 1, 3), (1, 0, 4)]}, 30.0)
    texts = list(TINY_TEXTS)
    a, b = detect_massive(a_model, texts, tensors=("q", "k")), detect_massive(b_model, texts, tensors=("q", "k"))
    same = massive_similarity(a, a)
    assert same.cosine["q"] == pytest.approx([1.0, 1.0]) and same.spearman["q"] == pytest.approx([1.0, 1.0])
    s = massive_similarity(a, b)
    sa, sb = a.aggregate_mask("q").flatten(1), b.aggregate_mask("q").flatten(1)
    for layer in range(2):
        expect = float((sa[layer] & sb[layer]).sum()) / float((sa[layer] | sb[layer]).sum())
        assert s.jaccard["q"][layer] == pytest.approx(expect)
    assert s.jaccard["q"][0] == 1.0 and s.jaccard["q"][1] < 1.0
    assert s.cosine["q"][1] < 1.0
    assert len(s.to_dataframe()) == 4
