"""Turn a loaded RoPE HookedTransformer into its zero-shot NoPE twin (RoPE dropped, no recalibration)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformer_lens import HookedTransformer

from drope_lens.loading.facts import ZERO_SHOT_NOPE
from drope_lens.loading.hooked.attention import install_attention_numerics
from drope_lens.loading.hooked.config import DropeLensConfig
from drope_lens.loading.hooked.load import check_model_class


def as_drope_lens_config(cfg) -> DropeLensConfig:
    """Wrap any HookedTransformerConfig (e.g. from ``HookedTransformer.from_pretrained``)."""
    if isinstance(cfg, DropeLensConfig):
        return cfg
    if cfg.positional_embedding_type != "rotary":
        raise ValueError(
            "drope_lens compares rotary (RoPE) models with their NoPE twins; this model uses "
            f"positional_embedding_type={cfg.positional_embedding_type!r}."
        )
    fields = {k: v for k, v in cfg.to_dict().items() if k in DropeLensConfig.__dataclass_fields__}
    return DropeLensConfig(**fields)


def to_nope(
    model: HookedTransformer,
    *,
    origin: str = ZERO_SHOT_NOPE,
    inplace: bool = False,
    model_class: Optional[type] = None,
) -> HookedTransformer:
    """The model with the identity rotation in every layer (zero-shot NoPE, no recalibration).

    ``inplace=False`` (default): a new HookedTransformer with copied weights; the source model is
    left untouched, and memory doubles. ``inplace=True``: ``model`` itself becomes the NoPE model
    (its config is replaced, its rotary tables rebuilt for ``rotary_dim=0``) and is returned; no
    weight is copied, so memory does not grow, and the RoPE original is gone. Either way the
    config says ``position_encoding='nope'`` and ``nope_origin`` (default: "zero-shot NoPE (RoPE
    removed, not recalibrated)"). The twin is of ``model``'s class (e.g. a HookedSAETransformer stays
    one) unless ``model_class`` names another HookedTransformer subclass; in place, ``model`` must
    already be an instance of it.
    """
    cfg = as_drope_lens_config(model.cfg)
    if cfg.is_nope:
        raise ValueError("This model already has no RoPE (position_encoding='nope').")
    nope_cfg = cfg.as_nope(origin)
    if inplace:
        if model_class is not None and not isinstance(model, check_model_class(model_class)):
            raise TypeError(
                f"to_nope(inplace=True) keeps the model's class ({type(model).__name__}); it cannot become a "
                f"{model_class.__name__}. Use inplace=False, or load the model with model_class= in the first place."
            )
        return _to_nope_inplace(model, nope_cfg)
    nope_cfg.init_weights = False  # all weights are copied below
    cls = check_model_class(model_class) if model_class is not None else type(model)
    twin = cls(nope_cfg, tokenizer=model.tokenizer, move_to_device=False)
    nope_cfg.init_weights = True
    source = dict(model.named_parameters())
    bad = sorted(set(source) ^ {n for n, _ in twin.named_parameters()})
    if bad:
        raise RuntimeError(f"NoPE twin could not take these weights: {bad[:5]}")
    for name, param in list(twin.named_parameters()):  # one contiguous clone each
        module_name, _, leaf = name.rpartition(".")
        setattr(
            twin.get_submodule(module_name) if module_name else twin,
            leaf,
            nn.Parameter(
                source[name].detach().clone(memory_format=torch.contiguous_format), requires_grad=param.requires_grad
            ),
        )
    for name, buf in model.named_buffers():  # masks etc. on the source's devices
        if "rotary_" not in name:
            module_name, _, leaf = name.rpartition(".")
            (twin.get_submodule(module_name) if module_name else twin)._buffers[leaf] = buf.clone()
    for block, src in zip(twin.blocks, model.blocks, strict=True):  # rotary tables where the block lives
        for leaf in ("rotary_sin", "rotary_cos"):
            table = block.attn._buffers.get(leaf)
            if table is not None:
                block.attn._buffers[leaf] = table.to(src.attn.W_Q.device)
    twin.eval()
    return install_attention_numerics(twin)


def _to_nope_inplace(model: HookedTransformer, nope_cfg: DropeLensConfig) -> HookedTransformer:
    old = model.cfg
    for module in model.modules():
        if getattr(module, "cfg", None) is old:
            module.cfg = nope_cfg  # type: ignore[assignment]  # an nn.Module attribute to mypy
    for block in model.blocks:
        attn = block.attn
        if "rotary_sin" in attn._buffers:
            ref = attn.rotary_sin
            assert nope_cfg.rotary_dim is not None  # 0 for NoPE
            sin, cos = attn.calculate_sin_cos_rotary(
                nope_cfg.rotary_dim, ref.shape[0], base=attn._rotary_base(), dtype=nope_cfg.dtype
            )
            attn._buffers["rotary_sin"] = sin.to(ref.device)
            attn._buffers["rotary_cos"] = cos.to(ref.device)
    return install_attention_numerics(model)
