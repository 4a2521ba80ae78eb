"""Channel interventions: zeroing, random controls, Jin-style mean replacement, KV-cache decode steps."""

import pytest
import torch

from drope_lens.analysis.massive import detect_massive
from drope_lens.analysis.perplexity import perplexity
from drope_lens.hooks.mean_replacement import mean_replace, qk_mean_replacement_hooks
from drope_lens.hooks.selection import ChannelSelection, random_control
from drope_lens.hooks.zeroing import zero_channel_hooks
from drope_lens.loading import KVCache, hooked_from_hf, to_nope
from drope_lens.testing import TINY_TEXTS, plant_channels, tiny_llama
from tests.support import hooks_left

PLANTS = {"q": [(0, 1, 4), (1, 0, 2), (1, 2, 17)], "k": [(0, 0, 9), (1, 1, 3)]}


@pytest.fixture(scope="module")
def planted(tokenizer):
    return plant_channels(hooked_from_hf(tiny_llama(seed=5), tokenizer), PLANTS)


@pytest.fixture(scope="module")
def selection(planted):
    return detect_massive(planted, list(TINY_TEXTS), tensors=("q", "k")).selection()


def tokens_of(model, text=TINY_TEXTS[0]):
    return model.to_tokens(text)


@pytest.mark.parametrize("rotary", ["pre", "post"])
def test_zeroing_changes_exactly_the_selected_channels(planted, selection, rotary):
    assert selection.total() == 5
    toks = tokens_of(planted)
    names = lambda n: "attn.hook_" in n  # noqa: E731
    _, base = planted.run_with_cache(toks, names_filter=names)
    with planted.hooks(fwd_hooks=zero_channel_hooks(selection, rotary=rotary)):
        _, hooked = planted.run_with_cache(toks, names_filter=names)
    assert not hooks_left(planted)
    for t, masks in selection.masks.items():
        name = f"blocks.0.attn.hook_{'rot_' if rotary == 'post' else ''}{t}"
        m = masks[0]
        assert (hooked[name][..., m] == 0).all()
        assert torch.equal(hooked[name][..., ~m], base[name][..., ~m])  # bit-identical elsewhere
    # at layer 0 everything upstream of the hook point is untouched (V, and Q/K pre-rotation for post)
    assert torch.equal(hooked["blocks.0.attn.hook_v"], base["blocks.0.attn.hook_v"])
    if rotary == "post":
        assert torch.equal(hooked["blocks.0.attn.hook_q"], base["blocks.0.attn.hook_q"])


def test_random_control_same_counts_disjoint_seeded(selection):
    state = torch.random.get_rng_state()
    a = random_control(selection, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is not used
    b = random_control(selection, seed=7)
    c = random_control(selection, seed=8)
    assert a.counts() == selection.counts()
    assert a.overlap(selection) == 0 and c.overlap(selection) == 0
    assert all(torch.equal(a.masks[t], b.masks[t]) for t in a.tensors)
    assert any(not torch.equal(a.masks[t], c.masks[t]) for t in a.tensors)
    # impossible disjoint draw is refused with advice
    full = ChannelSelection({"q": torch.ones(1, 2, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="exclude_selected=False"):
        random_control(full, seed=0)
    assert random_control(full, seed=0, exclude_selected=False).total() == 6


@pytest.mark.parametrize("threshold", [None, 5.0])
def test_mean_replacement_sets_top_channel_to_token_mean(planted, threshold):
    toks = tokens_of(planted)
    name = "blocks.1.attn.hook_q"
    _, base = planted.run_with_cache(toks, names_filter=name)
    hooks = qk_mean_replacement_hooks(planted, layers=[1], threshold=threshold)
    with planted.hooks(fwd_hooks=hooks):
        _, hooked = planted.run_with_cache(toks, names_filter=name)
    x, y = base[name][0], hooked[name][0]  # [T, H, D]
    top = x.norm(dim=0).argmax(-1)  # top-1 dim per head by token-L2
    planted_heads = {h: d for (layer, h, d) in PLANTS["q"] if layer == 1}
    for h in range(planted.cfg.n_heads):
        if h in planted_heads:
            assert int(top[h]) == planted_heads[h]
        replaced = threshold is None or h in planted_heads  # the lambda gate only passes planted dims
        d = int(top[h])
        expected = x.clone()[:, h]
        if replaced:
            expected[:, d] = x[:, h, d].mean()
        torch.testing.assert_close(y[:, h], expected, rtol=1e-6, atol=1e-6)
        other = torch.ones(planted.cfg.d_head, dtype=torch.bool)
        other[d] = False
        assert torch.equal(y[:, h][:, other], x[:, h][:, other])


def test_mean_replacement_excludes_padding(planted):
    hooks = qk_mean_replacement_hooks(planted, k=2)
    texts = list(TINY_TEXTS)
    one = perplexity(planted, texts, fwd_hooks=hooks, batch_size=1)
    many = perplexity(planted, texts, fwd_hooks=hooks, batch_size=5)
    plain = perplexity(planted, texts, batch_size=5)
    assert one.ppl == pytest.approx(many.ppl, rel=1e-6)
    assert abs(one.ppl - plain.ppl) / plain.ppl > 1e-3  # the intervention does something


def test_mean_replace_function_by_hand():
    x = torch.tensor([[[[3.0, 0.0]], [[1.0, 1.0]], [[5.0, 0.5]]]])  # [b=1, T=3, H=1, D=2]
    real = torch.tensor([[True, True, False]])  # last position is padding
    new, sel, means = mean_replace(x, real, k=1)
    assert sel.tolist() == [[[True, False]]]
    assert new[0, :2, 0, 0].tolist() == [2.0, 2.0]  # mean of 3 and 1, padding excluded
    assert new[0, 2, 0, 0] == 5.0 and torch.equal(new[..., 1], x[..., 1])


# ------------------------------------------------------------------ KV-cache decode steps
def cached_logits(model, tokens, n_prompt):
    """Prefill ``tokens[:, :n_prompt]`` then decode the rest one token at a time on a KV cache."""
    b = tokens.shape[0]
    cache = KVCache(model, b)
    out = [model(tokens[:, :n_prompt], **cache.kwargs(n_prompt, b))]
    for t in range(n_prompt, tokens.shape[1]):
        out.append(model(tokens[:, t : t + 1], **cache.kwargs(1, b)))
    return torch.cat(out, dim=1)


def prompt_only_reference_hooks(model, n_prompt, rotary):
    """Hand-written reference: replace the top-1 channel of each head by its prompt mean, on the
    prompt positions only (the generated positions are never touched), in a cache-free pass."""

    def fn(x, hook):
        p = x[:, :n_prompt]
        top = p.norm(dim=1).argmax(-1)  # [b, H]
        out = x.clone()
        for b in range(x.shape[0]):
            for h in range(x.shape[2]):
                d = int(top[b, h])
                out[b, :n_prompt, h, d] = p[b, :, h, d].mean()
        return out

    kind = "hook_rot_" if rotary == "post" else "hook_"
    return [(f"blocks.{layer}.attn.{kind}{t}", fn) for layer in range(model.cfg.n_layers) for t in "qk"]


@pytest.mark.parametrize("rotary", ["pre", "post"])
def test_zeroing_with_kv_cache_equals_no_cache(planted, selection, rotary):
    toks = planted.to_tokens(TINY_TEXTS[3])
    with planted.hooks(fwd_hooks=zero_channel_hooks(selection, rotary=rotary)):
        ref = planted(toks)
        got = cached_logits(planted, toks, 6)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert not hooks_left(planted)


@pytest.mark.parametrize("rotary", ["pre", "post"])
def test_mean_replacement_with_kv_cache_perturbs_the_prompt_only(planted, rotary):
    toks = planted.to_tokens(TINY_TEXTS[3])
    n_prompt = 6
    with planted.hooks(fwd_hooks=qk_mean_replacement_hooks(planted, rotary=rotary)):
        got = cached_logits(planted, toks, n_prompt)
        everywhere = planted(toks)  # cache-free pass over the whole text: dims from all tokens
    with planted.hooks(fwd_hooks=prompt_only_reference_hooks(planted, n_prompt, rotary)):
        ref = planted(toks)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert (everywhere[:, n_prompt:] - ref[:, n_prompt:]).abs().max() > 1e-3  # policies differ
    if rotary == "post":
        # without re-applying the prefill replacement, cached prompt keys would be unperturbed
        def prefill_only(f):
            return lambda x, hook: f(x, hook) if x.shape[1] == n_prompt else None

        hooks = qk_mean_replacement_hooks(planted, rotary="post")
        broken = [
            (n, prefill_only(f) if n.endswith("rot_k") and getattr(f, "__name__", "") == "fn" else f) for n, f in hooks
        ]
        assert sum(b[1] is not h[1] for b, h in zip(broken, hooks, strict=True)) == planted.cfg.n_layers
        with planted.hooks(fwd_hooks=broken):
            wrong = cached_logits(planted, toks, n_prompt)
        assert (wrong[:, n_prompt:] - ref[:, n_prompt:]).abs().max() > 1e-3
    assert not hooks_left(planted)


@pytest.mark.parametrize("rotary", ["pre", "post"])
def test_generate_under_mean_replacement_matches_reference(planted, rotary):
    prompt = planted.to_tokens("the cat saw a dog in the")
    n_prompt = prompt.shape[1]
    with planted.hooks(fwd_hooks=qk_mean_replacement_hooks(planted, rotary=rotary)):
        out = planted.generate(
            prompt, max_new_tokens=6, do_sample=False, use_past_kv_cache=True, stop_at_eos=False, verbose=False
        )
    seq = prompt
    with planted.hooks(fwd_hooks=prompt_only_reference_hooks(planted, n_prompt, rotary)):
        for _ in range(6):
            nxt = planted(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)
    assert not hooks_left(planted)


def test_multi_token_cache_continuation_and_decode_raise(planted):
    toks = planted.to_tokens(TINY_TEXTS[0])
    with planted.hooks(fwd_hooks=qk_mean_replacement_hooks(planted)):
        with pytest.raises(NotImplementedError, match="one token at a time"):
            cached_logits_multi(planted, toks)
    assert not hooks_left(planted)
    with planted.hooks(fwd_hooks=qk_mean_replacement_hooks(planted, decode="raise")):
        planted(toks)  # cache-free passes are fine
        with pytest.raises(RuntimeError, match="decode='raise'"):
            cached_logits(planted, toks, 4)
    assert not hooks_left(planted)


def cached_logits_multi(model, tokens):
    cache = KVCache(model, 1)
    model(tokens[:, :4], **cache.kwargs(4, 1))
    return model(tokens[:, 4:7], **cache.kwargs(3, 1))


def test_nope_model_mean_replacement_pre_equals_post(planted):
    nope = to_nope(planted)
    toks = nope.to_tokens(TINY_TEXTS[2])
    with nope.hooks(fwd_hooks=qk_mean_replacement_hooks(nope, rotary="pre")):
        a = nope(toks)
    with nope.hooks(fwd_hooks=qk_mean_replacement_hooks(nope, rotary="post")):
        b = nope(toks)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kw",
    [
        dict(k=0),
        dict(k=25),
        dict(k=1.5),
        dict(rotary="both"),
        dict(decode="apply"),
        dict(threshold=0.0),
        dict(layers=[2]),
        dict(layers=[]),
    ],
)
def test_bad_options_are_refused(planted, kw):
    with pytest.raises(ValueError):
        qk_mean_replacement_hooks(planted, **kw)


def test_wrong_shape_mask_is_refused(planted):
    bad = ChannelSelection({"k": torch.ones(2, 4, 24, dtype=torch.bool)})  # K has 2 KV heads, not 4
    with pytest.raises(ValueError, match="KV-head count"):
        planted.run_with_hooks(tokens_of(planted), fwd_hooks=zero_channel_hooks(bad))
    assert not hooks_left(planted)
