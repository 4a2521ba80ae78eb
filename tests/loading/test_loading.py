"""Foundation: RoPE / NoPE / DroPE-format loading into HookedTransformer, checked against HF."""

import copy
import functools
import json

import pytest
import torch

from drope_lens import (
    InputTooLongError,
    NonFiniteError,
    TokenizerMismatchError,
    UnsupportedModelError,
)
from drope_lens.loading import ModelPair, encode, hooked_from_hf, load_hooked, to_nope
from drope_lens.testing import hf_nope_reference, save_drope_checkpoint, scale_projection, tiny_llama, tiny_tokenizer
from tests.support import assert_non_finite_refused

TOL = 1e-4


def _ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (2, n), generator=g)


@torch.no_grad()
def _max_diff(tl_model, hf_model, tokens) -> float:
    return float((tl_model(tokens) - hf_model(tokens).logits).abs().max())


def test_rope_parity_gqa_explicit_head_dim(tokenizer):
    hf = tiny_llama()
    assert hf.config.head_dim != hf.config.hidden_size // hf.config.num_attention_heads
    tl = hooked_from_hf(hf, tokenizer)
    assert tl.cfg.n_key_value_heads == 2 and tl.cfg.d_head == 24
    assert _max_diff(tl, hf, _ids(40, hf.config.vocab_size)) <= TOL


def test_nope_parity_including_past_rotary_cache(tokenizer):
    hf = tiny_llama(seed=1)
    tl = hooked_from_hf(copy.deepcopy(hf), tokenizer, position_encoding="nope")
    ref = hf_nope_reference(hf)
    assert _max_diff(tl, ref, _ids(64, hf.config.vocab_size)) <= TOL
    # Past TransformerLens's initial 2048-row rotary cache: the cache rebuild must not bring RoPE back.
    long_ids = _ids(2100, hf.config.vocab_size)[:1]
    assert _max_diff(tl, ref, long_ids) <= TOL


def test_nope_config_is_visible_and_rotation_is_identity(tokenizer):
    tl = hooked_from_hf(tiny_llama(), tokenizer, position_encoding="nope")
    assert "position_encoding='nope'" in repr(tl.cfg)
    assert tl.cfg.to_dict()["position_encoding"] == "nope"
    _, cache = tl.run_with_cache(_ids(20, tl.cfg.d_vocab))
    for layer in range(tl.cfg.n_layers):
        assert torch.equal(cache["rot_q", layer], cache["q", layer])
        assert torch.equal(cache["rot_k", layer], cache["k", layer])
    rope = hooked_from_hf(tiny_llama(), tokenizer)
    _, cache = rope.run_with_cache(_ids(20, tl.cfg.d_vocab))
    assert not torch.allclose(cache["rot_q", 0], cache["q", 0])


@pytest.mark.parametrize("nope", [False, True])
def test_greedy_generation_with_kv_cache_matches_hf(tokenizer, nope):
    hf = tiny_llama(seed=2)
    tl = hooked_from_hf(copy.deepcopy(hf), tokenizer, position_encoding="nope" if nope else "rope")
    ref = hf_nope_reference(hf) if nope else hf
    prompt = _ids(12, hf.config.vocab_size)[:1]
    with torch.no_grad():
        out_tl = tl.generate(
            prompt, max_new_tokens=10, do_sample=False, use_past_kv_cache=True, stop_at_eos=False, verbose=False
        )
        out_hf = ref.generate(
            prompt, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=3, eos_token_id=None
        )
    assert out_tl.tolist() == out_hf.tolist()


def test_to_nope_copies_weights_and_leaves_source_alone(tokenizer):
    hf = tiny_llama(seed=3)
    rope = hooked_from_hf(copy.deepcopy(hf), tokenizer)
    twin = to_nope(rope)
    assert rope.cfg.position_encoding == "rope" and twin.cfg.position_encoding == "nope"
    assert "not recalibrated" in twin.cfg.nope_origin
    ids = _ids(30, hf.config.vocab_size)
    assert _max_diff(rope, hf, ids) <= TOL
    assert _max_diff(twin, hf_nope_reference(hf), ids) <= TOL
    with pytest.raises(ValueError, match="already has no RoPE"):
        to_nope(twin)


@pytest.mark.hooked
def test_process_weights_keeps_hooks_and_log_probs(tokenizer):
    hf = tiny_llama(seed=4)
    raw = hooked_from_hf(copy.deepcopy(hf), tokenizer)
    proc = hooked_from_hf(copy.deepcopy(hf), tokenizer, process_weights=True)
    ids = _ids(25, hf.config.vocab_size)
    names = [
        "attn.hook_q",
        "attn.hook_k",
        "attn.hook_v",
        "attn.hook_pattern",
        "hook_mlp_out",
        "hook_resid_post",
        "attn.hook_rot_q",
    ]
    filt = lambda n: any(n.endswith(s) for s in names)  # noqa: E731
    la, ca = raw.run_with_cache(ids, names_filter=filt)
    lb, cb = proc.run_with_cache(ids, names_filter=filt)
    for key in ca.keys():
        torch.testing.assert_close(ca[key], cb[key], atol=1e-4, rtol=1e-4, msg=key)
    torch.testing.assert_close(la.log_softmax(-1), lb.log_softmax(-1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "attention_type,scale", [("nope", 0.05), ("qk_norm_nope", None), ("q_norm_nope", 0.1), ("k_norm_nope", None)]
)
def test_drope_checkpoint_loads_without_remote_code(tmp_path, attention_type, scale):
    hf = tiny_llama(seed=5)
    tok = tiny_tokenizer()
    fields = {"attention_type": attention_type}
    if scale is not None:
        fields["softmax_scale"] = scale
    path = save_drope_checkpoint(hf, tok, tmp_path / "drope", **fields)
    width_q = hf.config.num_attention_heads * hf.config.head_dim
    width_k = hf.config.num_key_value_heads * hf.config.head_dim
    g = torch.Generator().manual_seed(0)
    q_norms = (
        [torch.rand(width_q, generator=g) * 3 for _ in range(2)] if "q" in attention_type.split("_norm")[0] else None
    )
    k_norms = (
        [torch.rand(width_k, generator=g) * 3 for _ in range(2)] if "k" in attention_type.split("_norm")[0] else None
    )
    if q_norms or k_norms:  # add the norm weights to the checkpoint, as SakanaAI's modules store them
        from safetensors.torch import load_file, save_file

        sd = load_file(str(path / "model.safetensors"))
        for i in range(2):
            if q_norms:
                sd[f"model.layers.{i}.self_attn.q_norm.weight"] = q_norms[i]
            if k_norms:
                sd[f"model.layers.{i}.self_attn.k_norm.weight"] = k_norms[i]
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    tl = load_hooked(path)
    assert tl.cfg.position_encoding == "nope" and tl.cfg.drope_attention_type == attention_type
    assert "recalibrated" in tl.cfg.nope_origin
    if scale is not None:
        assert tl.cfg.softmax_scale == scale and abs(tl.cfg.attn_scale - 1 / scale) < 1e-9
    ref = hf_nope_reference(tiny_llama(seed=5), softmax_scale=scale, q_norms=q_norms, k_norms=k_norms)
    assert _max_diff(tl, ref, _ids(33, hf.config.vocab_size)) <= TOL


def test_unknown_drope_attention_type_is_refused(tmp_path):
    path = save_drope_checkpoint(tiny_llama(), tiny_tokenizer(), tmp_path / "d", attention_type="alibi_nope")
    with pytest.raises(UnsupportedModelError, match="alibi_nope.*nope"):
        load_hooked(path)


def test_missing_qk_norm_weights_are_refused(tmp_path):
    path = save_drope_checkpoint(tiny_llama(), tiny_tokenizer(), tmp_path / "d", attention_type="qk_norm_nope")
    with pytest.raises(UnsupportedModelError, match="q_norm.weight"):
        load_hooked(path)


def test_unsupported_architecture_names_what_is_supported(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "g")
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM.*gpt2"):
        load_hooked(tmp_path / "g")


def test_missing_path_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model folder"):
        load_hooked(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hooked(tmp_path / "empty")


def test_pair_rejects_tokenizer_mismatch(tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    a = hooked_from_hf(tiny_llama(), tokenizer)
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "the", "dog", "cat"])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    from drope_lens.testing import round_trip_tokenizer as _round_trip

    other = _round_trip(
        PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    )
    b = to_nope(hooked_from_hf(tiny_llama(), other))
    with pytest.raises(TokenizerMismatchError, match="share a tokenizer"):
        ModelPair(a, b)
    pair = ModelPair(a, to_nope(a))
    assert "not recalibrated" in pair.labels["drope"]


def test_encode_bos_padding_and_too_long(tokenizer):
    batch = encode(tokenizer, ["the cat", "the big old dog ran"])
    assert batch.tokens[:, 0].tolist() == [tokenizer.bos_token_id] * 2
    assert batch.lengths.tolist() == [3, 6]
    assert batch.mask.sum().item() == 9
    with pytest.raises(InputTooLongError, match="n_ctx=4"):
        encode(tokenizer, "the big old dog ran", n_ctx=4)
    assert encode(tokenizer, "the big old dog ran", n_ctx=4, max_length=4).lengths.tolist() == [4]
    model = hooked_from_hf(tiny_llama(max_position_embeddings=16), tokenizer)
    from drope_lens.loading import as_batch

    with pytest.raises(InputTooLongError, match="n_ctx=16"):
        as_batch(model, "the " * 20)


def test_right_padding_leaves_real_tokens_exact(tokenizer):
    tl = hooked_from_hf(tiny_llama(), tokenizer)
    texts = ["the cat saw the dog", "a big red car went fast on the long road to rome"]
    batch = encode(tokenizer, texts)
    with torch.no_grad():
        batched = tl(batch.tokens)
        for i, text in enumerate(texts):
            single = tl(encode(tokenizer, text).tokens)[0]
            n = int(batch.lengths[i])
            assert (batched[i, :n] - single).abs().max() <= 1e-5


def _blow_up_qk(model, factor: float):
    scale_projection(model, 0, "q", factor)
    scale_projection(model, 0, "k", factor)


def test_half_precision_nope_attention_is_fp32_and_finite(tokenizer):
    tl = hooked_from_hf(tiny_llama(seed=6), tokenizer, position_encoding="nope", dtype=torch.float16)
    _blow_up_qk(tl, 200.0)
    ids = _ids(20, tl.cfg.d_vocab)
    _, cache = tl.run_with_cache(ids, names_filter=lambda n: n.endswith(("rot_q", "rot_k", "pattern")))
    q = cache["rot_q", 0].float()
    k = cache["rot_k", 0].float().repeat_interleave(2, dim=2)
    qk = torch.einsum("bqhd,bkhd->bhqk", q, k)
    assert qk.abs().max() > 65504  # q·k itself is beyond fp16's range
    assert cache["pattern", 0].dtype == torch.float32
    assert torch.isfinite(cache["pattern", 0]).all()
    tl.cfg.fp32_attention = False  # the study's fp16 eager path: scores overflow
    tl.cfg.fast_attention = False  # (sdpa kernels accumulate q·k in fp32, so only the explicit path)
    with pytest.raises(NonFiniteError, match="Layer 0.*inf"):
        tl(ids)


def test_injected_nan_is_reported_not_zeroed(tokenizer):
    tl = hooked_from_hf(tiny_llama(), tokenizer, position_encoding="nope")
    run = functools.partial(tl.run_with_hooks, _ids(10, tl.cfg.d_vocab))
    assert_non_finite_refused(tl, run, "blocks.1.attn.hook_q", index=(0, 3, 1, 0), match="Layer 1.*NaN")


@pytest.mark.slow
def test_embedded_model_parity_rope_and_nope(embedded_rope, embedded_nope, embedded_hf):
    ids = encode(
        embedded_rope.tokenizer,
        "Paris is the capital of France. It has many museums, cafés and a famous iron tower built in 1889.",
    ).tokens
    assert _max_diff(embedded_rope, embedded_hf, ids) <= TOL
    ref = hf_nope_reference(copy.deepcopy(embedded_hf))
    assert _max_diff(embedded_nope, ref, ids) <= TOL
    assert embedded_rope.cfg.n_key_value_heads == 3 and embedded_rope.cfg.rotary_base == 100000
    assert json.dumps(embedded_nope.cfg.to_dict(), default=str).count('"nope"') >= 1
