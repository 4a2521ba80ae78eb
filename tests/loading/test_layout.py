"""linear_layout: TransformerLens's per-call weight transforms become views; results are bit-identical."""

import copy

import einops
import pytest
import torch

from drope_lens.loading import hooked_from_hf, linear_layout, to_nope
from drope_lens.tasks.scoring import greedy_generate_batch
from drope_lens.testing import TINY_TEXTS, tiny_llama

pytestmark = pytest.mark.hooked  # HookedTransformer internals


def _contiguous_copy(model):
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.data = p.data.contiguous()
    return twin


class _Form:
    """A tensor TransformerLens builds from a weight at every forward; ``is_contiguous`` here means
    "contiguous *and* a view of the weight's own memory" (a reshape that copies is contiguous too)."""

    def __init__(self, form, weight):
        self.form, self.weight = form, weight

    def is_contiguous(self):
        shares = self.form.untyped_storage().data_ptr() == self.weight.untyped_storage().data_ptr()
        return self.form.is_contiguous() and shares


def _per_call_forms(model):
    """The tensors TransformerLens builds from the weights at every forward, as it builds them."""
    forms = []
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        kv = ("_W_K", "_W_V") if hasattr(attn, "_W_K") else ("W_K", "W_V")  # GQA or MHA
        for name in ("W_Q",) + kv:
            w = getattr(attn, name)
            forms.append(_Form(einops.rearrange(w, "h m d -> (h d) m"), w))
        forms.append(_Form(einops.rearrange(attn.W_O, "h d m -> m (h d)"), attn.W_O))
        forms += [_Form(w.T, w) for w in (mlp.W_in, mlp.W_gate, mlp.W_out)]
    forms.append(_Form(model.unembed.W_U.T, model.unembed.W_U))
    return forms


@pytest.mark.parametrize("kv_heads", [4, 2])  # MHA and GQA
def test_layout_makes_transforms_views_and_changes_no_number(tokenizer, kv_heads):
    model = hooked_from_hf(tiny_llama(seed=3, num_key_value_heads=kv_heads), tokenizer)
    assert all(f.is_contiguous() for f in _per_call_forms(model))  # no copy needed at call time
    plain = _contiguous_copy(model)
    assert not all(f.is_contiguous() for f in _per_call_forms(plain))  # TL's own layout copies
    tokens = model.to_tokens(list(TINY_TEXTS[:3]), padding_side="right")
    with torch.no_grad():
        assert torch.equal(model(tokens), plain(tokens))
        prompt = tokens[:2, :6]
        assert greedy_generate_batch(model, prompt, 5) == greedy_generate_batch(plain, prompt, 5)
    # idempotent, survives to_nope, state_dict round trips and re-layout of a plain model
    ptrs = [p.data_ptr() for p in model.parameters()]
    linear_layout(model)
    assert ptrs == [p.data_ptr() for p in model.parameters()]
    assert all(f.is_contiguous() for f in _per_call_forms(to_nope(model)))
    plain.load_state_dict(model.state_dict())
    linear_layout(plain)
    assert all(f.is_contiguous() for f in _per_call_forms(plain))
    with torch.no_grad():
        assert torch.equal(model(tokens), plain(tokens))
