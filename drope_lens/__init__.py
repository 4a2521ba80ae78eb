"""drope_lens: a TransformerLens plugin comparing RoPE language models with their DroPE/NoPE twins."""

from drope_lens.errors import (
    DropeLensError,
    InputTooLongError,
    NonFiniteError,
    TokenizerMismatchError,
    UnsupportedModelError,
)
from drope_lens.loading import (
    DropeLensConfig,
    ModelPair,
    TokenBatch,
    encode,
    explicit_attention,
    load_embedded,
    load_hooked,
    load_pair,
    to_nope,
)

__version__ = "0.1.0"

__all__ = [
    "DropeLensError", "InputTooLongError", "NonFiniteError", "TokenizerMismatchError",
    "UnsupportedModelError", "DropeLensConfig", "ModelPair", "TokenBatch", "encode",
    "load_embedded", "load_hooked", "load_pair", "to_nope",
    "explicit_attention",
]
