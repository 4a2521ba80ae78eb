"""Tiny Llama-family models and references built offline for the tests."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from torch import nn

from drope_lens.loading.parity import IdentityRotary

WORDS = (
    "the a an of to in is was it that he she they we you i and or but not on at by for with "
    "from as this be have has had do does did will would can could may might one two three four "
    "five six seven eight nine ten cat dog bird fish tree house car road city river sea sky sun "
    "moon star rain snow wind fire water stone gold red blue green black white big small old new "
    "good bad long short high low fast slow hot cold yes no paris france rome italy tokyo japan "
    "positive negative passkey secret number remember answer question review movie film great "
    "awful love hate say said go went come came see saw know knew think thought run ran"
).split()


@functools.lru_cache(maxsize=None)
def tiny_tokenizer():
    """A word-level fast tokenizer (BOS/EOS/PAD/UNK + ~180 words), built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + [str(d) for d in range(10)] + list(".,?!:;'\"-"))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    return _round_trip(fast)


def _round_trip(tok):
    """Save and reload: TransformerLens re-opens tokenizers from their ``name_or_path``."""
    import tempfile

    from transformers import AutoTokenizer

    path = tempfile.mkdtemp(prefix="drope-lens-tok-")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def tiny_config(**kw):
    from transformers import LlamaConfig

    tok_vocab = len(tiny_tokenizer())
    base = dict(
        vocab_size=tok_vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        head_dim=24,  # != hidden_size / heads
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    base.update(kw)
    return LlamaConfig(**base)


def tiny_llama(seed: int = 0, **kw):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**kw)).eval()
    with torch.no_grad():  # larger weights than the default init, so the models are not trivial
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(5.0)
    return model


def hf_nope_reference(hf_model, softmax_scale=None, q_norms=None, k_norms=None):
    """Patch an HF Llama in place into the DroPE reference: identity rotation, scale, q/k norms."""
    hf_model.model.rotary_emb = IdentityRotary(hf_model.model.rotary_emb)
    for i, layer in enumerate(hf_model.model.layers):
        attn = layer.self_attn
        if softmax_scale is not None:
            attn.scaling = softmax_scale
        for proj, norms in (("q_proj", q_norms), ("k_proj", k_norms)):
            if norms is None:
                continue
            lin = getattr(attn, proj)
            norm = nn.RMSNorm(lin.out_features, eps=hf_model.config.rms_norm_eps)
            norm.weight.data.copy_(norms[i])
            setattr(attn, proj, nn.Sequential(lin, norm))
    return hf_model


def save_drope_checkpoint(hf_model, tokenizer, path: Path, **drope_fields) -> Path:
    """Save ``hf_model`` in SakanaAI's DroPE format: model_type llama_drope + remote-code auto_map."""
    hf_model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "llama_drope"
    cfg["architectures"] = ["DroPELlamaForCausalLM"]
    cfg["auto_map"] = {
        "AutoConfig": "custom_models.drope.DroPELlamaConfig",
        "AutoModelForCausalLM": "custom_models.drope.DroPELlamaForCausalLM",
    }
    cfg.update(drope_fields)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def analytic_sink_model(tokenizer, bos_logits, *, bos_scale: float = 3.0):
    """A NoPE HookedTransformer whose attention to position 0 is known in closed form.

    ``bos_logits[layer][head] = b``: every query's score for the BOS key is ``b`` and for any other
    key 0, so ``A[q, 0] = e^b / (e^b + q)``. The residual stream stays the embedding in every layer
    (W_O = 0, MLP out = 0): BOS = ``bos_scale · e_0``, every other token = ``e_1``.
    Returns ``(model, bos_id)``.
    """
    from drope_lens.loading import hooked_from_hf

    model = hooked_from_hf(tiny_llama(), tokenizer, position_encoding="nope")
    cfg = model.cfg
    bos = tokenizer.bos_token_id
    # RMSNorm maps a·e_i to a / sqrt(a²/d + eps) · e_i
    s_other = 1.0 / (1.0 / cfg.d_model + cfg.eps) ** 0.5
    s_bos = bos_scale / (bos_scale**2 / cfg.d_model + cfg.eps) ** 0.5
    group = cfg.n_heads // cfg.n_key_value_heads
    with torch.no_grad():
        model.W_E.zero_()
        model.W_E[:, 1] = 1.0
        model.W_E[bos, 1] = 0.0
        model.W_E[bos, 0] = bos_scale
        for layer, logits in enumerate(bos_logits):
            attn = model.blocks[layer].attn
            attn.W_Q.zero_()
            attn._W_K.zero_()
            attn.W_O.zero_()
            model.blocks[layer].mlp.W_out.zero_()
            for g in range(cfg.n_key_value_heads):
                attn._W_K[g, 0, 0] = 1.0
            for h, b in enumerate(logits):
                c = b * cfg.attn_scale / (s_other * s_bos)
                attn.W_Q[h, 0, 0] = c
                attn.W_Q[h, 1, 0] = c
            assert len(logits) == cfg.n_heads and group >= 1
    return model, bos


# --- massive-values helpers (test_channels / test_massive / test_disruption) -------------------
TINY_TEXTS = (
    "the cat saw a dog in the city and the dog ran to the river",
    "one two three four five six seven eight nine ten one two three four",
    "paris is in france . rome is in italy . tokyo is in japan",
    "the old man said that he would go to the sea with a small red car",
    "i think you know the answer to the question , but can you say it ?",
)


def plant_channels(model, plants, scale: float = 40.0):
    """Scale the projection columns of the given ``{tensor: [(layer, head, dim), ...]}`` channels.

    Q uses ``W_Q[head]``; K and V use the KV-head weights ``_W_K`` / ``_W_V`` when the model has GQA.
    The planted channels' activations become ``scale`` times larger at every token.
    """
    with torch.no_grad():
        for tensor, channels in plants.items():
            for layer, head, dim in channels:
                attn = model.blocks[layer].attn
                name = {"q": "W_Q", "k": "_W_K", "v": "_W_V"}[tensor]
                weight = getattr(attn, name) if hasattr(attn, name) else getattr(attn, name.lstrip("_"))
                weight[head, :, dim] *= scale
    return model


EMBEDDED_TEXTS = (
    "Paris is the capital of France. It has many museums and a famous iron tower.",
    "The river flows past the old mill.",
    "def add(a, b):\n    return a + b  # a tiny function with a comment",
)


@functools.lru_cache(maxsize=4)
def embedded_phase_case(model, hf):
    """Shared by the slow phase tests: TL profiles of EMBEDDED_TEXTS (one padded batch) and HF
    references per unpadded text (fp32 eager attentions, hidden states, raw last residual)."""
    from drope_lens.analysis.profile_pass import phase_profile
    from drope_lens.loading import encode

    batch = encode(model.tokenizer, list(EMBEDDED_TEXTS))
    resid = phase_profile(model, batch, batch_size=len(batch))
    final = phase_profile(model, batch, batch_size=len(batch), last_layer="final_norm")
    refs = []
    for i, n in enumerate(batch.lengths.tolist()):
        grabbed = {}

        def grab(module, args, out, grabbed=grabbed):
            grabbed["last"] = out[0] if isinstance(out, tuple) else out

        handle = hf.model.layers[-1].register_forward_hook(grab)
        try:
            with torch.no_grad():
                out = hf(batch.tokens[i : i + 1, :n], output_attentions=True, output_hidden_states=True)
        finally:
            handle.remove()
        hidden = [h[0].double() for h in out.hidden_states]
        refs.append({
            "attentions": [a[0].double() for a in out.attentions],  # [head, q, k] per layer
            "hidden": hidden,  # [0] embeddings, [l+1] after block l, [-1] final norm output
            "last_raw": grabbed["last"].reshape(hidden[-1].shape).double(),
        })
    return batch, resid, final, refs


def hf_nope_twin(hf):
    """Cached HF NoPE reference (identity rotary) of ``hf`` (a deep copy; ``hf`` is untouched)."""
    return _hf_nope_twin(hf)


@functools.lru_cache(maxsize=2)
def _hf_nope_twin(hf):
    import copy

    return hf_nope_reference(copy.deepcopy(hf))


def qk_norm_drope_model(tokenizer, path: Path, *, gain_seed: int):
    """A tiny ``qk_norm_nope`` DroPE checkpoint (softmax_scale 0.07) with random q/k norm gains, loaded."""
    import torch
    from safetensors.torch import load_file, save_file

    from drope_lens.loading import load_hooked

    hf = tiny_llama(seed=5)
    path = save_drope_checkpoint(hf, tokenizer, path, attention_type="qk_norm_nope", softmax_scale=0.07)
    g = torch.Generator().manual_seed(gain_seed)
    sd = load_file(str(path / "model.safetensors"))
    c = hf.config
    for i in range(c.num_hidden_layers):
        sd[f"model.layers.{i}.self_attn.q_norm.weight"] = torch.rand(c.num_attention_heads * c.head_dim, generator=g) * 3
        sd[f"model.layers.{i}.self_attn.k_norm.weight"] = torch.rand(c.num_key_value_heads * c.head_dim, generator=g) * 3
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    return load_hooked(path)
