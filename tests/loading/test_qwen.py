"""Qwen2 / Qwen3 on the bridge: RoPE models, their zero-shot NoPE twins and SakanaAI ``qwen2_drope`` checkpoints.

Every number is compared with an independent HF forward (eager attention; for NoPE/DroPE the HF model with the
identity rotation, ``softmax_scale`` and the full-width q/k RMSNorm, :func:`drope_lens.testing.hf_nope_reference`).
The tiny models carry random q/k/v biases (Qwen2) and random per-head q/k norm gains (Qwen3), so a loader that
dropped either would fail the logit checks.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from drope_lens.errors import DropeLensInputError, UnsupportedModelError
from drope_lens.loading import hooked_from_hf, load_hooked, load_pair, to_nope
from drope_lens.loading.backend import backend_of, hooked_available
from drope_lens.loading.source import qk_norm_weights
from drope_lens.testing import hf_nope_reference, tiny_drope_checkpoint, tiny_qwen2, tiny_qwen3, tiny_qwen_tokenizer

QWEN = {"qwen2": tiny_qwen2, "qwen3": tiny_qwen3}
ATTN_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_pattern")
TOL = 1e-4


@pytest.fixture
def tokenizer():
    """Qwen's kind of tokenizer (byte-level BPE, no BOS: drope_lens gives it ``<|endoftext|>``)."""
    return tiny_qwen_tokenizer()


def _ids(n: int, vocab: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, n), generator=g)
    ids[:, 0] = 1
    return ids


def _reference(hf, nope: bool = False, **drope):
    ref = copy.deepcopy(hf)
    if nope:
        hf_nope_reference(ref, **drope)
    ref.config._attn_implementation = "eager"
    return ref.eval()


class _Capture:
    """HF-side hook_q/k/v/pattern: the q/k/v projection outputs (as ``[batch, pos, head, d_head]``) and the
    eager attention weights of every layer."""

    def __init__(self, hf):
        self.values: dict = {}
        self.handles = []
        d_head = hf.config.head_dim
        for layer, block in enumerate(hf.model.layers):
            attn = block.self_attn
            for name in ("q", "k", "v"):
                proj = getattr(attn, f"{name}_proj")
                lin = proj[0] if isinstance(proj, torch.nn.Sequential) else proj  # the DroPE reference wraps it

                def hook(mod, inp, out, layer=layer, name=name):
                    self.values[f"blocks.{layer}.attn.hook_{name}"] = out.view(*out.shape[:2], -1, d_head)

                self.handles.append(lin.register_forward_hook(hook))

            def attn_hook(mod, inp, out, layer=layer):
                self.values[f"blocks.{layer}.attn.hook_pattern"] = out[1]

            self.handles.append(attn.register_forward_hook(attn_hook))

    def run(self, hf, ids):
        with torch.no_grad():
            logits = hf(ids, output_attentions=True).logits
        for h in self.handles:
            h.remove()
        return logits


def _check_against_hf(model, ref, ids):
    capture = _Capture(ref)
    want_logits = capture.run(ref, ids)
    names = set(capture.values)
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
        fast = model(ids)
    assert (logits - want_logits).abs().max() < TOL
    assert (fast - want_logits).abs().max() < TOL  # the sdpa path too
    for name in names:
        torch.testing.assert_close(cache[name], capture.values[name], atol=TOL, rtol=0, msg=name)


# ------------------------------------------------------------------------------------ RoPE models and NoPE twins
@pytest.mark.parametrize("gqa", [True, False], ids=["gqa", "mha"])
@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_qwen_rope_and_nope_twin_equal_hf(tokenizer, family, gqa):
    hf = QWEN[family](seed=2, gqa=gqa)
    model = hooked_from_hf(copy.deepcopy(hf), tokenizer, model_name=f"tiny-{family}")
    assert backend_of(model) == "bridge"  # the default for an architecture only the bridge holds
    ids = _ids(24, model.cfg.d_vocab)
    _check_against_hf(model, _reference(hf), ids)
    twin = to_nope(model)
    assert twin.cfg.is_nope and twin.cfg.describe().startswith(f"tiny-{family} (zero-shot NoPE")
    _check_against_hf(twin, _reference(hf, nope=True), ids)
    cache = twin.run_with_cache(ids, names_filter=lambda n: n.endswith(("hook_rot_q", "hook_q_normed")))[1]
    if family == "qwen3":  # the per-head norm is kept, and with NoPE it is what hook_rot_q shows
        assert torch.equal(cache["blocks.1.attn.hook_rot_q"], cache["blocks.1.attn.hook_q_normed"])


def test_qwen2_biases_and_qwen3_norms_matter(tokenizer):
    """The checks above could not pass with the biases or the per-head norms dropped: here they are dropped by
    hand and the logits move far beyond the tolerance."""
    ids = _ids(16, 150)
    for family in ("qwen2", "qwen3"):
        hf = QWEN[family](seed=2)
        stripped = copy.deepcopy(hf)
        with torch.no_grad():
            for block in stripped.model.layers:
                attn = block.self_attn
                if family == "qwen2":
                    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                        proj.bias.zero_()
                else:
                    attn.q_norm.weight.fill_(1.0)
                    attn.k_norm.weight.fill_(1.0)
            assert (_reference(hf)(ids).logits - _reference(stripped)(ids).logits).abs().max() > 100 * TOL


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_qwen_nope_has_no_rope_past_2048_and_on_kv_cache_steps(tokenizer, family):
    hf = QWEN[family](seed=3)
    twin = hooked_from_hf(copy.deepcopy(hf), tokenizer, position_encoding="nope")
    ids = _ids(2200, twin.cfg.d_vocab, batch=1)
    with torch.no_grad():
        want, with_rope, got = _reference(hf, nope=True)(ids).logits, _reference(hf)(ids).logits, twin(ids)
    assert (got - want).abs().max() < TOL
    assert (with_rope - want).abs().max() > 1e-1  # the check can tell RoPE from NoPE at these positions
    from drope_lens.tasks.scoring import greedy_generate

    ref = _reference(hf, nope=True)
    prompt = ids[0, :2100]
    generated, _ = greedy_generate(twin, prompt, 4, stop_at_eos=False)  # KV-cache steps from position 2,100
    seq = prompt.tolist()
    for token in generated:  # each one the arg-max of a full, cache-free NoPE forward
        with torch.no_grad():
            assert int(ref(torch.tensor([seq])).logits[0, -1].argmax()) == token
        seq.append(token)


# ------------------------------------------------------------------------------------ qwen2_drope checkpoints
@pytest.mark.parametrize("attention_type", ["nope", "qk_norm_nope", "q_norm_nope", "k_norm_nope"])
def test_qwen2_drope_checkpoint_equals_hf_reference(tokenizer, tmp_path, attention_type):
    path = tiny_drope_checkpoint(tmp_path / attention_type, attention_type=attention_type, family="qwen2")
    raw = json.loads((path / "config.json").read_text())
    assert raw["model_type"] == "qwen2_drope" and raw["architectures"] == ["DroPEQwen2ForCausalLM"]
    model = load_hooked(path)
    cfg = model.cfg
    assert backend_of(model) == "bridge" and cfg.is_nope and cfg.drope_attention_type == attention_type
    assert cfg.softmax_scale == pytest.approx(0.07)
    q_w, k_w = qk_norm_weights(path, cfg.n_layers, attention_type)
    if attention_type != "nope":  # SakanaAI's norm is full-width: one gain per channel of all heads
        widths = {"q": cfg.n_heads * cfg.d_head, "k": cfg.n_key_value_heads * cfg.d_head}
        assert all(w.numel() == widths[s] for s, ws in (("q", q_w), ("k", k_w)) if ws for w in ws)
    ref = _reference(tiny_qwen2(seed=5), nope=True, softmax_scale=0.07, q_norms=q_w, k_norms=k_w)
    ids = _ids(30, cfg.d_vocab)
    _check_against_hf(model, ref, ids)
    bias = model.blocks[0].attn.q.original_component.bias
    assert bias is not None and bias.abs().max() > 0.1  # the checkpoint's q/k/v biases are there


def test_qwen2_drope_never_loads_as_llama(tokenizer, tmp_path):
    """The hole: a qwen2_drope folder once loaded as a Llama DroPE model with its q/k/v biases dropped (logits
    off by ~2). It must load as Qwen2, and reading it as Llama must give visibly different logits."""
    from drope_lens.testing import hf_nope_reference as patch

    path = tiny_drope_checkpoint(tmp_path / "q", attention_type="nope", family="qwen2", softmax_scale=None)
    model = load_hooked(path)
    assert type(model.original_model).__name__ == "Qwen2ForCausalLM"
    from transformers import LlamaForCausalLM

    as_llama = patch(LlamaForCausalLM.from_pretrained(str(path), config=_llama_view(path)).eval())
    ids = _ids(20, model.cfg.d_vocab)
    with torch.no_grad():
        assert (model(ids) - as_llama(ids).logits).abs().max() > 0.1


def _llama_view(path):
    from drope_lens.loading.source import LLAMA, plain_config_of

    raw = json.loads((path / "config.json").read_text())
    return plain_config_of(raw, LLAMA)


def test_qwen_pair_from_folders(tokenizer, tmp_path):
    hf = tiny_qwen2(seed=4)
    hf.save_pretrained(tmp_path / "rope")
    tokenizer.save_pretrained(tmp_path / "rope")
    drope = tiny_drope_checkpoint(tmp_path / "drope", attention_type="qk_norm_nope", family="qwen2")
    pair = load_pair(str(tmp_path / "rope"), str(drope))
    assert backend_of(pair.rope) == backend_of(pair.drope) == "bridge"
    assert not pair.rope.cfg.is_nope and pair.drope.cfg.is_nope
    twin = load_pair(str(tmp_path / "rope")).drope
    assert twin.cfg.is_nope and twin.cfg.nope_origin.startswith("zero-shot")
    # Qwen's tokenizers have no BOS: position 0 is <|endoftext|>, the same for both models of the pair
    assert type(pair.tokenizer).__name__ == "Qwen2Tokenizer"  # what transformers builds for a qwen2 folder
    end = pair.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    batch = pair.encode(["the cat saw a dog", "one two"])
    assert batch.tokens[:, 0].tolist() == [end, end] and pair.drope.tokenizer.bos_token_id == end


# ------------------------------------------------------------------------------------ refusals
@pytest.mark.skipif(not hooked_available(), reason="HookedTransformer needs TransformerLens < 4")
def test_hooked_backend_refuses_qwen_naming_the_bridge(tokenizer, tmp_path):
    hf = tiny_qwen2()
    with pytest.raises(DropeLensInputError, match=r"Qwen2 \(Qwen2ForCausalLM\) needs the bridge backend"):
        hooked_from_hf(hf, tokenizer, backend="hooked")
    hf.save_pretrained(tmp_path / "q")
    tokenizer.save_pretrained(tmp_path / "q")
    with pytest.raises(DropeLensInputError, match="backend='bridge'"):
        load_hooked(tmp_path / "q", backend="hooked")
    with pytest.raises(UnsupportedModelError, match="Qwen3 models load on the bridge backend only"):
        from drope_lens.loading.hooked.config import config_from_hf  # the hooked internals refuse too

        config_from_hf(tiny_qwen3().config, model_name="q")


def test_sliding_window_is_refused(tokenizer, tmp_path):
    hf = tiny_qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=1)
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        hooked_from_hf(hf, tokenizer)
    hf.save_pretrained(tmp_path / "s")
    tokenizer.save_pretrained(tmp_path / "s")
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        load_hooked(tmp_path / "s")
