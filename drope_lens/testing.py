"""Tiny Llama-family models and known-answer models for tests, built offline (no hub access).

Use them in your own tests the way drope_lens's tests do::

    from drope_lens.analysis import detect_massive
    from drope_lens.testing import TINY_TEXTS, plant_channels, tiny_hooked

    model = plant_channels(tiny_hooked(), {"q": [(0, 1, 5)]})   # one massive Q channel, known in advance
    assert detect_massive(model, list(TINY_TEXTS)).top_channels("q", n=1)[0]["dim"] == 5

* :func:`tiny_tokenizer`, :func:`tiny_config`, :func:`tiny_llama` (HF ``LlamaForCausalLM``, GQA by
  default, ``gqa=False`` for MHA), :func:`tiny_hooked` (the same as a drope_lens model, RoPE or NoPE,
  on either backend);
* :func:`tiny_qwen_tokenizer` (byte-level BPE built as Qwen's, no BOS), :func:`tiny_qwen2`,
  :func:`tiny_qwen3` (HF ``Qwen2ForCausalLM`` with random q/k/v biases,
  ``Qwen3ForCausalLM`` with random per-head q/k norm gains; same sizes), :func:`tiny_model` (any of
  the three by family name);
* :func:`save_drope_checkpoint` / :func:`tiny_drope_checkpoint`: a folder in SakanaAI's DroPE format
  (``model_type: llama_drope`` or ``qwen2_drope`` with ``family="qwen2"``, ``attention_type``,
  ``softmax_scale``, q/k norm gains), what ``load_hooked`` reads; :func:`hf_nope_reference` is the
  matching plain-HF reference (Llama and Qwen alike);
* known answers: :func:`plant_channels` (massive channels where you put them),
  :func:`analytic_sink_model` (attention to BOS in closed form, its answer
  :func:`analytic_bos_attention`).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

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
def tiny_tokenizer() -> Any:
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
    return round_trip_tokenizer(fast)


@functools.lru_cache(maxsize=None)
def tiny_qwen_tokenizer() -> Any:
    """A byte-level BPE tokenizer the way Qwen2/Qwen3 build theirs (Qwen's pre-tokenizer regex, NFC, byte-level
    BPE; ``<|endoftext|>`` as EOS/PAD/UNK and **no BOS**), trained offline on :data:`WORDS` and
    :data:`TINY_TEXTS` (~420 tokens). transformers' ``Qwen2Tokenizer``, which ``AutoTokenizer`` picks for a
    ``qwen2``/``qwen3`` folder, rebuilds it from its vocabulary and merges with the same ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    qwen_split = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501 (Qwen's own regex)
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(qwen_split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([" ".join(WORDS), " ".join(reversed(WORDS)), *TINY_TEXTS], trainer)
    end = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=end, pad_token=end, unk_token=end)
    return round_trip_tokenizer(fast)


def round_trip_tokenizer(tok: Any) -> Any:
    """Save to a temporary folder and reload: TransformerLens re-opens tokenizers from their ``name_or_path``."""
    import tempfile

    from transformers import AutoTokenizer

    path = tempfile.mkdtemp(prefix="drope-lens-tok-")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def tiny_config(*, gqa: bool = True, **kw: Any) -> Any:
    """A 2-layer Llama config for :func:`tiny_tokenizer`: d_model 64, 4 heads of 24 dims (``head_dim`` !=
    d_model / heads), 2 KV heads (``gqa=False``: 4, MHA); ``kw`` overrides any ``LlamaConfig`` field."""
    from transformers import LlamaConfig

    tok_vocab = len(tiny_tokenizer())
    base: dict[str, Any] = dict(
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
    if not gqa:
        base["num_key_value_heads"] = base["num_attention_heads"]
    base.update(kw)
    return LlamaConfig(**base)


def tiny_llama(seed: int = 0, *, gqa: bool = True, **kw: Any) -> Any:
    """A seeded random HF ``LlamaForCausalLM`` (eval mode) with :func:`tiny_config` (``gqa``, ``kw``)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(gqa=gqa, **kw)).eval()
    with torch.no_grad():  # larger weights than the default init, so the models are not trivial
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(5.0)
    return model


def tiny_qwen_config(version: int = 2, *, gqa: bool = True, **kw: Any) -> Any:
    """A 2-layer Qwen2 (``version=2``) or Qwen3 (``version=3``) config for :func:`tiny_qwen_tokenizer` with
    :func:`tiny_config`'s sizes (``head_dim`` 24 != d_model / heads, GQA unless ``gqa=False``); ``kw``
    overrides any field."""
    import transformers

    base = tiny_config(gqa=gqa).to_dict()
    end = tiny_qwen_tokenizer().eos_token_id
    fields: dict[str, Any] = {
        k: base[k]
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
            "rms_norm_eps",
            "tie_word_embeddings",
        )
    }
    fields.update(
        vocab_size=len(tiny_qwen_tokenizer()),
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=end,
        rope_theta=10000.0,
        use_sliding_window=False,
    )
    fields.update(kw)
    config_class = {2: transformers.Qwen2Config, 3: transformers.Qwen3Config}[version]
    return config_class(**fields)


def _tiny_qwen(version: int, seed: int, gqa: bool, **kw: Any) -> Any:
    import transformers

    torch.manual_seed(seed)
    model_class = {2: transformers.Qwen2ForCausalLM, 3: transformers.Qwen3ForCausalLM}[version]
    model = model_class(tiny_qwen_config(version, gqa=gqa, **kw)).eval()
    with torch.no_grad():  # as tiny_llama, and biases / per-head norm gains that are not their neutral init
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(5.0)
            elif name.endswith("_proj.bias"):
                p.copy_(torch.randn_like(p))
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(0.5 + 1.5 * torch.rand_like(p))
    return model


def tiny_qwen2(seed: int = 0, *, gqa: bool = True, **kw: Any) -> Any:
    """A seeded random HF ``Qwen2ForCausalLM`` (eval mode, :func:`tiny_qwen_config`) whose q/k/v biases are
    random (dropping them changes every logit)."""
    return _tiny_qwen(2, seed, gqa, **kw)


def tiny_qwen3(seed: int = 0, *, gqa: bool = True, **kw: Any) -> Any:
    """A seeded random HF ``Qwen3ForCausalLM`` (eval mode, :func:`tiny_qwen_config`) whose per-head q/k norm
    gains are random in [0.5, 2) (dropping the norms changes every logit)."""
    return _tiny_qwen(3, seed, gqa, **kw)


#: family name -> tiny HF model builder
TINY_MODELS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "qwen3": tiny_qwen3}


def tiny_model(family: str = "llama", seed: int = 0, **kw: Any) -> Any:
    """:func:`tiny_llama`, :func:`tiny_qwen2` or :func:`tiny_qwen3` by family name."""
    return TINY_MODELS[family](seed, **kw)


def tiny_hooked(
    seed: int = 0,
    *,
    position_encoding: str = "rope",
    tokenizer: Any = None,
    backend: Optional[str] = None,
    **kw: Any,
) -> Any:
    """:func:`tiny_llama` as a drope_lens model (``position_encoding`` ``"rope"`` or ``"nope"``) of ``backend``
    (default: :func:`~drope_lens.loading.backend.default_backend`)."""
    from drope_lens.loading import hooked_from_hf

    tok = tiny_tokenizer() if tokenizer is None else tokenizer
    return hooked_from_hf(tiny_llama(seed, **kw), tok, position_encoding=position_encoding, backend=backend)


def hf_nope_reference(
    hf_model: Any,
    softmax_scale: Optional[float] = None,
    q_norms: Optional[Sequence[torch.Tensor]] = None,
    k_norms: Optional[Sequence[torch.Tensor]] = None,
) -> Any:
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


def save_drope_checkpoint(hf_model: Any, tokenizer: Any, path: Path, **drope_fields: Any) -> Path:
    """Save ``hf_model`` (Llama or Qwen2) in SakanaAI's DroPE format: ``model_type`` ``llama_drope`` /
    ``qwen2_drope``, ``DroPE<Arch>ForCausalLM`` and a remote-code ``auto_map``, as their classes write it."""
    hf_model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    cfg = json.loads((path / "config.json").read_text())
    base = {"llama": "Llama", "qwen2": "Qwen2"}[cfg["model_type"]]
    cfg["model_type"] = f"{cfg['model_type']}_drope"
    cfg["architectures"] = [f"DroPE{base}ForCausalLM"]
    cfg["auto_map"] = {
        "AutoConfig": f"custom_models.drope.DroPE{base}Config",
        "AutoModelForCausalLM": f"custom_models.drope.DroPE{base}ForCausalLM",
    }
    cfg.update(drope_fields)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def analytic_sink_model(
    tokenizer: Any, bos_logits: Sequence[Sequence[float]], *, bos_scale: float = 3.0, backend: Optional[str] = None
) -> tuple[Any, int]:
    """A NoPE model whose attention to position 0 is known in closed form.

    ``bos_logits[layer][head] = b``: every query's score for the BOS key is ``b`` and for any other
    key 0, so ``A[q, 0] = e^b / (e^b + q)``. The residual stream stays the embedding in every layer
    (W_O = 0, MLP out = 0): BOS = ``bos_scale · e_0``, every other token = ``e_1``. The weights are set
    on the HF model before conversion, so every backend gets the same model. Returns ``(model, bos_id)``.
    """
    from drope_lens.loading import hooked_from_hf

    hf = tiny_llama()
    c = hf.config
    d_model, d_head, eps = c.hidden_size, c.head_dim, c.rms_norm_eps
    n_heads, n_kv = c.num_attention_heads, c.num_key_value_heads
    bos = tokenizer.bos_token_id
    # RMSNorm (gain 1) maps a·e_i to a / sqrt(a²/d + eps) · e_i
    s_other = 1.0 / (1.0 / d_model + eps) ** 0.5
    s_bos = bos_scale / (bos_scale**2 / d_model + eps) ** 0.5
    with torch.no_grad():
        embed = hf.model.embed_tokens.weight
        embed.zero_()
        embed[:, 1] = 1.0
        embed[bos, 1] = 0.0
        embed[bos, 0] = bos_scale
        for layer, logits in enumerate(bos_logits):
            assert len(logits) == n_heads
            block = hf.model.layers[layer]
            for norm in (block.input_layernorm, block.post_attention_layernorm):
                norm.weight.fill_(1.0)
            attn = block.self_attn
            for proj in (attn.q_proj, attn.k_proj, attn.o_proj, block.mlp.down_proj):
                proj.weight.zero_()
            for g in range(n_kv):  # k = e_0 component of the input, in dim 0 of every KV head
                attn.k_proj.weight[g * d_head, 0] = 1.0
            for h, b in enumerate(logits):  # q·k / sqrt(d_head) = b exactly when the key is BOS
                q_row = attn.q_proj.weight[h * d_head]
                q_row[0] = q_row[1] = b * d_head**0.5 / (s_other * s_bos)
    model = hooked_from_hf(hf, tokenizer, position_encoding="nope", backend=backend)
    return model, bos


def analytic_bos_attention(b: float, n: int, *, include_bos_row: bool = False) -> float:
    """The known answer of :func:`analytic_sink_model`: a head with BOS logit ``b`` on a text of ``n``
    tokens gives ``A[q, 0] = e^b / (e^b + q)``; this is its mean over the query rows ``q = 1 … n-1``
    (``0 … n-1`` with ``include_bos_row``), the sink score of drope_lens's two row conventions."""
    rows = range(0 if include_bos_row else 1, n)
    return sum(math.exp(b) / (math.exp(b) + q) for q in rows) / len(rows)


# --- massive values ---------------------------------------------------------------------------
TINY_TEXTS = (  # five texts in :func:`tiny_tokenizer`'s vocabulary
    "the cat saw a dog in the city and the dog ran to the river",
    "one two three four five six seven eight nine ten one two three four",
    "paris is in france . rome is in italy . tokyo is in japan",
    "the old man said that he would go to the sea with a small red car",
    "i think you know the answer to the question , but can you say it ?",
)


def plant_channels(model: Any, plants: Mapping[str, Sequence[tuple[int, int, int]]], scale: float = 40.0) -> Any:
    """Scale the projection weights of the given ``{tensor: [(layer, head, dim), ...]}`` channels, in place.

    Q uses query head ``head``; K and V use KV head ``head`` when the model has GQA. The planted
    channels' activations become ``scale`` times larger at every token. Works on either backend.
    """
    from drope_lens.loading.backend import is_bridge

    d_head = model.cfg.d_head
    with torch.no_grad():
        for tensor, channels in plants.items():
            for layer, head, dim in channels:
                attn = model.blocks[layer].attn
                if is_bridge(model):  # the HF projection: rows are (head, d_head) outputs (Qwen2: a bias too)
                    proj = getattr(attn, tensor).original_component
                    proj.weight[head * d_head + dim] *= scale
                    if proj.bias is not None:
                        proj.bias[head * d_head + dim] *= scale
                    continue
                name = {"q": "W_Q", "k": "_W_K", "v": "_W_V"}[tensor]
                weight = getattr(attn, name) if hasattr(attn, name) else getattr(attn, name.lstrip("_"))
                weight[head, :, dim] *= scale
    return model


def tiny_drope_checkpoint(
    path: Path,
    *,
    attention_type: str = "qk_norm_nope",
    softmax_scale: Optional[float] = 0.07,
    gain_seed: Optional[int] = 0,
    seed: int = 5,
    tokenizer: Any = None,
    family: str = "llama",
    **kw: Any,
) -> Path:
    """Save a tiny random DroPE checkpoint in SakanaAI's format to ``path`` and return it.

    ``attention_type`` is any DroPE variant (``nope``, ``qk_norm_nope``, ``q_norm_nope``, ``k_norm_nope``);
    the q/k norm variants get RMSNorm gains drawn uniformly in [0, 3) from ``gain_seed`` (``None``: the
    all-ones gains the variant starts from). ``family``: ``"llama"`` (``llama_drope``) or ``"qwen2"``
    (``qwen2_drope``: :func:`tiny_qwen2`, q/k/v biases included). ``kw`` goes to the model builder
    (e.g. ``gqa=False``).
    """
    from safetensors.torch import load_file, save_file

    tok = tokenizer if tokenizer is not None else tiny_qwen_tokenizer() if family != "llama" else tiny_tokenizer()
    hf = tiny_model(family, seed, **kw)
    fields: dict = {"attention_type": attention_type}
    if softmax_scale is not None:
        fields["softmax_scale"] = softmax_scale
    path = save_drope_checkpoint(hf, tok, Path(path), **fields)
    norms = [n for n in ("q", "k") if attention_type in (f"{n}_norm_nope", "qk_norm_nope")]
    if not norms:
        return path
    g = torch.Generator().manual_seed(gain_seed) if gain_seed is not None else None
    sd = load_file(str(path / "model.safetensors"))
    c = hf.config
    width = {"q": c.num_attention_heads * c.head_dim, "k": c.num_key_value_heads * c.head_dim}
    for i in range(c.num_hidden_layers):
        for n in norms:
            gain = torch.ones(width[n]) if g is None else torch.rand(width[n], generator=g) * 3
            sd[f"model.layers.{i}.self_attn.{n}_norm.weight"] = gain
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def qk_norm_drope_model(tokenizer: Any, path: Path, *, gain_seed: int, backend: Optional[str] = None) -> Any:
    """A tiny ``qk_norm_nope`` DroPE checkpoint (softmax_scale 0.07) with random q/k norm gains, loaded."""
    from drope_lens.loading import load_hooked

    return load_hooked(tiny_drope_checkpoint(path, gain_seed=gain_seed, tokenizer=tokenizer), backend=backend)


# --- weights on either backend ----------------------------------------------------------------
def _bridge(model: Any) -> bool:
    from drope_lens.loading.backend import is_bridge

    return is_bridge(model)


def projection_heads(model: Any, layer: int, which: str) -> torch.Tensor:
    """A copy of ``layer``'s q/k/v projection as ``[head, d_model, d_head]`` (k, v: KV heads), either backend."""
    attn = model.blocks[layer].attn
    if _bridge(model):
        w = getattr(attn, which).original_component.weight.detach()  # [(head d_head), d_model]
        return w.reshape(-1, model.cfg.d_head, w.shape[1]).permute(0, 2, 1).clone()
    name = {"q": "W_Q", "k": "_W_K", "v": "_W_V"}[which]
    return (getattr(attn, name) if hasattr(attn, name) else getattr(attn, name.lstrip("_"))).detach().clone()


def scale_projection(model: Any, layer: int, which: str, factor: float) -> None:
    """Multiply ``layer``'s q/k/v/o projection weights by ``factor`` in place (0: zero them), either backend."""
    attn = model.blocks[layer].attn
    with torch.no_grad():
        if _bridge(model):
            getattr(attn, which).original_component.weight.mul_(factor)
            return
        name = {"q": "W_Q", "k": "_W_K", "v": "_W_V", "o": "W_O"}[which]
        (getattr(attn, name) if hasattr(attn, name) else getattr(attn, name.lstrip("_"))).mul_(factor)


def embedding_matrix(model: Any) -> torch.Tensor:
    """The token embedding ``[d_vocab, d_model]`` (the parameter itself), either backend."""
    return model.embed.original_component.weight if _bridge(model) else model.W_E


def norm_gain(model: Any, layer: int, which: str = "ln1") -> torch.Tensor:
    """The RMSNorm gain of ``blocks[layer].<which>`` (``ln1``/``ln2``; the parameter itself), either backend."""
    norm = getattr(model.blocks[layer], which)
    return norm.original_component.weight if _bridge(model) else norm.w


# --- quantized models -------------------------------------------------------------------------
def dequantized_hf(quantized: Any) -> Any:
    """A float32 copy of a bitsandbytes-quantized HF causal LM whose linear weights are the dequantized ones.

    The reference for "hooks see the dequantized activations": for NF4/FP4 (where bitsandbytes dequantizes
    the weight and multiplies in the compute dtype) this plain model computes the very same function.
    LLM.int8() also quantizes the activations, so for ``int8`` it is an approximation only. Accepts the HF
    model inside a bridge too (``bridge.original_model``, whose modules TransformerLens wraps in place).
    """
    import bitsandbytes.functional as bnbf

    model = type(quantized)(quantized.config).eval()
    state = {}
    with torch.no_grad():
        for wrapped_name, module in quantized.named_modules():
            if type(module).__module__.startswith("transformer_lens"):
                continue  # a bridge component: its HF module is visited on its own
            name = ".".join(part for part in wrapped_name.split(".") if part != "_original_component")
            if name.rsplit(".", 1)[-1] in ("drope_q_norm", "drope_k_norm"):
                continue  # drope_lens's DroPE norms: hf_nope_reference adds the reference's own
            weight = getattr(module, "weight", None)
            if weight is None:
                continue
            # LLM.int8()'s row scales sit on the weight until its first forward pass, then on the layer's state
            scb = getattr(weight, "SCB", None)
            scb = scb if scb is not None else getattr(getattr(module, "state", None), "SCB", None)
            if getattr(weight, "quant_state", None) is not None:
                state[f"{name}.weight"] = bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
            elif weight.dtype == torch.int8 and scb is not None:
                state[f"{name}.weight"] = weight.data.float() * scb.float()[:, None] / 127.0
            else:
                state[f"{name}.weight"] = weight.detach().float()
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                state[f"{name}.bias"] = bias.detach().float()
    own = model.state_dict()
    for key in [k for k in state if k not in own and not bool(state[k].any())]:
        del state[key]  # zero biases TransformerLens adds to wrapped modules (the unembedding's)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if not k.endswith("lm_head.weight")] or unexpected:
        raise RuntimeError(f"dequantized copy: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.float()
