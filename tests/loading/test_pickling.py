"""Every patched model pickles, unpickles and deep-copies with its patches alive; the config round-trips."""

from __future__ import annotations

import copy
import functools
import io
import pickle

import pytest
import torch

from drope_lens.loading import to_nope
from drope_lens.loading.hooked.attention import NumericsAttention, QKNormAttention
from drope_lens.loading.hooked.config import DropeLensConfig
from drope_lens.loading.hooked.fast_attention import FastAttention, fast_path_installed
from drope_lens.loading.hooked.zero_bias import ZeroBiasGatedMLP, ZeroBiasUnembed
from tests.support import SdpaSpy, assert_non_finite_refused, attention_layouts

pytestmark = pytest.mark.hooked  # HookedTransformer only

MODELS = attention_layouts(drope_gain_seed=4)


def _torch_round_trip(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


ROUND_TRIPS = {
    "torch.save": _torch_round_trip,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "deepcopy": copy.deepcopy,
}


def _ids(model, n=13):
    return torch.randint(4, model.cfg.d_vocab, (2, n), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("how", sorted(ROUND_TRIPS))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_round_trip_keeps_logits_and_every_patch(kind, how, tokenizer, tmp_path, monkeypatch):
    model = MODELS[kind](tokenizer, tmp_path)
    ids = _ids(model)
    with torch.no_grad():
        ref = model(ids)
    twin = ROUND_TRIPS[how](model)
    assert twin is not model
    # every patch is there, as classes
    assert fast_path_installed(twin)
    for block in twin.blocks:
        assert isinstance(block.attn, (FastAttention, NumericsAttention))
        assert isinstance(block.mlp, ZeroBiasGatedMLP)
        assert block.attn.W_Q.is_contiguous()
    assert isinstance(twin.unembed, ZeroBiasUnembed)
    assert isinstance(twin.cfg, DropeLensConfig) and twin.cfg.to_dict() == model.cfg.to_dict()
    # same logits through the fast path (one sdpa call per layer)
    spy = SdpaSpy(monkeypatch)
    with torch.no_grad():
        out = twin(ids)
    assert torch.equal(out, ref) and spy.calls == twin.cfg.n_layers
    # fp32 / NaN checks still active
    run = functools.partial(twin.run_with_hooks, ids)
    assert_non_finite_refused(twin, run, "blocks.1.attn.hook_q", index=(0, 3, 1, 0), match="Layer 1.*NaN")
    # the copy is independent: editing it leaves the source alone
    with torch.no_grad():
        twin.blocks[0].attn.W_Q.mul_(3.0)
        assert not torch.equal(twin(ids), ref) and torch.equal(model(ids), ref)


def test_drope_qk_norms_survive_the_round_trip(tokenizer, tmp_path):
    model = MODELS["drope_qk_norm"](tokenizer, tmp_path)
    ids = _ids(model)
    with torch.no_grad():
        ref = model(ids)
    for how, round_trip in ROUND_TRIPS.items():
        twin = round_trip(model)
        for block, src in zip(twin.blocks, model.blocks, strict=True):
            assert isinstance(block.attn, QKNormAttention), how
            assert torch.equal(block.attn.drope_q_norm.weight, src.attn.drope_q_norm.weight), how
        assert twin.cfg.drope_attention_type == "qk_norm_nope" and twin.cfg.softmax_scale == 0.07
        with torch.no_grad():
            assert torch.equal(twin(ids), ref), how
            for block in twin.blocks:  # the norms are what makes the logits: without them, others
                block.attn.drope_q_norm = None
                block.attn.drope_k_norm = None
            assert not torch.allclose(twin(ids), ref, atol=1e-3), how


def test_config_round_trips(tokenizer, tmp_path):
    for kind in ("rope_gqa", "nope_mha", "drope_qk_norm"):
        cfg = MODELS[kind](tokenizer, tmp_path / kind).cfg
        again = DropeLensConfig.from_dict(dict(cfg.to_dict()))
        assert again.to_dict() == cfg.to_dict() and again.describe(attention=True) == cfg.describe(attention=True)
        assert pickle.loads(pickle.dumps(cfg)).to_dict() == cfg.to_dict()
        assert copy.deepcopy(cfg).to_dict() == cfg.to_dict()


def test_nope_twin_and_generation_after_unpickling(tokenizer, tmp_path):
    model = _torch_round_trip(MODELS["rope_gqa"](tokenizer, tmp_path))
    twin = to_nope(model)
    assert twin.cfg.is_nope and fast_path_installed(twin)
    prompt = _ids(model, 6)
    kw = dict(max_new_tokens=5, do_sample=False, use_past_kv_cache=True, verbose=False)
    assert torch.equal(model.generate(prompt, **kw), MODELS["rope_gqa"](tokenizer, tmp_path).generate(prompt, **kw))
