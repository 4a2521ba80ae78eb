"""Loading RoPE models and their DroPE/NoPE twins into TransformerLens: HookedTransformer or TransformerBridge.

Every name is imported on first use (PEP 562): ``drope_lens.loading.backend`` and the CLI's checks stay
light, and the hooked backend's own names (``DropeLensConfig``, ``config_from_hf`` …) import only where
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
    "DropeLensBridgeConfig": "drope_lens.loading.bridge.config",
}
#: The hooked backend's own names (HookedTransformer, TransformerLens < 4).
_HOOKED = {
    **{n: "drope_lens.loading.hooked.config" for n in ("DropeLensConfig", "config_from_hf")},
    "install_attention_numerics": "drope_lens.loading.hooked.attention",
    "install_fast_attention": "drope_lens.loading.hooked.fast_attention",
}

__all__ = [*_EXPORTS, *_HOOKED]

_getattr, __dir__ = lazy_exports(__name__, globals(), {**_EXPORTS, **_HOOKED})


def __getattr__(name: str):
    if name in _HOOKED:
        from drope_lens.loading.backend import hooked_available

        if not hooked_available():
            raise ImportError(
                f"drope_lens.loading.{name} belongs to the hooked backend (HookedTransformer), which TransformerLens 4 "
                "no longer has; on TransformerBridge the config is DropeLensBridgeConfig (docs/backends.md)."
            )
    return _getattr(name)
