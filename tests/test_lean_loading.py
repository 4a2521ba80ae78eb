"""Lean loading (safetensors tensor by tensor), to_nope(inplace), offloaded pairs, split devices."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import save_drope_checkpoint, tiny_llama, tiny_tokenizer

from drope_lens.loading import load_hooked, load_pair, to_nope
from drope_lens.loading.layout import _RULES


def _ids(n, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (2, n), generator=g)


def _save(hf, path, dtype=None):
    if dtype is not None:
        hf = hf.to(dtype)
    hf.save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path


def _assert_linear_layout(model):
    for name, p in model.named_parameters():
        rule = _RULES.get(name.rsplit(".", 1)[-1])
        if rule is None:
            continue
        to_linear, _ = rule(p)
        assert to_linear(p.data).is_contiguous(), name


def _same_model(a, b, ids):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
        if not k.split(".")[-1].lstrip("_") in ("W_Q", "W_K", "W_V", "W_O"):
            assert sa[k].stride() == sb[k].stride(), k
    with torch.no_grad():
        la, lb = a(ids), b(ids)
    assert torch.equal(la, lb)  # bit-identical


@pytest.mark.parametrize("kw,save_dtype,dtype", [
    ({}, None, torch.float32),  # GQA + explicit head_dim
    ({"num_key_value_heads": 4, "head_dim": 16}, None, torch.float32),  # MHA
    ({"tie_word_embeddings": True}, None, torch.float32),
    ({}, torch.bfloat16, torch.float32),  # bf16 checkpoint, upcast
    ({}, torch.bfloat16, torch.bfloat16),
])
def test_lean_equals_old_loader(tmp_path, kw, save_dtype, dtype):
    hf = tiny_llama(seed=3, **kw)
    path = _save(hf, tmp_path / "m", save_dtype)
    lean = load_hooked(path, dtype=dtype)
    old = load_hooked(path, dtype=dtype, lean=False)
    _assert_linear_layout(lean)
    _same_model(lean, old, _ids(17, hf.config.vocab_size))
    if kw.get("tie_word_embeddings"):  # own storage, like the old loader's
        assert lean.unembed.W_U.data_ptr() != lean.embed.W_E.data_ptr()


@pytest.mark.parametrize("attention_type", ["nope", "qk_norm_nope"])
def test_lean_equals_old_loader_drope(tmp_path, attention_type):
    from safetensors.torch import load_file, save_file

    hf = tiny_llama(seed=4)
    path = save_drope_checkpoint(hf, tiny_tokenizer(), tmp_path / "d", attention_type=attention_type,
                                 softmax_scale=0.2)
    if attention_type != "nope":
        sd = load_file(str(path / "model.safetensors"))
        for i in range(2):
            sd[f"model.layers.{i}.self_attn.q_norm.weight"] = torch.rand(96) * 2
            sd[f"model.layers.{i}.self_attn.k_norm.weight"] = torch.rand(48) * 2
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    lean, old = load_hooked(path), load_hooked(path, lean=False)
    assert lean.cfg.is_nope and lean.cfg.softmax_scale == 0.2
    _same_model(lean, old, _ids(19, hf.config.vocab_size))


def test_lean_refuses_incomplete_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    path = _save(tiny_llama(), tmp_path / "m")
    sd = load_file(str(path / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="up_proj"):
        load_hooked(path)


def test_lean_refuses_shape_mismatch(tmp_path):
    path = _save(tiny_llama(), tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 80
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="disagree"):
        load_hooked(path)


def test_to_nope_inplace_equals_copy_and_shares_memory(tmp_path):
    path = _save(tiny_llama(seed=6), tmp_path / "m")
    ids = _ids(23, len(tiny_tokenizer()))
    copy = to_nope(load_hooked(path))
    model = load_hooked(path)
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    same = to_nope(model, inplace=True)
    assert same is model and model.cfg.is_nope and model.cfg.rotary_dim == 0
    assert all(p.data_ptr() == ptrs[n] for n, p in model.named_parameters())  # nothing copied
    assert all(b.attn.cfg is model.cfg for b in model.blocks)
    with torch.no_grad():
        assert torch.equal(model(ids), copy(ids))
    with pytest.raises(ValueError, match="already"):
        to_nope(model, inplace=True)
