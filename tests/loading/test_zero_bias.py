"""The zero-bias skip (attention projections, gated MLP, unembedding) changes no number, fires every
hook with the same tensor and honours a bias that is not zero."""

import pytest
import torch
from transformer_lens.components import Unembed
from transformer_lens.components.mlps.gated_mlp import GatedMLP

from drope_lens.loading import explicit_attention, hooked_from_hf
from drope_lens.loading.hooked.patching import base_class
from drope_lens.loading.hooked.zero_bias import ZeroBiasGatedMLP
from drope_lens.testing import TINY_TEXTS, tiny_llama

pytestmark = pytest.mark.hooked  # HookedTransformer internals


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def model(request, tokenizer):
    return hooked_from_hf(tiny_llama(seed=5, num_key_value_heads=request.param), tokenizer)


def _tokens(model):
    return model.to_tokens(list(TINY_TEXTS[:3]), padding_side="right")


def _tl_logits(model, tokens):
    """Logits with TransformerLens's own Unembed.forward (adds b_U whatever it holds)."""
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    return Unembed.forward(model.unembed, model.ln_final(resid))


def _perturb_biases(model, scale=0.1):
    g = torch.Generator().manual_seed(0)
    saved = {}
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1].startswith(("b_", "_b_")):
            saved[name] = p.detach().clone()
            p.data.add_(scale * torch.randn(p.shape, generator=g))
    return saved


def _restore(model, saved):
    params = dict(model.named_parameters())
    for name, value in saved.items():
        params[name].data.copy_(value)


@pytest.mark.parametrize("nonzero", [False, True], ids=["zero_bias", "edited_bias"])
def test_pieces_equal_transformer_lens_own_code(model, nonzero):
    """q/k/v (+ hooks), the gated MLP and the unembedding, bit for bit, against TL's methods."""
    saved = _perturb_biases(model) if nonzero else {}
    try:
        x = torch.randn(2, 7, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            for block in model.blocks:
                attn = block.attn
                ours = attn.calculate_qkv_matrices(x, x, x)
                theirs = base_class(attn).calculate_qkv_matrices(attn, x, x, x)
                for a, b in zip(ours, theirs, strict=True):
                    assert torch.equal(a, b)
                assert base_class(block.mlp) is GatedMLP and isinstance(block.mlp, ZeroBiasGatedMLP)
                assert torch.equal(block.mlp(x), GatedMLP.forward(block.mlp, x))
            tokens = _tokens(model)
            assert torch.equal(model(tokens), _tl_logits(model, tokens))
            with explicit_attention(model):
                explicit = model(tokens)
            torch.testing.assert_close(model(tokens), explicit, rtol=0, atol=1e-5)
    finally:
        _restore(model, saved)


def test_every_bias_still_counts_once_edited(model):
    """(b_K changes the output only through RoPE: a key shift is softmax-invariant without it.)"""
    tokens = _tokens(model)
    with torch.no_grad():
        base = model(tokens)
        for name, p in model.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith(("b_", "_b_")) or "ln" in name:
                continue
            saved = p.detach().clone()
            try:
                p.data.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
                assert not torch.allclose(model(tokens), base), name
            finally:
                p.data.copy_(saved)
        assert torch.equal(model(tokens), base)


def test_hooks_see_what_the_model_uses(model):
    tokens = _tokens(model)
    names = [
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_v",
        "blocks.1.mlp.hook_post",
        "unembed.hook_out",
    ]
    with torch.no_grad():
        out, cache = model.run_with_cache(tokens, names_filter=names)
        assert torch.equal(cache["unembed.hook_out"], out)
        # doubling hook_v changes the output: the hooked tensor is the one used
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_v", lambda t, hook: 2 * t)]):
            assert not torch.allclose(model(tokens), out)
