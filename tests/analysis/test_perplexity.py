"""Perplexity (batched = unbatched = HF loss) and the text sources."""

import math
import sys

import pytest
import torch

from drope_lens.analysis.perplexity import perplexity
from drope_lens.data.texts import GENRES, builtin_split, builtin_texts, load_hf_texts, load_text_file
from drope_lens.errors import NonFiniteError
from drope_lens.loading import hooked_from_hf
from drope_lens.testing import TINY_TEXTS, tiny_llama
from tests.support import hooks_left


def hf_ppl(hf, tokenizer, texts):
    """Reference: HF's mean loss per text (labels=input_ids) times its T-1 targets."""
    nll, n = 0.0, 0
    for text in texts:
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            loss = hf(ids, labels=ids).loss.double().item()
        nll += loss * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    return math.exp(nll / n), n


@pytest.fixture(scope="module")
def tiny_pair(tokenizer):
    hf = tiny_llama(seed=2)
    return hf, hooked_from_hf(hf, tokenizer)


def test_batched_equals_unbatched_equals_hf(tiny_pair, tokenizer):
    hf, model = tiny_pair
    texts = list(TINY_TEXTS)
    ref, n = hf_ppl(hf, tokenizer, texts)
    one = perplexity(model, texts, batch_size=1)
    many = perplexity(model, texts, batch_size=3)
    assert one.n_targets == many.n_targets == n  # BOS is never a target: sum of (T - 1)
    assert many.ppl == pytest.approx(ref, rel=1e-5)
    assert one.ppl == pytest.approx(many.ppl, rel=1e-6)
    assert many.per_text_targets == [len(model.to_tokens(t)[0]) - 1 for t in texts]
    assert many.per_text_nll == pytest.approx(one.per_text_nll, rel=1e-6)
    d = many.to_dict()
    assert d["ppl"] == many.ppl and len(many.to_dataframe()) == len(texts)
    # weighting by predicted tokens: the pooled value is not the mean of per-text perplexities
    assert math.exp(sum(many.per_text_nll) / sum(many.per_text_targets)) == pytest.approx(many.ppl)


def test_token_batch_input_and_max_length(tiny_pair):
    _, model = tiny_pair
    batch = model.to_tokens(TINY_TEXTS[1])
    full = perplexity(model, batch)
    cut = perplexity(model, [TINY_TEXTS[1]], max_length=5)
    assert full.n_targets == batch.shape[1] - 1 and cut.n_targets == 4
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(model, batch[:, :1])


def test_fwd_hooks_apply_and_are_removed_on_error(tiny_pair):
    _, model = tiny_pair
    texts = list(TINY_TEXTS[:2])

    def nan_logits(x, hook):
        return torch.full_like(x, float("nan"))

    with pytest.raises(NonFiniteError):
        perplexity(model, texts, fwd_hooks=[("ln_final.hook_normalized", nan_logits)])
    assert not hooks_left(model)

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        perplexity(model, texts, fwd_hooks=[("blocks.1.hook_resid_pre", boom)])
    assert not hooks_left(model)
    assert perplexity(model, texts, fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: 0 * x)]).ppl != pytest.approx(
        perplexity(model, texts).ppl, rel=1e-4
    )


@pytest.mark.slow
def test_embedded_perplexity_equals_hf_loss(embedded_rope, embedded_hf):
    texts = [builtin_texts("conversational")[0][:160], builtin_texts("factual")[1][:300], "Hello there."]
    ref, n = hf_ppl(embedded_hf, embedded_rope.tokenizer, texts)
    for bs in (1, 4):
        res = perplexity(embedded_rope, texts, batch_size=bs)
        assert res.n_targets == n
        assert abs(res.ppl - ref) / ref < 1e-4, (bs, res.ppl, ref)


# ------------------------------------------------------------------ text sources
def test_builtin_texts():
    assert GENRES == ("literary", "technical", "conversational", "factual", "repetitive")
    everything = builtin_texts()
    assert len(everything) >= 12 and len(set(everything)) == len(everything)
    for g in GENRES:
        texts = builtin_texts(g)
        assert 2 <= len(texts) <= 3
        for t in texts:
            assert 120 <= len(t.split()) <= 300, (g, len(t.split()))
    lowered = " ".join(everything).lower()
    for phrase in ("hobbit", "ishmael", "best of times", "quick brown fox", "machine learning models"):
        assert phrase not in lowered
    split = builtin_split()
    assert not set(split["identify"]) & set(split["eval"])
    assert sorted(split["identify"] + split["eval"]) == sorted(everything)
    with pytest.raises(ValueError, match="Unknown genre"):
        builtin_texts("poetry")


def test_load_text_file(tmp_path, tokenizer):
    path = tmp_path / "t.txt"
    path.write_text("the cat saw a dog .\nthe dog ran .\n\n\nparis is in france .\n\n  \n" + "one two " * 40)
    paras = load_text_file(path)
    assert paras == ["the cat saw a dog . the dog ran .", "paris is in france .", ("one two " * 40).strip()]
    chunks = load_text_file(path, max_tokens=16, tokenizer=tokenizer)
    assert all(len(tokenizer(c, add_special_tokens=False)["input_ids"]) <= 15 for c in chunks)
    assert " ".join(chunks).split() == " ".join(paras).split()  # nothing lost or duplicated
    with pytest.raises(FileNotFoundError):
        load_text_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="tokenizer"):
        load_text_file(path, max_tokens=10)


def test_load_hf_texts_without_datasets_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="builtin_texts"):
        load_hf_texts("wikitext", config="wikitext-2-raw-v1")


def test_target_nll_checks_real_positions_only():
    from drope_lens.analysis.perplexity import target_nll
    from drope_lens.loading.tokens import TokenBatch

    batch = TokenBatch(torch.tensor([[1, 5, 6, 0], [1, 7, 0, 0]]), torch.tensor([3, 2]))
    logits = torch.randn(2, 4, 10)
    logits[1, 3, 2] = float("nan")  # a pad position: ignored
    nll, count = target_nll(logits, batch)
    assert count.tolist() == [2, 1] and bool(torch.isfinite(nll).all())
    for value in (float("-inf"), float("inf"), float("nan")):
        bad = logits.clone()
        bad[0, 1, 9] = value  # one element at a real position
        with pytest.raises(NonFiniteError):
            target_nll(bad, batch)
    big = torch.full((2, 4, 10), 1e38)  # finite, but the per-position sums overflow to inf
    assert not bool(torch.isfinite(big.sum(-1)).all())
    assert bool(torch.isfinite(target_nll(big, batch)[0]).all())


def test_target_nll_equals_cross_entropy_of_each_row():
    """log-sum-exp minus the target logit == torch's cross-entropy over the real targets."""
    from drope_lens.analysis.perplexity import target_nll
    from drope_lens.loading.tokens import TokenBatch

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 500, (3, 40), generator=g)
    batch = TokenBatch(tokens, torch.tensor([40, 17, 2]))
    logits = 4 * torch.randn(3, 40, 500, generator=g)
    nll, count = target_nll(logits, batch)
    for i, n in enumerate(batch.lengths.tolist()):
        ref = torch.nn.functional.cross_entropy(logits[i, : n - 1].double(), tokens[i, 1:n], reduction="sum")
        assert float(nll[i]) == pytest.approx(float(ref), rel=1e-6)
        assert int(count[i]) == n - 1


def test_target_nll_chunks_are_bit_identical_to_one_pass():
    """The row-chunked cross-entropy sums exactly what one float32 pass over each text's rows sums."""
    from drope_lens.analysis.perplexity import _CE_ROWS, target_nll
    from drope_lens.loading.tokens import TokenBatch

    g = torch.Generator().manual_seed(1)
    lengths = [3 * _CE_ROWS + 5, _CE_ROWS + 1, _CE_ROWS, 2]
    tokens = torch.randint(0, 300, (4, max(lengths)), generator=g)
    logits = 5 * torch.randn(4, max(lengths), 300, generator=g)
    nll, _ = target_nll(logits, TokenBatch(tokens, torch.tensor(lengths)))
    for i, n in enumerate(lengths):
        one = torch.nn.functional.cross_entropy(logits[i, : n - 1], tokens[i, 1:n], reduction="none")
        assert float(nll[i]) == float(one.double().sum())
