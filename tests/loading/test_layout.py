"""Plain weights, private kernel layout: every parameter is a contiguous tensor in TransformerLens's layout,
the kernels multiply by a cached nn.Linear-layout copy, results are bit-identical to TransformerLens's own
per-call transforms (and to the pre-issue-25 strided layout), and weight edits take effect at once."""

import copy

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.nn.utils import parameters_to_vector

from benchmarks.layout_ab import strided_layout
from drope_lens.loading import hooked_from_hf, linear_layout, to_nope
from drope_lens.loading.hooked.weights import (
    RULES,
    WatchedParameter,
    kernel_weight,
    kernel_weight_bytes,
    kernel_weight_cache,
    release_kernel_weights,
)
from drope_lens.tasks.scoring import greedy_generate_batch
from drope_lens.testing import TINY_TEXTS, tiny_llama

pytestmark = pytest.mark.hooked  # HookedTransformer internals

MATRICES = [("attn", "W_Q"), ("attn", "W_O"), ("mlp", "W_in"), ("mlp", "W_gate"), ("mlp", "W_out")]


def _tokens(model):
    return model.to_tokens(list(TINY_TEXTS[:3]), padding_side="right")


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def _per_call_copies(model):
    """TransformerLens's way: the same model with the kernels' cache off (a transform per call)."""
    return kernel_weight_cache(copy.deepcopy(model), False)


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


def test_outputs_bit_identical_to_per_call_copies_and_old_strided_layout(model):
    tokens = _tokens(model)
    plain = _per_call_copies(model)
    strided = strided_layout(_per_call_copies(model))
    assert not all(p.is_contiguous() for p in strided.parameters())  # the old layout, for reference
    ref = _logits(model, tokens)
    assert torch.equal(ref, _logits(plain, tokens)) and torch.equal(ref, _logits(strided, tokens))
    prompt = tokens[:2, :6]
    gen = greedy_generate_batch(model, prompt, 5)
    assert gen == greedy_generate_batch(plain, prompt, 5) == greedy_generate_batch(strided, prompt, 5)
    # linear_layout (kept for old callers) makes the strided model plain again; idempotent; same numbers
    linear_layout(strided)
    assert all(p.is_contiguous() for p in strided.parameters())
    ptrs = [p.data_ptr() for p in strided.parameters()]
    linear_layout(strided)
    assert ptrs == [p.data_ptr() for p in strided.parameters()]
    assert torch.equal(ref, _logits(strided, tokens))


def test_kernels_reuse_one_cached_copy_equal_to_transformer_lens_transform(model):
    tokens = _tokens(model)
    _logits(model, tokens)
    first = {(b, n): kernel_weight(getattr(model.blocks[b], m), n).data_ptr() for b in (0, 1) for m, n in MATRICES}
    _logits(model, tokens)
    again = {(b, n): kernel_weight(getattr(model.blocks[b], m), n).data_ptr() for b in (0, 1) for m, n in MATRICES}
    assert first == again  # no copy per call
    for b in (0, 1):
        for m, n in MATRICES:
            module = getattr(model.blocks[b], m)
            w = kernel_weight(module, n)
            assert w.is_contiguous() and torch.equal(w, RULES[n].to_linear(getattr(module, n)))
    assert torch.equal(kernel_weight(model.unembed, "W_U"), model.unembed.W_U.T)
    assert kernel_weight_bytes(model) > 0


def _edits(model, tokenizer):
    """(description, edit) pairs; each changes the logits."""
    attn, mlp = model.blocks[0].attn, model.blocks[1].mlp

    def in_place():
        with torch.no_grad():
            attn.W_Q[...] *= 2

    def through_data():
        mlp.W_out.data[3, :] += 0.5  # .data would bypass a plain Parameter's version counter

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
        before = _logits(model, tokens)  # the cache is filled here
        edit()
        after = _logits(model, tokens)
        expected = _logits(_per_call_copies(model), tokens)  # TransformerLens's transform of the edited weights
        assert torch.equal(after, expected), what
        if what != "process_weights_":  # folding/centring keeps the log-probs
            assert not torch.equal(after, before), what
        else:
            torch.testing.assert_close(after.log_softmax(-1), before.log_softmax(-1), atol=1e-4, rtol=0)


def test_to_device_dtype_and_release_drop_the_cache(model):
    tokens = _tokens(model)
    _logits(model, tokens)
    assert kernel_weight_bytes(model) > 0 and isinstance(model.blocks[0].attn.W_Q, WatchedParameter)
    freed = release_kernel_weights(model)
    assert freed > 0 and kernel_weight_bytes(model) == 0
    ref = _logits(model, tokens)
    model.to(torch.float64)
    assert kernel_weight_bytes(model) == 0  # dropped by .to(), not left behind
    with torch.no_grad():
        wide = model(tokens)
    assert wide.dtype == torch.float64 and kernel_weight(model.blocks[0].attn, "W_Q").dtype == torch.float64
    torch.testing.assert_close(wide.float(), ref, atol=1e-4, rtol=0)
    model.to(torch.float32)
    kernel_weight_cache(model, False)
    assert torch.equal(_logits(model, tokens), ref) and kernel_weight_bytes(model) == 0
    kernel_weight_cache(model, True)
    assert torch.equal(_logits(model, tokens), ref) and kernel_weight_bytes(model) > 0


def test_gradients_reach_the_parameters_as_with_per_call_copies(model):
    tokens = _tokens(model)
    grads = []
    for m in (model, _per_call_copies(model)):
        m.zero_grad()
        m(tokens, return_type="loss").backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "blocks.0.attn.W_Q" in grads[0] and "unembed.W_U" in grads[0]
    for name, g in grads[0].items():
        assert torch.equal(g, grads[1][name]), name


def test_to_nope_twin_is_plain_with_its_own_cache(model):
    tokens = _tokens(model)
    _logits(model, tokens)
    twin = to_nope(model)
    assert all(p.is_contiguous() for p in twin.parameters())
    assert torch.equal(_logits(twin, tokens), _logits(_per_call_copies(twin), tokens))
    with torch.no_grad():
        twin.blocks[0].attn.W_Q.zero_()  # the source's weights and cache are untouched
    assert not torch.equal(_logits(twin, tokens), _logits(to_nope(model), tokens))


def test_data_handle_taken_right_after_loading_is_tracked(tokenizer):
    model = hooked_from_hf(tiny_llama(seed=3), tokenizer)
    assert all(isinstance(model.blocks[0].attn.get_parameter(n), WatchedParameter) for n in ("W_Q", "_W_K", "W_O"))
    handle = model.unembed.W_U.data  # before any forward: the cache does not exist yet
    tokens = _tokens(model)
    before = _logits(model, tokens)
    handle[:, 5] += 1.0
    after = _logits(model, tokens)
    assert not torch.equal(after, before) and torch.equal(after, _logits(_per_call_copies(model), tokens))
