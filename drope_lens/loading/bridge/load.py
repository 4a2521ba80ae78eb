"""Llama-family, Qwen2 and Qwen3 causal LMs (RoPE, zero-shot NoPE, SakanaAI DroPE) as TransformerBridges.

The HF model is loaded once (``from_pretrained`` reads the safetensors straight into its parameters;
no converted copy is made), optionally quantized by bitsandbytes (:mod:`.quantize`) and placed by a
device map (:mod:`.devices`), and wrapped by ``TransformerBridge.boot_transformers(hf_model=...)``
with drope_lens's adapter (:mod:`.adapter`), in compatibility mode without weight processing: hook
names and shapes are HookedTransformer's, and the numbers are the HF model's. DroPE's
``softmax_scale`` is written into each HF attention's ``scaling`` and its q/k norms are attached as
``drope_q_norm`` / ``drope_k_norm`` (float32, on the layer's device); the positional encoding is the
config's ``position_encoding`` fact, read by every attention at run time (:mod:`.attention`).
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, Optional, Sequence

import torch
from transformer_lens.model_bridge import TransformerBridge

from drope_lens.loading.bridge import devices
from drope_lens.loading.bridge.adapter import drope_lens_adapters
from drope_lens.loading.bridge.config import adopt_config
from drope_lens.loading.bridge.quantize import (
    bnb_config,
    check_available,
    honour_compute_dtype,
    is_quantized_parameter,
    quantization_of,
    release_freed_host_memory,
)
from drope_lens.loading.facts import ZERO_SHOT_NOPE
from drope_lens.loading.numerics import FullWidthRMSNorm
from drope_lens.loading.source import (
    Source,
    as_dtype,
    check_full_attention,
    check_no_bias,
    check_supported,
    config_get,
    qk_norm_weights,
    rope_theta_of,
    tokenizer_with_bos,
)


def _cast_parameters(hf_model: Any, dtype: torch.dtype) -> None:
    """Parameters to ``dtype``; buffers (the rotary ``inv_freq``) keep theirs, as HF loads them, and so do
    bitsandbytes' quantized weights (packed storage: casting would destroy them) and the meta placeholders
    of offloaded modules."""
    for p in hf_model.parameters():
        if is_quantized_parameter(p) or p.device.type == "meta":
            continue
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def attach_qk_norms(
    hf_model: Any, q_norms: Optional[Sequence[torch.Tensor]], k_norms: Optional[Sequence[torch.Tensor]]
) -> None:
    """DroPE's full-width q/k RMSNorms as ``drope_q_norm``/``drope_k_norm`` of each HF attention."""
    eps = float(config_get(hf_model.config, "rms_norm_eps", 1e-6))
    for layer, block in enumerate(hf_model.model.layers):
        attn = block.self_attn
        device = devices.execution_device(block)
        for name, weights in (("drope_q_norm", q_norms), ("drope_k_norm", k_norms)):
            norm = None
            if weights is not None:
                w = weights[layer]
                norm = FullWidthRMSNorm(w.numel(), eps).to(device)
                norm.weight.data.copy_(w.to(torch.float32))
            setattr(attn, name, norm)


def bridge_from_hf(
    hf_model: Any,
    tokenizer: Any = None,
    *,
    model_name: Optional[str] = None,
    position_encoding: str = "rope",
    nope_origin: Optional[str] = None,
    dtype: Any = None,
    device: Any = "cpu",
    n_ctx: Optional[int] = None,
    source: Optional[str] = None,
    drope_attention_type: Optional[str] = None,
    softmax_scale: Optional[float] = None,
    q_norms: Optional[Sequence[torch.Tensor]] = None,
    k_norms: Optional[Sequence[torch.Tensor]] = None,
) -> TransformerBridge:
    """Wrap an in-memory HF causal LM (Llama-family, Qwen2, Qwen3; taken over, not copied) as a drope_lens
    TransformerBridge.

    A model quantized by bitsandbytes (``quantization_config``) keeps its quantized weights and says so in
    ``cfg.quantization``; a model placed by a device map (``hf_device_map``) stays where it is (``device``
    is then not used, and ``cfg.device`` is the embedding's device).
    """
    check_supported(hf_model.config, backend="bridge")
    check_no_bias(hf_model.config)
    check_full_attention(hf_model.config)
    quantization = quantization_of(hf_model)
    mapped = bool(getattr(hf_model, "hf_device_map", None))
    if mapped:
        devices.check_realised(hf_model)
    floats = [p for p in hf_model.parameters() if p.is_floating_point() and not is_quantized_parameter(p)]
    dtype = as_dtype(dtype) if dtype is not None else (floats[0].dtype if floats else torch.float32)
    if not mapped:
        hf_model.to(torch.device(device))
    _cast_parameters(hf_model, dtype)
    if quantization is not None:
        honour_compute_dtype(hf_model)
    hf_model.config._attn_implementation = "eager"  # the bridge's attention replaces it anyway
    if n_ctx is not None:
        hf_model.config.max_position_embeddings = int(n_ctx)
    if softmax_scale is not None:
        for block in hf_model.model.layers:
            block.self_attn.scaling = float(softmax_scale)
    if q_norms is not None or k_norms is not None:
        attach_qk_norms(hf_model, q_norms, k_norms)
    name = str(model_name or getattr(hf_model.config, "_name_or_path", None) or "llama")
    # Given no tokenizer, TransformerLens's boot would open one by the model's name (a hub download, or a
    # folder's remote code): it gets a placeholder instead, and the bridge then has none, like the model.
    boot_tokenizer = tokenizer_with_bos(tokenizer) if tokenizer is not None else _placeholder_tokenizer()
    with drope_lens_adapters(), _quiet():
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=boot_tokenizer, dtype=dtype)
        bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    if tokenizer is None:
        bridge.tokenizer = None
    theta = rope_theta_of(hf_model.config)
    cfg = adopt_config(
        bridge.cfg,
        position_encoding=position_encoding,
        nope_origin=nope_origin,
        drope_attention_type=drope_attention_type,
        softmax_scale=softmax_scale,
        source=source or "in-memory",
        rope_theta=theta,
        quantization=quantization,
    )
    cfg.model_name = name
    cfg.rotary_base = theta  # type: ignore[assignment]  # TransformerLens reads rope_theta from the 4.x layout only
    cfg.rotary_dim = 0 if cfg.is_nope else cfg.d_head
    cfg.device = str(devices.input_device(hf_model) if mapped else torch.device(device))
    cfg.dtype = dtype
    cfg.use_attn_scale = True
    cfg.attn_scale = 1.0 / float(hf_model.model.layers[0].self_attn.scaling)  # the divisor, as HookedTransformer
    for block in bridge.blocks:
        block.attn.model_cfg = cfg
    bridge.eval()
    return bridge


def load_source(
    src: Source,
    *,
    dtype: torch.dtype,
    device: Any,
    n_ctx: Optional[int],
    model_name: Optional[str],
    quantize: Optional[str] = None,
    device_map: Optional[devices.DeviceMap] = None,
    max_memory: Optional[dict] = None,
) -> TransformerBridge:
    """A TransformerBridge of a checkpoint read by :func:`~drope_lens.loading.source.read_source`.

    ``quantize``: ``"nf4"``, ``"fp4"`` or ``"int8"`` (bitsandbytes, :mod:`.quantize`; compute in ``dtype``);
    ``device_map`` / ``max_memory``: HF's placement over several devices (:mod:`.devices`), instead of
    ``device``.
    """
    devices.check_device_map(device_map, max_memory)
    kwargs: dict[str, Any] = {"config": src.hf_config, "dtype": dtype}
    if quantize is not None:
        check_available()
        kwargs["quantization_config"] = bnb_config(quantize, dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
    elif quantize is not None:
        kwargs["device_map"] = {"": str(torch.device(device))}  # bitsandbytes quantizes as it places
    with _quiet():
        hf_model = src.family.model_class().from_pretrained(src.name, **kwargs)
    if quantize is not None:
        release_freed_host_memory()
    if device_map is not None:
        devices.check_realised(hf_model)
        realised = getattr(hf_model, "hf_device_map", None)
        hf_model.drope_lens_device_map = dict(realised) if realised else {"": str(devices.input_device(hf_model))}
    q_norms, k_norms = (None, None)
    if src.attention_type not in (None, "nope"):
        q_norms, k_norms = qk_norm_weights(src.name, src.hf_config.num_hidden_layers, src.attention_type)
    return bridge_from_hf(
        hf_model,
        src.tokenizer,
        model_name=model_name or src.name,
        position_encoding="nope" if src.nope else "rope",
        nope_origin=src.origin,
        dtype=dtype,
        device=devices.input_device(hf_model) if device_map is not None else device,
        n_ctx=n_ctx,
        source=src.name,
        drope_attention_type=src.attention_type,
        softmax_scale=src.softmax_scale,
        q_norms=q_norms,
        k_norms=k_norms,
    )


def to_nope(model: TransformerBridge, *, origin: str = ZERO_SHOT_NOPE, inplace: bool = False) -> TransformerBridge:
    """The bridge with the identity rotation in every layer (see :func:`drope_lens.loading.to_nope`)."""
    if getattr(model.cfg, "is_nope", False):
        raise ValueError("This model already has no RoPE (position_encoding='nope').")
    twin = model if inplace else copy.deepcopy(model)
    twin.cfg.position_encoding = "nope"
    twin.cfg.nope_origin = origin
    twin.cfg.rotary_dim = 0
    for block in twin.blocks:
        block.attn.model_cfg = twin.cfg
    return twin


def _placeholder_tokenizer() -> Any:
    """A one-token-per-special tokenizer, only so that booting does not open one by name."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(specials)}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.init_kwargs.update(name_or_path="", add_bos_token=True)  # what TransformerLens reads to keep it as it is
    return tok


class _quiet:
    """TransformerLens's and transformers' load-time chatter (deprecation notes, unexpected DroPE norm
    keys, "Loading weights" bars) off inside the block; errors still raise."""

    def __enter__(self) -> None:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._levels = {}
        for name in ("transformers", "transformer_lens", "root"):
            logger = logging.getLogger(None if name == "root" else name)
            self._levels[name] = logger.level
            logger.setLevel(logging.ERROR)
        from transformers.utils import logging as hf_logging

        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: Any) -> None:
        from transformers.utils import logging as hf_logging

        if self._bars:
            hf_logging.enable_progress_bar()
        for name, level in self._levels.items():
            logging.getLogger(None if name == "root" else name).setLevel(level)
        self._warnings.__exit__(*exc)
