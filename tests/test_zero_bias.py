"""The unembedding / attention-output zero-bias skip changes no number and honours a non-zero bias."""

import pytest
import torch
from helpers import TINY_TEXTS, tiny_llama
from transformer_lens.components import Unembed

from drope_lens.loading import explicit_attention, hooked_from_hf


@pytest.fixture(scope="module")
def model(tokenizer):
    return hooked_from_hf(tiny_llama(seed=5), tokenizer)


def _tl_logits(model, tokens):
    """Logits with TransformerLens's own Unembed.forward (adds b_U whatever it holds)."""
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    return Unembed.forward(model.unembed, model.ln_final(resid))


def test_skip_is_bit_identical_and_obeys_a_nonzero_bias(model):
    tokens = model.to_tokens(list(TINY_TEXTS[:3]), padding_side="right")
    assert not model.unembed.b_U.any()
    with torch.no_grad():
        assert torch.equal(model(tokens), _tl_logits(model, tokens))
        seen = []
        with model.hooks(fwd_hooks=[("unembed.hook_out", lambda t, hook: seen.append(t.clone()))]):
            out = model(tokens)
        assert torch.equal(seen[0], out)  # hooks still fire on the unembedding
        saved = model.unembed.b_U.clone()
        try:
            model.unembed.b_U.add_(torch.linspace(-1, 1, saved.numel()))
            edited = model(tokens)
            assert torch.equal(edited, _tl_logits(model, tokens))
            assert not torch.allclose(edited, out)
            model.blocks[0].attn.b_O.add_(0.5)  # the fast attention path adds a non-zero b_O too
            with_bo = model(tokens)
            assert not torch.allclose(with_bo, edited)
            with explicit_attention(model):
                torch.testing.assert_close(model(tokens), with_bo, rtol=0, atol=1e-5)
        finally:
            model.unembed.b_U.copy_(saved)
            model.blocks[0].attn.b_O.zero_()
        assert torch.equal(model(tokens), out)
