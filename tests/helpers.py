"""Tiny Llama-family models and references built offline for the tests."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from torch import nn

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


class _IdentityRotary(nn.Module):
    """HF rotary module replacement returning cos=1, sin=0 (SakanaAI DroPE's NoPEAttention)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, position_ids):
        cos, sin = self.inner(x, position_ids)
        return torch.ones_like(cos), torch.zeros_like(sin)


def hf_nope_reference(hf_model, softmax_scale=None, q_norms=None, k_norms=None):
    """Patch an HF Llama in place into the DroPE reference: identity rotation, scale, q/k norms."""
    hf_model.model.rotary_emb = _IdentityRotary(hf_model.model.rotary_emb)
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
