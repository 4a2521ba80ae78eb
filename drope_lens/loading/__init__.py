"""Loading RoPE models and their DroPE/NoPE twins into HookedTransformer."""

from drope_lens.loading.config import (
    DROPE_CHECKPOINT,
    ZERO_SHOT_NOPE,
    DropeLensConfig,
    config_from_hf,
)
from drope_lens.loading.embedded import EMBEDDED_NAME, embedded_checkpoint, load_embedded
from drope_lens.loading.fast_attention import explicit_attention, install_fast_attention
from drope_lens.loading.hf import hooked_from_hf, load_hooked
from drope_lens.loading.layout import linear_layout
from drope_lens.loading.nope import to_nope
from drope_lens.loading.numerics import check_logits_finite, install_attention_numerics
from drope_lens.loading.pair import ModelPair, check_same_tokenizer, load_pair
from drope_lens.loading.tokens import TokenBatch, as_batch, encode

__all__ = [
    "DROPE_CHECKPOINT",
    "ZERO_SHOT_NOPE",
    "DropeLensConfig",
    "config_from_hf",
    "EMBEDDED_NAME",
    "embedded_checkpoint",
    "load_embedded",
    "hooked_from_hf",
    "load_hooked",
    "to_nope",
    "linear_layout",
    "check_logits_finite",
    "install_attention_numerics",
    "ModelPair",
    "check_same_tokenizer",
    "load_pair",
    "TokenBatch",
    "as_batch",
    "encode",
    "explicit_attention",
    "install_fast_attention",
]
