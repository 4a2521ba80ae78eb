"""The two backends (HookedTransformer, TransformerBridge): the same hooks, numbers and config facts, RoPE provably
off in the bridge's NoPE/DroPE models, and loading that never asks to run a checkpoint's code.

Every comparison here is against an independent computation: a plain HF forward (eager attention; for NoPE/DroPE
the HF model with the identity rotation, ``softmax_scale`` and the full-width q/k RMSNorm,
:func:`drope_lens.testing.hf_nope_reference`), and, where TransformerLens < 4 is installed, the other backend."""

from __future__ import annotations

import copy
import json
import sys
import warnings

import pytest
import torch

from drope_lens.errors import DropeLensInputError, NonFiniteError
from drope_lens.loading import backend as backend_mod
from drope_lens.loading import hooked_from_hf, load_hooked, to_nope
from drope_lens.loading.backend import backend_of, hooked_available
from drope_lens.loading.source import qk_norm_weights
from drope_lens.testing import hf_nope_reference, tiny_drope_checkpoint, tiny_llama
from tests.support import SdpaSpy, assert_non_finite_refused, hooks_left

pytestmark = pytest.mark.both_backends  # builds the backends itself
needs_hooked = pytest.mark.skipif(not hooked_available(), reason="HookedTransformer needs TransformerLens < 4")
HOOKS = ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_attn_scores", "hook_pattern", "hook_z")
BLOCK_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out")


def _ids(n: int, vocab: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, n), generator=g)
    ids[:, 0] = 1
    return ids


def _hf_reference(hf, position_encoding="rope", **drope):
    ref = copy.deepcopy(hf)
    if position_encoding == "nope":
        hf_nope_reference(ref, **drope)
    ref.config._attn_implementation = "eager"
    return ref.eval()


def _names(n_layers: int) -> list[str]:
    return [f"blocks.{layer}.attn.{h}" for layer in range(n_layers) for h in HOOKS] + [
        f"blocks.{layer}.{h}" for layer in range(n_layers) for h in BLOCK_HOOKS
    ]


def _cache(model, ids):
    names = set(_names(model.cfg.n_layers))
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
    return logits, {n: cache[n] for n in names}


# ------------------------------------------------------------------------------------ choosing a backend
def test_default_backend_follows_transformer_lens_and_env(monkeypatch):
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(backend_mod, "tl_version", lambda: (4, 3, 0))
    assert backend_mod.default_backend() == "bridge"
    with pytest.raises(DropeLensInputError, match="no longer has.*backend='bridge'.*<4"):
        backend_mod.check_backend("hooked")
    monkeypatch.setattr(backend_mod, "tl_version", lambda: (3, 9, 0))
    assert backend_mod.default_backend() == "hooked"
    monkeypatch.setenv(backend_mod.ENV_VAR, "bridge")
    assert backend_mod.default_backend() == "bridge"
    monkeypatch.setenv(backend_mod.ENV_VAR, "vibes")
    with pytest.raises(DropeLensInputError, match=r"\$DROPE_LENS_BACKEND must be one of \('hooked', 'bridge'\)"):
        backend_mod.default_backend()
    with pytest.raises(DropeLensInputError, match="backend must be one of"):
        backend_mod.check_backend("torch")


def test_bridge_refuses_hooked_only_options_before_loading(tokenizer):
    hf = tiny_llama()
    with pytest.raises(ValueError, match="process_weights=True.*hooked-backend option"):
        hooked_from_hf(hf, tokenizer, backend="bridge", process_weights=True)
    with pytest.raises(ValueError, match="n_devices > 1.*backend='hooked'"):
        hooked_from_hf(hf, tokenizer, backend="bridge", n_devices=2)


# ------------------------------------------------------------------------------------ same numbers
@pytest.mark.parametrize("gqa", [True, False], ids=["gqa", "mha"])
@pytest.mark.parametrize("position_encoding", ["rope", "nope"])
def test_bridge_equals_hf_and_hooked(tokenizer, gqa, position_encoding):
    hf = tiny_llama(seed=2, gqa=gqa)
    ref = _hf_reference(hf, position_encoding)
    bridge = hooked_from_hf(copy.deepcopy(hf), tokenizer, backend="bridge", position_encoding=position_encoding)
    assert backend_of(bridge) == "bridge" and bridge.cfg.position_encoding == position_encoding
    ids = _ids(40, bridge.cfg.d_vocab)
    with torch.no_grad():
        want = ref(ids).logits
    logits, cache = _cache(bridge, ids)
    assert (logits - want).abs().max() < 1e-4
    with torch.no_grad():
        assert (bridge(ids) - want).abs().max() < 1e-4  # the fast path (no pattern hook) too
    assert cache["blocks.0.attn.hook_q"].shape == (2, 40, 4, 24)
    assert cache["blocks.0.attn.hook_k"].shape == (2, 40, 2 if gqa else 4, 24)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 4, 40, 40)
    if position_encoding == "nope":
        for layer in range(2):
            assert torch.equal(cache[f"blocks.{layer}.attn.hook_rot_q"], cache[f"blocks.{layer}.attn.hook_q"])
    if not hooked_available():
        return
    hooked = hooked_from_hf(copy.deepcopy(hf), tokenizer, backend="hooked", position_encoding=position_encoding)
    h_logits, h_cache = _cache(hooked, ids)
    assert (h_logits - logits).abs().max() < 1e-4
    for name, value in h_cache.items():  # masked scores are -inf on both
        scale = max(1.0, float(value.nan_to_num(posinf=0, neginf=0).abs().max()))
        torch.testing.assert_close(cache[name], value, atol=1e-5 * scale, rtol=0, msg=name)


@pytest.mark.parametrize("attention_type", ["nope", "qk_norm_nope", "q_norm_nope", "k_norm_nope"])
def test_drope_checkpoint_on_the_bridge_equals_hf_reference(tokenizer, tmp_path, attention_type):
    path = tiny_drope_checkpoint(tmp_path / attention_type, attention_type=attention_type, tokenizer=tokenizer)
    bridge = load_hooked(path, backend="bridge")
    cfg = bridge.cfg
    assert cfg.is_nope and cfg.drope_attention_type == attention_type and cfg.softmax_scale == pytest.approx(0.07)
    q_w, k_w = qk_norm_weights(path, cfg.n_layers, attention_type)
    ref = _hf_reference(tiny_llama(seed=5), "nope", softmax_scale=0.07, q_norms=q_w, k_norms=k_w)
    ids = _ids(30, cfg.d_vocab)
    with torch.no_grad():
        want = ref(ids).logits
    logits, cache = _cache(bridge, ids)
    assert (logits - want).abs().max() < 1e-4
    if q_w is not None:  # hook_q is the projection, before DroPE's full-width norm; hook_rot_q after it
        x = cache["blocks.1.attn.hook_q"]
        flat = x.reshape(*x.shape[:2], -1)
        normed = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + ref.config.rms_norm_eps) * q_w[1]
        assert torch.allclose(cache["blocks.1.attn.hook_rot_q"], normed.reshape(x.shape), atol=1e-5)
    if hooked_available():
        hooked = load_hooked(path, backend="hooked")
        assert (_cache(hooked, ids)[0] - logits).abs().max() < 1e-4


def test_bridge_nope_has_no_rope_past_2048_and_on_kv_cache_steps(tokenizer):
    """Fails if RoPE leaks into a bridge NoPE model: 2,200 positions (beyond any 2,048-row table) against the HF
    identity-rotary reference, and greedy KV-cache decoding from position 2,100 against full recomputation."""
    from drope_lens.tasks.scoring import greedy_generate

    hf = tiny_llama(seed=3)
    ref = _hf_reference(hf, "nope")
    rope_ref = _hf_reference(hf, "rope")
    bridge = hooked_from_hf(copy.deepcopy(hf), tokenizer, backend="bridge", position_encoding="nope")
    ids = _ids(2200, bridge.cfg.d_vocab, batch=1)
    with torch.no_grad():
        want, with_rope, got = ref(ids).logits, rope_ref(ids).logits, bridge(ids)
    assert (got - want).abs().max() < 1e-4
    assert (with_rope - want).abs().max() > 1e-1  # the check can tell RoPE from NoPE here
    prompt = ids[0, :2100]
    generated, _ = greedy_generate(bridge, prompt, 6, stop_at_eos=False)
    seq = prompt.tolist()
    for token in generated:  # each decoded token is the arg-max of a full, cache-free NoPE forward
        with torch.no_grad():
            assert int(ref(torch.tensor([seq])).logits[0, -1].argmax()) == token
        seq.append(token)


def test_bridge_kv_cache_decoding_equals_full_passes_on_rope(tokenizer):
    from drope_lens.loading import KVCache

    hf = tiny_llama(seed=4)
    ref = _hf_reference(hf, "rope")
    bridge = hooked_from_hf(copy.deepcopy(hf), tokenizer, backend="bridge")
    ids = _ids(24, bridge.cfg.d_vocab, batch=1)
    cache = KVCache(bridge, 1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the cache goes in under the name this transformers wants
        bridge(ids[:, :20], **cache.kwargs(20, 1))
        for pos in range(20, 24):
            step = bridge(ids[:, pos : pos + 1], **cache.kwargs(1, 1))[0, -1]
            assert (step - ref(ids[:, : pos + 1]).logits[0, -1]).abs().max() < 1e-4
    assert cache.inner.get_seq_length() == 24  # the steps went through the cache, not around it


# ------------------------------------------------------------------------------------ fast path and numerics
def test_bridge_fast_path_equals_explicit_and_switches_on_pattern_hooks(tokenizer, monkeypatch):
    bridge = hooked_from_hf(tiny_llama(seed=1), tokenizer, backend="bridge", position_encoding="nope")
    ids = _ids(33, bridge.cfg.d_vocab)
    spy = SdpaSpy(monkeypatch)
    with torch.no_grad():
        fast = bridge(ids)
    assert spy.calls == bridge.cfg.n_layers
    bridge.cfg.fast_attention = False
    with torch.no_grad():
        explicit = bridge(ids)
    assert spy.calls == bridge.cfg.n_layers and (fast - explicit).abs().max() < 1e-5
    bridge.cfg.fast_attention = True
    seen = []
    with torch.no_grad():
        bridge.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda x, hook: seen.append(x.shape))])
    assert seen == [(2, 4, 33, 33)] and spy.calls == bridge.cfg.n_layers + 1  # layer 1 went explicit
    assert not hooks_left(bridge)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "explicit"])
def test_bridge_raises_on_nan_never_zeroes(tokenizer, fast):
    bridge = hooked_from_hf(tiny_llama(), tokenizer, backend="bridge", position_encoding="nope")
    bridge.cfg.fast_attention = fast
    run = lambda **kw: bridge.run_with_hooks(_ids(10, bridge.cfg.d_vocab), **kw)  # noqa: E731
    assert_non_finite_refused(bridge, run, "blocks.1.attn.hook_q", index=(0, 3, 1, 0), match="Layer 1.*NaN")
    half = hooked_from_hf(tiny_llama(seed=6), tokenizer, backend="bridge", position_encoding="nope", dtype="float16")
    half.cfg.fast_attention = fast
    with torch.no_grad():
        for proj in ("q", "k"):
            getattr(half.blocks[0].attn, proj).original_component.weight.mul_(200.0)
    assert torch.isfinite(half(_ids(20, half.cfg.d_vocab))).all()  # fp32 attention keeps fp16 finite
    if not fast:
        half.cfg.fp32_attention = False
        with pytest.raises(NonFiniteError, match="Layer 0"):
            half(_ids(20, half.cfg.d_vocab))


def test_bridge_config_facts_and_to_nope(tokenizer):
    bridge = hooked_from_hf(tiny_llama(seed=1), tokenizer, backend="bridge", model_name="tiny")
    cfg = bridge.cfg
    assert not cfg.is_nope and cfg.describe() == "tiny (RoPE, theta=10000)" and cfg.rotary_dim == cfg.d_head
    twin = to_nope(bridge)
    assert twin is not bridge and twin.cfg.is_nope and not bridge.cfg.is_nope
    assert twin.cfg.describe() == "tiny (zero-shot NoPE (RoPE removed, not recalibrated))"
    ids = _ids(12, cfg.d_vocab)
    with torch.no_grad():
        assert not torch.allclose(bridge(ids), twin(ids))
        same = to_nope(bridge, inplace=True)
        assert same is bridge and torch.allclose(bridge(ids), twin(ids), atol=1e-6)
    with pytest.raises(ValueError, match="already has no RoPE"):
        to_nope(bridge)


# ------------------------------------------------------------------------------------ no prompt, no remote code
@pytest.mark.parametrize("backend", ["bridge", pytest.param("hooked", marks=needs_hooked)])
def test_loading_a_sakana_folder_never_prompts_nor_imports_its_code(tokenizer, tmp_path, monkeypatch, backend):
    """A folder as SakanaAI/DroPE's classes write it: ``auto_map`` in config.json and their ``drope.py`` beside it.
    Its code would leave a marker file; any question on the terminal fails the test."""
    path = tiny_drope_checkpoint(tmp_path / "sakana", attention_type="qk_norm_nope", tokenizer=tokenizer)
    marker = tmp_path / "imported"
    code = f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('remote code ran')\n"
    for name in ("drope.py", "custom_models.py", "configuration_drope.py", "modeling_drope.py"):
        (path / name).write_text(code)
    cfg = json.loads((path / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "drope.DroPELlamaConfig", "AutoModelForCausalLM": "drope.DroPELlamaForCausalLM"}
    (path / "config.json").write_text(json.dumps(cfg))
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    tok_cfg.pop("add_bos_token", None)  # the reload TransformerLens does for tokenizers without it
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg))

    def no_questions(*args, **kwargs):
        raise AssertionError(f"loading asked a question: {args}")

    monkeypatch.setattr("builtins.input", no_questions)
    monkeypatch.setattr(sys, "stdin", None)
    before = set(sys.modules)
    model = load_hooked(path, backend=backend)
    assert model.cfg.drope_attention_type == "qk_norm_nope"
    assert not marker.exists()
    assert not [m for m in set(sys.modules) - before if "drope" in m.split(".")[-1] and "drope_lens" not in m]


def test_to_nope_keeps_the_backend(tokenizer):
    bridge = hooked_from_hf(tiny_llama(seed=1), tokenizer, backend="bridge")
    assert backend_of(to_nope(bridge, backend="bridge")) == "bridge"
    with pytest.raises(DropeLensInputError, match="keeps the model's backend \\('bridge'\\).*backend='hooked'"):
        to_nope(bridge, backend="hooked")


def test_hooked_only_names_say_what_to_use_on_transformer_lens_4(monkeypatch):
    import drope_lens.loading as loading

    monkeypatch.setattr(backend_mod, "tl_version", lambda: (4, 3, 0))
    monkeypatch.delitem(loading.__dict__, "DropeLensConfig", raising=False)
    with pytest.raises(ImportError, match="hooked backend.*DropeLensBridgeConfig"):
        loading.DropeLensConfig  # noqa: B018
