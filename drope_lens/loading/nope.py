"""Turn a loaded RoPE HookedTransformer into its zero-shot NoPE twin (RoPE dropped, no recalibration)."""

from __future__ import annotations

from transformer_lens import HookedTransformer

from drope_lens.loading.config import ZERO_SHOT_NOPE, DropeLensConfig
from drope_lens.loading.layout import linear_layout
from drope_lens.loading.numerics import install_attention_numerics


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


def to_nope(model: HookedTransformer, *, origin: str = ZERO_SHOT_NOPE) -> HookedTransformer:
    """A new HookedTransformer with the same weights and the identity rotation in every layer.

    The source model is left untouched. The copy's config says ``position_encoding='nope'`` and
    ``nope_origin`` (default: "zero-shot NoPE (RoPE removed, not recalibrated)").
    """
    cfg = as_drope_lens_config(model.cfg)
    if cfg.is_nope:
        raise ValueError("This model already has no RoPE (position_encoding='nope').")
    nope_cfg = cfg.as_nope(origin)
    nope_cfg.init_weights = False  # all weights are copied below
    twin = HookedTransformer(nope_cfg, tokenizer=model.tokenizer, move_to_device=False)
    nope_cfg.init_weights = True
    state = {k: v for k, v in model.state_dict().items() if "rotary_" not in k}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    bad = [k for k in missing if "rotary_" not in k] + list(unexpected)
    if bad:
        raise RuntimeError(f"NoPE twin could not take these weights: {bad[:5]}")
    twin.to(nope_cfg.device)
    twin.eval()
    linear_layout(twin)
    return install_attention_numerics(twin)
