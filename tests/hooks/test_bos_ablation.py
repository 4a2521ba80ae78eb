"""BOS-MLP ablation: absolute position 0 only, also on KV-cache decode steps (bug B3)."""

import pytest
import torch

from drope_lens.hooks.bos import bos_mlp_ablation_hooks, mlp_out_mean
from drope_lens.loading import KVCache, encode, hooked_from_hf
from drope_lens.testing import tiny_llama
from tests.support import hooks_left

LAYER = 0
PROMPT = "the cat saw the dog and"


@pytest.fixture(scope="module", params=["rope", "nope"])
def model(request, tokenizer):
    return hooked_from_hf(tiny_llama(seed=5), tokenizer, position_encoding=request.param)


def _recorder(store):
    def rec(out, hook):
        store.append(out.detach().clone())

    return rec


@torch.no_grad()
def _greedy_cached(model, prompt, n_new, hooks):
    """Greedy decoding on a KV cache; returns the ids and the logits of each step."""
    b = prompt.shape[0]
    cache = KVCache(model, b)
    steps, ids = [], prompt
    with model.hooks(fwd_hooks=hooks):
        logits = model(prompt, **cache.kwargs(prompt.shape[1], b))[:, -1]
        for _ in range(n_new):
            steps.append(logits)
            nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            logits = model(nxt, **cache.kwargs(1, b))[:, -1]
    return ids, steps


@torch.no_grad()
def _greedy_full(model, prompt, n_new, hooks):
    """The same decoding without a cache: every step is a full forward from position 0."""
    steps, ids = [], prompt
    with model.hooks(fwd_hooks=hooks):
        for _ in range(n_new):
            logits = model(ids)[:, -1]
            steps.append(logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids, steps


def test_prefill_ablates_position_zero_only(model, tokenizer):
    ids = encode(tokenizer, PROMPT).tokens
    seen = []
    hooks = bos_mlp_ablation_hooks(LAYER, model=model) + [(f"blocks.{LAYER}.hook_mlp_out", _recorder(seen))]
    _, clean = model.run_with_cache(ids, names_filter=f"blocks.{LAYER}.hook_mlp_out")
    with model.hooks(fwd_hooks=hooks):
        model(ids)
    out = seen[0]
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    assert torch.equal(out[:, 1:], clean[f"blocks.{LAYER}.hook_mlp_out"][:, 1:])


def test_cached_generation_equals_no_cache_under_ablation(model, tokenizer):
    ids = encode(tokenizer, PROMPT).tokens
    n_new = 6
    seen = []
    hooks = bos_mlp_ablation_hooks(LAYER, model=model) + [(f"blocks.{LAYER}.hook_mlp_out", _recorder(seen))]
    cached_ids, cached = _greedy_cached(model, ids, n_new, hooks)
    # The first forward (prefill) had position 0 ablated; no decode step (1 new token) was touched.
    assert seen[0].shape[1] == ids.shape[1] and float(seen[0][:, 0].abs().max()) == 0.0
    assert len(seen) == n_new + 1 and all(s.shape[1] == 1 and float(s.abs().max()) > 0 for s in seen[1:])
    full_ids, full = _greedy_full(model, ids, n_new, bos_mlp_ablation_hooks(LAYER, model=model))
    assert torch.equal(cached_ids, full_ids)
    for a, b in zip(cached, full, strict=True):
        assert (a - b).abs().max() <= 1e-4
    # The ablation matters, and the study's hook (index 0 of every call) changes decode steps.
    _, base = _greedy_full(model, ids, n_new, [])
    assert (base[0] - full[0]).abs().max() > 1e-2
    _, study = _greedy_cached(model, ids, n_new, bos_mlp_ablation_hooks(LAYER, study_compatible=True))
    assert torch.equal(study[0], cached[0])  # prefill identical
    assert max(float((a - b).abs().max()) for a, b in zip(study[1:], full[1:], strict=True)) > 1e-2


def test_tl_generate_with_and_without_cache_agree(model, tokenizer):
    ids = encode(tokenizer, PROMPT).tokens
    kw = dict(max_new_tokens=5, do_sample=False, stop_at_eos=False, verbose=False)
    with model.hooks(fwd_hooks=bos_mlp_ablation_hooks(LAYER, model=model)):
        cached = model.generate(ids, use_past_kv_cache=True, **kw)
    with model.hooks(fwd_hooks=bos_mlp_ablation_hooks(LAYER, model=model)):
        full = model.generate(ids, use_past_kv_cache=False, **kw)
    assert torch.equal(cached, full)
    assert not hooks_left(model)


def test_mean_mode(model, tokenizer):
    ids = encode(tokenizer, PROMPT).tokens
    name = f"blocks.{LAYER}.hook_mlp_out"
    _, clean = model.run_with_cache(ids, names_filter=name)
    clean = clean[name]
    vec = torch.arange(model.cfg.d_model, dtype=torch.float32)
    for kwargs, expected in ((dict(mean_vector=vec), vec), ({}, clean[0, 1:].mean(0))):
        seen = []
        hooks = bos_mlp_ablation_hooks(LAYER, mode="mean", **kwargs) + [(name, _recorder(seen))]
        with model.hooks(fwd_hooks=hooks):
            model(ids)
        assert torch.allclose(seen[0][0, 0], expected, atol=1e-6)
        assert torch.equal(seen[0][:, 1:], clean[:, 1:])


def test_mlp_out_mean_excludes_bos_and_padding(model, tokenizer):
    texts = ["the cat saw the dog", "a big red car went fast on the long road"]
    vec = mlp_out_mean(model, texts, LAYER, batch_size=2)
    name = f"blocks.{LAYER}.hook_mlp_out"
    rows = []
    for t in texts:
        _, c = model.run_with_cache(encode(tokenizer, t).tokens, names_filter=name)
        rows.append(c[name][0, 1:])
    assert torch.allclose(vec, torch.cat(rows).mean(0), atol=1e-5)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(layer=2), "out of range"),
        (dict(layer=-1), "out of range"),
        (dict(layer=0, mode="half"), "mode"),
        (dict(layer=0, mean_vector=torch.zeros(3)), "mean_vector"),
    ],
)
def test_bad_arguments(model, kw, msg):
    kw = dict(kw)
    layer = kw.pop("layer")
    with pytest.raises(ValueError, match=msg):
        bos_mlp_ablation_hooks(layer, model=model, **kw)
