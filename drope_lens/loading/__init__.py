"""Loading RoPE models and their DroPE/NoPE twins into TransformerLens: HookedTransformer or TransformerBridge.

Every name is imported on first use (PEP 562): ``drope_lens.loading.backend`` and the CLI's checks stay
light, and the hooked backend's own names (``DropeLensConfig``, ``linear_layout`` …) import only where
HookedTransformer exists (TransformerLens < 4).
"""

from drope_lens._lazy import lazy_exports

_EXPORTS = {
    **{n: "drope_lens.loading.backend" for n in ("BACKENDS", "backend_of", "check_backend", "default_backend")},
    **{n: "drope_lens.loading.backend" for n in ("tl_version",)},
    **{n: "drope_lens.loading.embedded" for n in ("EMBEDDED_NAME", "embedded_checkpoint", "load_embedded")},
    **{n: "drope_lens.loading.facts" for n in ("DROPE_CHECKPOINT", "ZERO_SHOT_NOPE")},
    **{n: "drope_lens.loading.load" for n in ("hooked_from_hf", "load_hooked", "to_nope")},
    "check_logits_finite": "drope_lens.loading.numerics",
    **{n: "drope_lens.loading.pair" for n in ("ModelPair", "check_same_tokenizer", "load_pair")},
    **{n: "drope_lens.loading.surface" for n in ("KVCache", "attention_scale", "explicit_attention")},
    **{n: "drope_lens.loading.tokens" for n in ("TokenBatch", "as_batch", "encode")},
    # the hooked backend (HookedTransformer, TransformerLens < 4)
    **{n: "drope_lens.loading.hooked.config" for n in ("DropeLensConfig", "config_from_hf")},
    "linear_layout": "drope_lens.loading.hooked.layout",
    "install_attention_numerics": "drope_lens.loading.hooked.attention",
    "install_fast_attention": "drope_lens.loading.hooked.fast_attention",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
