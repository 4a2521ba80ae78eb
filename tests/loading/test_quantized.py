"""Quantized loading through bitsandbytes on the bridge, on CPU (bitsandbytes >= 0.48 ships a CPU library).

The reference for NF4/FP4 is exact: a plain float32 HF model whose linear weights are the dequantized ones
(:func:`drope_lens.testing.dequantized_hf`); bitsandbytes dequantizes and multiplies in the compute dtype, so
hooks and logits must equal it. The distance to the unquantized model is the quantization's, bounded on the
embedded model (perplexity) with a stated tolerance.
"""

from __future__ import annotations

import pytest
import torch

from drope_lens.errors import DropeLensInputError
from drope_lens.loading import load_hooked, load_pair, to_nope
from drope_lens.loading.backend import backend_of
from drope_lens.testing import (
    dequantized_hf,
    hf_nope_reference,
    tiny_drope_checkpoint,
    tiny_llama,
    tiny_qwen2,
    tiny_qwen_tokenizer,
)

pytest.importorskip("bitsandbytes")
pytest.importorskip("accelerate")

HOOKS = ("hook_q", "hook_k", "hook_v", "hook_pattern")
TOL = 1e-4
#: NF4 raises the embedded model's perplexity by less than this fraction (measured +26 % on 4 built-in texts at
#: 96 tokens, with transformers' NF4 model alone: the quantization's effect, not drope_lens's)
NF4_PPL_TOLERANCE = 0.5


def _ids(n, vocab, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, n), generator=g)
    ids[:, 0] = 1
    return ids


def _save(hf, tok, path):
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _hooks(model, ids):
    names = {f"blocks.{layer}.attn.{h}" for layer in range(model.cfg.n_layers) for h in HOOKS}
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
    return logits, {n: cache[n] for n in names}


def _reference_hooks(ref, ids):
    """hook_q/k/v (projection outputs, per head) and hook_pattern (eager attention weights) of a plain HF model."""
    got, handles, d_head = {}, [], ref.config.head_dim
    for layer, block in enumerate(ref.model.layers):
        attn = block.self_attn
        for name in ("q", "k", "v"):
            proj = getattr(attn, f"{name}_proj")
            lin = proj[0] if isinstance(proj, torch.nn.Sequential) else proj

            def hook(mod, inp, out, layer=layer, name=name):
                got[f"blocks.{layer}.attn.hook_{name}"] = out.view(*out.shape[:2], -1, d_head)

            handles.append(lin.register_forward_hook(hook))
        handles.append(
            attn.register_forward_hook(
                lambda m, i, o, layer=layer: got.__setitem__(f"blocks.{layer}.attn.hook_pattern", o[1])
            )
        )
    ref.config._attn_implementation = "eager"
    with torch.no_grad():
        logits = ref(ids, output_attentions=True).logits
    for h in handles:
        h.remove()
    return logits, got


def _compare(model, ref, ids):
    logits, cache = _hooks(model, ids)
    want, want_cache = _reference_hooks(ref, ids)
    assert (logits - want).abs().max() < TOL
    for name, value in want_cache.items():
        torch.testing.assert_close(cache[name], value, atol=TOL, rtol=0, msg=name)
    return logits, cache


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    from drope_lens.testing import tiny_tokenizer

    return _save(tiny_llama(seed=7), tiny_tokenizer(), tmp_path_factory.mktemp("q") / "llama")


# ------------------------------------------------------------------------------------ the model and its hooks
@pytest.mark.parametrize("quantize", ["nf4", "fp4"])
def test_4bit_hooks_see_dequantized_activations(llama_folder, quantize):
    model = load_hooked(llama_folder, quantize=quantize)
    assert backend_of(model) == "bridge"  # the default backend for a quantized model
    cfg = model.cfg
    assert cfg.quantization == quantize and f"{llama_folder} {quantize} (RoPE" in cfg.describe()
    q_proj = model.blocks[0].attn.q.original_component
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.dtype == torch.uint8
    assert q_proj.weight.quant_state.quant_type == quantize
    assert q_proj.weight.quant_state.nested is (quantize == "nf4")  # double quantization: NF4, as the study
    ref = dequantized_hf(model.original_model)
    _, cache = _compare(model, ref, _ids(20, cfg.d_vocab))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in cache.values())
    # the dequantized weights are NF4's, not the originals: the quantization error is there, and bounded
    original = tiny_llama(seed=7).model.layers[0].self_attn.q_proj.weight.detach()
    err = (ref.model.layers[0].self_attn.q_proj.weight.detach() - original).norm() / original.norm()
    assert 0.01 < float(err) < 0.2


def test_nf4_in_bfloat16_keeps_attention_and_drope_norms_in_float32(tmp_path):
    path = tiny_drope_checkpoint(tmp_path / "d", attention_type="qk_norm_nope")
    model = load_hooked(path, quantize="nf4", dtype="bfloat16")
    attn = model.blocks[1].attn
    hf_attn = attn.original_component
    assert hf_attn.drope_q_norm.weight.dtype == torch.float32 and hf_attn.drope_k_norm.weight.dtype == torch.float32
    assert attn.q.original_component.weight.dtype == torch.uint8  # _cast_parameters left the packed weight alone
    assert model.original_model.model.embed_tokens.weight.dtype == torch.bfloat16
    logits, cache = _hooks(model, _ids(16, model.cfg.d_vocab))
    assert cache["blocks.1.attn.hook_q"].dtype == torch.bfloat16  # activations in the compute dtype
    assert cache["blocks.1.attn.hook_pattern"].dtype == torch.float32  # scores and softmax in float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("attention_type", ["nope", "qk_norm_nope"])
def test_nf4_drope_checkpoint_equals_dequantized_reference(tmp_path, attention_type):
    from drope_lens.loading.source import qk_norm_weights

    path = tiny_drope_checkpoint(tmp_path / attention_type, attention_type=attention_type)
    model = load_hooked(path, quantize="nf4")
    assert model.cfg.is_nope and model.cfg.quantization == "nf4"
    q_w, k_w = qk_norm_weights(path, model.cfg.n_layers, attention_type)
    ref = hf_nope_reference(dequantized_hf(model.original_model), softmax_scale=0.07, q_norms=q_w, k_norms=k_w)
    _compare(model, ref, _ids(24, model.cfg.d_vocab))


def test_nf4_qwen2_keeps_its_biases(tmp_path):
    tok = tiny_qwen_tokenizer()
    path = _save(tiny_qwen2(seed=3), tok, tmp_path / "qwen2")
    model = load_hooked(path, quantize="nf4")
    q_proj = model.blocks[0].attn.q.original_component
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.bias.abs().max() > 0.1
    _compare(model, dequantized_hf(model.original_model), _ids(20, model.cfg.d_vocab))


def test_int8_loads_and_stays_close(llama_folder):
    model = load_hooked(llama_folder, quantize="int8")
    assert model.cfg.quantization == "int8" and model.blocks[0].attn.q.original_component.weight.dtype == torch.int8
    ids = _ids(20, model.cfg.d_vocab)
    logits, cache = _hooks(model, ids)
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in cache.values())
    # LLM.int8() also rounds activations: close, not equal
    want = dequantized_hf(model.original_model)(ids).logits.detach()
    assert float((logits - want).abs().max() / want.abs().max()) < 0.1


# ------------------------------------------------------------------------------------ twins and pairs
def test_nope_twin_of_a_quantized_model(llama_folder):
    model = load_hooked(llama_folder, quantize="nf4")
    twin = to_nope(model)  # deep copy of a bitsandbytes model
    loaded = load_hooked(llama_folder, quantize="nf4", nope=True)
    ids = _ids(16, model.cfg.d_vocab)
    with torch.no_grad():
        assert torch.equal(twin(ids), loaded(ids))  # bitsandbytes quantizes deterministically
        assert not torch.allclose(twin(ids), model(ids))
    w0, w1 = (m.blocks[0].attn.q.original_component.weight for m in (model, twin))
    assert torch.equal(w0.data, w1.data) and w0.data_ptr() != w1.data_ptr()


def test_quantized_pair_labels_and_provenance(llama_folder):
    from drope_lens.runs.provenance import model_identity, provenance

    pair = load_pair(str(llama_folder), quantize="nf4")
    assert backend_of(pair.rope) == backend_of(pair.drope) == "bridge"
    assert all(" nf4 (" in pair.labels[r] for r in ("rope", "drope"))
    assert pair.drope.cfg.is_nope and pair.drope.cfg.quantization == "nf4"
    w0, w1 = (m.blocks[1].mlp.out.original_component.weight for m in (pair.rope, pair.drope))
    assert torch.equal(w0.data, w1.data)  # loaded twice, the same quantized weights
    prov = provenance(pair, {})
    assert {m["quantization"] for m in prov["models"].values()} == {"nf4"}
    assert model_identity(pair.rope)["quantization"] == "nf4"
    plain = load_pair(str(llama_folder), backend="bridge")
    assert model_identity(plain.rope)["quantization"] is None


# ------------------------------------------------------------------------------------ refusals
def test_hooked_backend_refuses_quantize_before_loading(llama_folder, monkeypatch):
    import transformers

    def never(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(never))
    from drope_lens.loading.backend import hooked_available

    # TransformerLens 4 has no hooked backend at all: refused too, with a message naming the bridge
    why = r"quantize='nf4' needs the bridge backend.*backend='bridge'" if hooked_available() else "backend='bridge'"
    with pytest.raises(DropeLensInputError, match=why):
        load_hooked(llama_folder, quantize="nf4", backend="hooked")
    with pytest.raises(DropeLensInputError, match=why):
        load_pair(str(llama_folder), quantize="nf4", backend="hooked")
    monkeypatch.setenv("DROPE_LENS_BACKEND", "hooked")
    with pytest.raises(DropeLensInputError, match=why):
        load_hooked(llama_folder, quantize="nf4")
    with pytest.raises(DropeLensInputError, match=r"quantize must be one of \('nf4', 'fp4', 'int8'\)"):
        load_hooked(llama_folder, quantize="nf3")


def test_in_memory_model_is_not_quantized_by_drope_lens(tokenizer):
    with pytest.raises(DropeLensInputError, match="already loaded"):
        load_hooked(tiny_llama(), quantize="nf4")


def test_a_prequantized_hf_model_is_taken_as_it_is(llama_folder, tokenizer):
    from transformers import LlamaForCausalLM

    from drope_lens.loading import hooked_from_hf
    from drope_lens.loading.bridge.quantize import bnb_config

    hf = LlamaForCausalLM.from_pretrained(
        llama_folder, quantization_config=bnb_config("nf4", torch.float32), device_map={"": "cpu"}
    )
    ref = dequantized_hf(hf)
    model = hooked_from_hf(hf, tokenizer)
    assert backend_of(model) == "bridge" and model.cfg.quantization == "nf4"
    _compare(model, ref, _ids(12, model.cfg.d_vocab))


# ------------------------------------------------------------------------------------ the embedded model
@pytest.mark.slow
def test_embedded_nf4_perplexity_is_hf_nf4s(embedded_rope):
    """drope_lens's NF4 model computes what transformers' own NF4 model computes (1e-5 relative); how far both
    are from float32 is the quantization's (measured +26 % on these four texts, 75.2 vs 59.8, with HF alone)."""
    import math

    from transformers import AutoModelForCausalLM

    from drope_lens.analysis.perplexity import perplexity
    from drope_lens.data.texts import builtin_texts
    from drope_lens.loading import embedded_checkpoint, load_embedded
    from drope_lens.loading.bridge.quantize import bnb_config, honour_compute_dtype
    from drope_lens.loading.tokens import encode

    texts = builtin_texts()[:4]
    nf4 = load_embedded(quantize="nf4")
    assert nf4.cfg.describe().startswith("SmolLM2-135M-Instruct nf4 (RoPE")
    quant = perplexity(nf4, texts, max_length=96).ppl
    hf = AutoModelForCausalLM.from_pretrained(
        str(embedded_checkpoint()), quantization_config=bnb_config("nf4", torch.float32), device_map={"": "cpu"}
    )
    honour_compute_dtype(hf)
    batch = encode(nf4.tokenizer, texts, max_length=96)
    nll, n = 0.0, 0
    with torch.no_grad():
        for row, length in zip(batch.tokens, batch.lengths.tolist(), strict=True):
            logits = hf(row[None, :length]).logits[0].float()
            nll += float(torch.nn.functional.cross_entropy(logits[:-1], row[1:length], reduction="sum"))
            n += length - 1
    assert quant == pytest.approx(math.exp(nll / n), rel=1e-5)
    full = perplexity(embedded_rope, texts, max_length=96).ppl
    assert 1.0 < quant / full < 1.0 + NF4_PPL_TOLERANCE  # the quantization's own effect, bounded


def test_quantization_is_a_fact_of_both_configs():
    """Every fact in FACT_DEFAULTS (``quantization`` included) is a field of the hooked config, with its default."""
    from drope_lens.loading.backend import hooked_available
    from drope_lens.loading.facts import FACT_DEFAULTS

    assert FACT_DEFAULTS["quantization"] is None
    if not hooked_available():
        pytest.skip("HookedTransformer needs TransformerLens < 4")
    import dataclasses

    from drope_lens.loading.hooked.config import DropeLensConfig

    fields = {f.name: f.default for f in dataclasses.fields(DropeLensConfig)}
    assert {name: fields.get(name, "missing") for name in FACT_DEFAULTS} == FACT_DEFAULTS
