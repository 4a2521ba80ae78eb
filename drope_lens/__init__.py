"""drope_lens: a TransformerLens plugin comparing RoPE language models with their DroPE/NoPE twins.

The names below are imported on first use (PEP 562), so ``import drope_lens`` and the CLI's
argument checks do not import torch; ``dl.load_pair`` etc. work as usual.
"""

from __future__ import annotations

from drope_lens._lazy import lazy_exports
from drope_lens.errors import (
    DropeLensError,
    InputTooLongError,
    NonFiniteError,
    TokenizerMismatchError,
    UnsupportedModelError,
)
from drope_lens.options import (
    BosAblationOptions,
    ContextOptions,
    DisruptionOptions,
    MassiveOptions,
    MeanReplacementOptions,
    PhaseOptions,
    ReportOptions,
    TaskOptions,
    TrackOptions,
)

__version__ = "0.1.0"

#: Public names imported from ``drope_lens.loading`` when first used.
_LAZY = (
    "DropeLensConfig",
    "ModelPair",
    "TokenBatch",
    "encode",
    "explicit_attention",
    "load_embedded",
    "load_hooked",
    "load_pair",
    "to_nope",
)

__all__ = [
    "DropeLensError",
    "InputTooLongError",
    "NonFiniteError",
    "TokenizerMismatchError",
    "UnsupportedModelError",
    "DropeLensConfig",
    "ModelPair",
    "TokenBatch",
    "encode",
    "load_embedded",
    "load_hooked",
    "load_pair",
    "to_nope",
    "explicit_attention",
    "MassiveOptions",
    "DisruptionOptions",
    "PhaseOptions",
    "TaskOptions",
    "ContextOptions",
    "MeanReplacementOptions",
    "BosAblationOptions",
    "TrackOptions",
    "ReportOptions",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), {name: "drope_lens.loading" for name in _LAZY})
