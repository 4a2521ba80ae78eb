"""Loading RoPE models and their DroPE/NoPE twins into TransformerLens: HookedTransformer or TransformerBridge.

Backend-neutral names are imported here; the hooked backend's own (``DropeLensConfig``,
``linear_layout`` …) are imported on first use, so this package imports on TransformerLens 4, where
HookedTransformer no longer exists.
"""

from drope_lens._lazy import lazy_exports
from drope_lens.loading.backend import BACKENDS, backend_of, check_backend, default_backend, tl_version
from drope_lens.loading.embedded import EMBEDDED_NAME, embedded_checkpoint, load_embedded
from drope_lens.loading.facts import DROPE_CHECKPOINT, ZERO_SHOT_NOPE
from drope_lens.loading.load import hooked_from_hf, load_hooked, to_nope
from drope_lens.loading.numerics import check_logits_finite
from drope_lens.loading.pair import ModelPair, check_same_tokenizer, load_pair
from drope_lens.loading.surface import KVCache, attention_scale, explicit_attention
from drope_lens.loading.tokens import TokenBatch, as_batch, encode

_HOOKED = {
    "DropeLensConfig": "drope_lens.loading.hooked.config",
    "config_from_hf": "drope_lens.loading.hooked.config",
    "linear_layout": "drope_lens.loading.hooked.layout",
    "install_attention_numerics": "drope_lens.loading.hooked.attention",
    "install_fast_attention": "drope_lens.loading.hooked.fast_attention",
}

__all__ = [
    "BACKENDS",
    "backend_of",
    "check_backend",
    "default_backend",
    "tl_version",
    "DROPE_CHECKPOINT",
    "ZERO_SHOT_NOPE",
    "EMBEDDED_NAME",
    "embedded_checkpoint",
    "load_embedded",
    "hooked_from_hf",
    "load_hooked",
    "to_nope",
    "check_logits_finite",
    "ModelPair",
    "check_same_tokenizer",
    "load_pair",
    "KVCache",
    "attention_scale",
    "explicit_attention",
    "TokenBatch",
    "as_batch",
    "encode",
    *_HOOKED,
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOOKED)
