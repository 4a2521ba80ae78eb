"""Plain weights, no copies: every parameter is a contiguous tensor in TransformerLens's layout, the kernels
multiply by the parameters as they are (no per-call copy, no cache), results equal TransformerLens's own
per-call transforms (and the pre-issue-25 strided layout) to float rounding, and weight edits count at once."""

import copy

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.nn.utils import parameters_to_vector

from benchmarks.layout_ab import per_call_kernels, strided_layout
from drope_lens.loading import hooked_from_hf, to_nope
from drope_lens.loading.hooked.weights import heads_linear, linear_view
from drope_lens.tasks.scoring import greedy_generate_batch
from drope_lens.testing import TINY_TEXTS, tiny_llama

pytestmark = pytest.mark.hooked  # HookedTransformer internals

#: float32 rounding of the same products in another order (TransformerLens's own products differ as much from HF's)
TOL = dict(atol=1e-5, rtol=1e-5)


def _tokens(model):
    return model.to_tokens(list(TINY_TEXTS[:3]), padding_side="right")


def _logits(model, tokens, *, per_call: bool = False):
    with torch.no_grad(), per_call_kernels(per_call):
        return model(tokens)


@pytest.fixture(params=[4, 2], ids=["mha", "gqa"])
def model(request, tokenizer):
    return hooked_from_hf(tiny_llama(seed=3, num_key_value_heads=request.param), tokenizer)


def test_parameters_are_plain_tensors_for_every_tool(model, tokenizer):
    assert all(p.is_contiguous() for p in model.parameters())
    tokens = _tokens(model)
    ref = _logits(model, tokens)
    assert parameters_to_vector(model.parameters()).numel() == sum(p.numel() for p in model.parameters())
    assert torch.equal(model.blocks[0].attn.W_Q.view(-1), model.blocks[0].attn.W_Q.reshape(-1))
    # safetensors: save, reload into another model, same logits
    blob = st_save(model.state_dict())
    other = hooked_from_hf(tiny_llama(seed=9, num_key_value_heads=model.cfg.n_key_value_heads or 4), tokenizer)
    assert not torch.equal(_logits(other, tokens), ref)
    other.load_state_dict(st_load(blob))
    assert torch.equal(_logits(other, tokens), ref)


def test_kernels_copy_no_weight(model):
    """The nn.Linear-layout weights the kernels use are views of the parameters (the same storage)."""
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    for module, name in ((attn, "W_O"), (mlp, "W_in"), (mlp, "W_gate"), (mlp, "W_out"), (model.unembed, "W_U")):
        view = linear_view(module, name)
        param = getattr(module, name)
        assert view.data_ptr() == param.data_ptr() and view.untyped_storage().nbytes() == param.nbytes, name
    x = torch.randn(2, 5, model.cfg.d_model)
    w = attn.W_Q
    ref = torch.einsum("bpm,hmd->bphd", x.double(), w.double()).float()
    torch.testing.assert_close(heads_linear(x, w), ref, **TOL)


def test_outputs_equal_per_call_copies_and_old_strided_layout(model):
    tokens = _tokens(model)
    strided = strided_layout(copy.deepcopy(model))
    assert not all(p.is_contiguous() for p in strided.parameters())  # the old layout, for reference
    ref = _logits(model, tokens)
    per_call = _logits(model, tokens, per_call=True)  # TransformerLens's per-call transforms
    old = _logits(strided, tokens, per_call=True)  # the code before issue 25
    assert torch.equal(per_call, old)  # the same kernel on the same values
    torch.testing.assert_close(ref, per_call, **TOL)
    prompt = tokens[:2, :6]
    gen = greedy_generate_batch(model, prompt, 5)
    with per_call_kernels(True):
        assert gen == greedy_generate_batch(strided, prompt, 5)


def _edits(model, tokenizer):
    """(description, edit) pairs; each changes the logits."""
    attn, mlp = model.blocks[0].attn, model.blocks[1].mlp

    def in_place():
        with torch.no_grad():
            attn.W_Q[...] *= 2

    def through_data():
        mlp.W_out.data[3, :] += 0.5

    def kept_data():
        handle = model.unembed.W_U.data  # taken before the next forward, used after it
        _logits(model, _tokens(model))
        handle[:, 7] -= 1.0

    def detach_view():
        model.blocks[1].attn.W_O.detach().mul_(0.5)

    def load_state():
        fresh = hooked_from_hf(tiny_llama(seed=11, num_key_value_heads=model.cfg.n_key_value_heads or 4), tokenizer)
        model.load_state_dict(fresh.state_dict())

    def new_data():
        mlp.W_gate.data = mlp.W_gate.detach().clone() * 1.5

    def process():
        model.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=True)

    return [
        ("in place", in_place),
        (".data", through_data),
        ("kept .data", kept_data),
        ("detach", detach_view),
        ("load_state_dict", load_state),
        (".data =", new_data),
        ("process_weights_", process),
    ]


def test_weight_edits_take_effect_at_once(model, tokenizer):
    tokens = _tokens(model)
    for what, edit in _edits(model, tokenizer):
        before = _logits(model, tokens)
        edit()
        after = _logits(model, tokens)
        torch.testing.assert_close(after, _logits(model, tokens, per_call=True), **TOL, msg=what)
        if what != "process_weights_":  # folding/centring keeps the log-probs
            assert not torch.allclose(after, before), what
        else:
            torch.testing.assert_close(after.log_softmax(-1), before.log_softmax(-1), atol=1e-4, rtol=0)


def test_dtype_moves_need_no_cache(model):
    tokens = _tokens(model)
    ref = _logits(model, tokens)
    model.to(torch.float64)
    with torch.no_grad():
        wide = model(tokens)
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide.float(), ref, atol=1e-4, rtol=0)


def test_gradients_reach_the_parameters_as_with_per_call_copies(model):
    tokens = _tokens(model)
    grads = []
    for per_call in (False, True):
        model.zero_grad()
        with per_call_kernels(per_call):
            model(tokens, return_type="loss").backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "blocks.0.attn.W_Q" in grads[0] and "unembed.W_U" in grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_to_nope_twin_is_plain_and_independent(model):
    tokens = _tokens(model)
    twin = to_nope(model)
    assert all(p.is_contiguous() for p in twin.parameters())
    with torch.no_grad():
        twin.blocks[0].attn.W_Q.zero_()  # the source's weights are untouched
    assert not torch.allclose(_logits(twin, tokens), _logits(to_nope(model), tokens))
