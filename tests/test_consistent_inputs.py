"""Same inputs, same tokens, whatever their type (one max_length semantics)."""

import pytest
import torch
from helpers import tiny_llama

from drope_lens.analysis.perplexity import to_batch
from drope_lens.loading import hooked_from_hf
from drope_lens.loading.tokens import as_batch

TEXTS = ["the quick brown fox jumps over the lazy dog again and again", "a b c d e f g h"]


@pytest.fixture(scope="module")
def model(tokenizer):
    return hooked_from_hf(tiny_llama(seed=5), tokenizer)


@pytest.mark.parametrize("max_length", [3, 6, None])
def test_max_length_same_for_every_input_type(model, max_length):
    full = as_batch(model, TEXTS)
    ref = as_batch(model, TEXTS, max_length=max_length)
    if max_length is not None:
        assert ref.tokens.shape[1] == max_length
    dense = full.tokens[:1, : int(full.lengths[0])]  # an unpadded id tensor
    for fn in (as_batch, lambda m, x, **k: to_batch(m, x, **k)):
        b = fn(model, full, max_length=max_length)
        assert torch.equal(b.tokens, ref.tokens) and torch.equal(b.lengths, ref.lengths)
        t = fn(model, dense, max_length=max_length)
        assert torch.equal(t.tokens, ref.tokens[:1, : t.tokens.shape[1]])
        assert t.tokens.shape[1] == (max_length or dense.shape[1])
