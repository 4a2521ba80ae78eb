"""The sdpa fast path equals TransformerLens's explicit attention, and steps aside for pattern hooks."""

from __future__ import annotations

import functools

import pytest
import torch

import drope_lens as dl
from drope_lens.errors import NonFiniteError
from drope_lens.loading import encode, hooked_from_hf
from drope_lens.testing import scale_projection, tiny_llama, tiny_tokenizer
from tests.support import SdpaSpy, assert_non_finite_refused, attention_layouts, legacy_names

LOGIT_TOL = 1e-5
HOOKS = ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z", "hook_attn_out")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _ids(n: int, vocab: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (batch, n), generator=g)


MODELS = attention_layouts()


def _run_both(model, tokens, **kw):
    """Logits and every non-pattern attention hook, fast then explicit."""
    names = lambda n: n.rsplit(".", 1)[-1] in HOOKS  # noqa: E731
    with torch.no_grad():
        fast_logits, fast_cache = model.run_with_cache(tokens, names_filter=names, **kw)
        with dl.explicit_attention(model):
            slow_logits, slow_cache = model.run_with_cache(tokens, names_filter=names, **kw)
    return fast_logits, fast_cache, slow_logits, slow_cache


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_fast_path_equals_explicit_path(kind, tokenizer, tmp_path, monkeypatch):
    model = MODELS[kind](tokenizer, tmp_path)
    assert model.cfg.fast_attention and "fast" in model.cfg.describe(attention=True)
    if kind == "drope_qk_norm":
        assert model.cfg.drope_attention_type == "qk_norm_nope" and model.cfg.softmax_scale == 0.07
    spy = SdpaSpy(monkeypatch)
    fl, fc, sl, sc = _run_both(model, _ids(37, model.cfg.d_vocab))
    assert spy.calls == model.cfg.n_layers  # the fast run used sdpa in every layer, the explicit none
    assert (fl - sl).abs().max() <= LOGIT_TOL
    for name in legacy_names(sc):  # (the bridge also caches TransformerLens's alias names)
        if name.startswith("blocks.0.") and not name.endswith(("hook_z", "hook_attn_out")):
            assert torch.equal(fc[name], sc[name]), name  # before the first attention: same ops
        else:  # after it: fp32 rounding of the kernel only
            torch.testing.assert_close(fc[name], sc[name], atol=1e-5, rtol=1e-5, msg=name)
    assert set(fc.keys()) == set(sc.keys())


@pytest.mark.parametrize("kind", ["rope_gqa", "nope_gqa", "drope_qk_norm"])
def test_padding_and_attention_mask(kind, tokenizer, tmp_path):
    model = MODELS[kind](tokenizer, tmp_path)
    batch = encode(tokenizer, ["the cat saw the dog", "a big red car went fast on the long road to rome"])
    fl, _, sl, _ = _run_both(model, batch.tokens)  # right padding, no mask (drope_lens's batches)
    m = batch.mask
    assert (fl[m] - sl[m]).abs().max() <= LOGIT_TOL
    # an explicit attention_mask, left padding included (fully masked pad rows: z = 0 like TL's)
    left = torch.full_like(batch.tokens, tokenizer.pad_token_id)
    left_mask = torch.zeros_like(batch.tokens)
    for i, n in enumerate(batch.lengths.tolist()):
        left[i, -n:] = batch.tokens[i, :n]
        left_mask[i, -n:] = 1
    for toks, mask in ((batch.tokens, m.long()), (left, left_mask)):
        with torch.no_grad():
            fast = model(toks, attention_mask=mask)
            with dl.explicit_attention(model):
                slow = model(toks, attention_mask=mask)
        assert torch.isfinite(fast).all()
        assert (fast - slow).abs().max() <= LOGIT_TOL


@pytest.mark.parametrize("kind", ["rope_gqa", "nope_mha", "drope_qk_norm"])
def test_kv_cache_greedy_generation_is_identical(kind, tokenizer, tmp_path, monkeypatch):
    model = MODELS[kind](tokenizer, tmp_path)
    prompt = encode(tokenizer, "the cat saw a dog in the city and").tokens
    spy = SdpaSpy(monkeypatch)
    kw = dict(max_new_tokens=12, do_sample=False, use_past_kv_cache=True, verbose=False)
    fast = model.generate(prompt, **kw)
    assert spy.calls >= model.cfg.n_layers * 12  # prefill + decode steps went through sdpa
    with dl.explicit_attention(model):
        slow = model.generate(prompt, **kw)
    assert torch.equal(fast, slow)
    # decoding with the cache equals one full forward of the generated sequence (fast path both)
    with torch.no_grad():
        full = model(fast[:, :-1]).argmax(-1)
    assert torch.equal(full[:, prompt.shape[1] - 1 :], fast[:, prompt.shape[1] :])


@pytest.mark.hooked
def test_pattern_hook_switches_only_that_layer_back(tokenizer, monkeypatch):
    from drope_lens.loading.hooked.fast_attention import fast_path_applies

    model = hooked_from_hf(tiny_llama(seed=1, num_hidden_layers=3), tokenizer)
    ids = _ids(21, model.cfg.d_vocab)
    spy = SdpaSpy(monkeypatch)
    seen = {}

    def grab(pattern, hook):
        seen[hook.name] = pattern.detach().clone()

    with torch.no_grad():
        ref = model(ids)
        assert spy.calls == 3
        for name in ("blocks.1.attn.hook_pattern", "blocks.1.attn.hook_attn_scores"):
            spy.calls = 0
            assert fast_path_applies(model.blocks[1].attn)
            with model.hooks(fwd_hooks=[(name, grab)]):
                assert not fast_path_applies(model.blocks[1].attn)
                assert fast_path_applies(model.blocks[0].attn)
                out = model(ids)
            assert spy.calls == 2 and name in seen  # layers 0 and 2 fast, layer 1 explicit
            assert (out - ref).abs().max() <= LOGIT_TOL
        # run_with_cache without a filter caches real patterns (every layer explicit)
        spy.calls = 0
        _, cache = model.run_with_cache(ids)
        assert spy.calls == 0
        assert torch.allclose(cache["pattern", 1], seen["blocks.1.attn.hook_pattern"])
        rows = cache["pattern", 2].sum(-1)
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    # the hooks are gone again: the fast path is back
    assert all(fast_path_applies(b.attn) for b in model.blocks)


def test_config_flag_and_context_manager(tokenizer, monkeypatch):
    model = hooked_from_hf(tiny_llama(), tokenizer)
    ids = _ids(9, model.cfg.d_vocab)
    spy = SdpaSpy(monkeypatch)
    with pytest.raises(RuntimeError, match="boom"):
        with dl.explicit_attention(model):
            assert model.cfg.fast_attention is False and "explicit" in model.cfg.describe(attention=True)
            model(ids)
            raise RuntimeError("boom")
    assert spy.calls == 0 and model.cfg.fast_attention is True  # restored after the exception
    model.cfg.fast_attention = False
    model(ids)
    assert spy.calls == 0 and "fast_attention=False" in repr(model.cfg)
    model.cfg.fast_attention = True
    model(ids)
    assert spy.calls == model.cfg.n_layers
    twin = dl.to_nope(model)
    spy.calls = 0
    twin(ids)
    assert twin.cfg.fast_attention and spy.calls == twin.cfg.n_layers


@pytest.mark.parametrize("fast", [True, False])
def test_nan_still_raises_naming_the_layer(fast, tokenizer):
    model = hooked_from_hf(tiny_llama(), tokenizer, position_encoding="nope")
    model.cfg.fast_attention = fast

    run = functools.partial(model.run_with_hooks, _ids(10, model.cfg.d_vocab))
    assert_non_finite_refused(model, run, "blocks.1.attn.hook_q", index=(0, 3, 1, 0), match="Layer 1.*NaN")
    # a model with a NaN weight in layer 0 (every position's q of head 0 is NaN)
    bad = hooked_from_hf(tiny_llama(seed=6), tokenizer)
    bad.cfg.fast_attention = fast
    scale_projection(bad, 0, "q", float("nan"))
    with pytest.raises(NonFiniteError, match="Layer 0.*NaN"):
        bad(_ids(20, bad.cfg.d_vocab))
    # fp16 weights whose q·k overflows fp16: fp32 attention keeps both paths finite
    half = hooked_from_hf(tiny_llama(seed=6), tokenizer, position_encoding="nope", dtype=torch.float16)
    half.cfg.fast_attention = fast
    scale_projection(half, 0, "q", 200.0)
    scale_projection(half, 0, "k", 200.0)
    assert torch.isfinite(half(_ids(20, half.cfg.d_vocab))).all()
    if not fast:  # the explicit fp16 product overflows (sdpa kernels accumulate in fp32 instead)
        half.cfg.fp32_attention = False
        with pytest.raises(NonFiniteError, match="Layer 0"):
            half(_ids(20, half.cfg.d_vocab))


def test_half_precision_fast_path_upcasts(tokenizer):
    model = hooked_from_hf(tiny_llama(seed=6), tokenizer, position_encoding="nope", dtype=torch.bfloat16)
    ids = _ids(25, model.cfg.d_vocab)
    fl, fc, sl, sc = _run_both(model, ids)
    assert fc["blocks.0.attn.hook_z"].dtype == torch.bfloat16
    ref = hooked_from_hf(tiny_llama(seed=6), tokenizer, position_encoding="nope")
    with torch.no_grad(), dl.explicit_attention(ref):
        exact = ref(ids)
    # fast bf16 (fp32 kernel, z cast once) is at least as close to fp32 as explicit bf16
    assert (fl.float() - exact).abs().max() <= (sl.float() - exact).abs().max() * 1.5 + 1e-3


@pytest.mark.hooked
@pytest.mark.parametrize("kind", ["rope_gqa", "nope_mha", "drope_qk_norm"])
def test_drope_lens_explicit_path_is_transformer_lens_forward_bit_for_bit(kind, tokenizer, tmp_path):
    """The explicit path runs TransformerLens's steps itself (to read W_O's cached layout): same bits."""
    from drope_lens.loading.hooked.patching import base_class

    model = MODELS[kind](tokenizer, tmp_path)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, model.cfg.d_model, generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding in row 1
    seen = []
    with torch.no_grad(), dl.explicit_attention(model):
        for block in model.blocks:
            attn = block.attn
            for kw in ({}, {"attention_mask": mask}):
                ours = attn(x, x, x, **kw)
                theirs = base_class(attn).forward(attn, x, x, x, **kw)
                assert torch.equal(ours, theirs)
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: seen.append(p) or p)]):
            model(_ids(9, model.cfg.d_vocab))
    assert len(seen) == 1 and seen[0].shape[-1] == 9
