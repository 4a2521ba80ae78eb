"""A RoPE model and its DroPE/NoPE twin, sharing one tokenizer and identical token ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from transformer_lens import HookedTransformer

from drope_lens.errors import TokenizerMismatchError
from drope_lens.loading.tokens import TokenBatch, encode

PROBE_TEXT = (
    "The 3 quick brown foxes — naïve, café-loving — jumped over 42 lazy dogs in Zürich!\n"
    "def f(x): return x**2  # code, émojis 🙂 and 漢字 too."
)


def check_same_tokenizer(tok_a: Any, tok_b: Any, probe: str = PROBE_TEXT) -> None:
    """Raise :class:`TokenizerMismatchError` unless both tokenizers give the same ids and BOS."""
    ids_a = list(tok_a(probe, add_special_tokens=False)["input_ids"])
    ids_b = list(tok_b(probe, add_special_tokens=False)["input_ids"])
    if ids_a != ids_b or getattr(tok_a, "bos_token_id", None) != getattr(tok_b, "bos_token_id", None):
        first = next((i for i, (a, b) in enumerate(zip(ids_a, ids_b)) if a != b), min(len(ids_a), len(ids_b)))
        raise TokenizerMismatchError(
            "The two models tokenize differently (first difference at token "
            f"{first}; BOS {getattr(tok_a, 'bos_token_id', None)} vs "
            f"{getattr(tok_b, 'bos_token_id', None)}). A RoPE/DroPE pair must share a tokenizer: "
            "pair a model with its own DroPE variant (e.g. meta-llama/Llama-2-7b-hf with "
            "SakanaAI/Llama-2-7b-hf-DroPE), or pass the same tokenizer to both loaders."
        )


@dataclass
class ModelPair:
    """Two HookedTransformers to compare; ``rope`` has RoPE, ``drope`` does not."""

    rope: HookedTransformer
    drope: HookedTransformer
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_same_tokenizer(self.rope.tokenizer, self.drope.tokenizer)
        if self.rope.cfg.d_vocab != self.drope.cfg.d_vocab:
            raise TokenizerMismatchError(
                f"Vocabulary sizes differ ({self.rope.cfg.d_vocab} vs {self.drope.cfg.d_vocab})."
            )
        self.labels.setdefault("rope", _label(self.rope))
        self.labels.setdefault("drope", _label(self.drope))

    @property
    def tokenizer(self):
        return self.rope.tokenizer

    @property
    def n_ctx(self) -> int:
        return min(self.rope.cfg.n_ctx, self.drope.cfg.n_ctx)

    def items(self):
        """``[("rope", model), ("drope", model)]``."""
        return [("rope", self.rope), ("drope", self.drope)]

    def encode(self, texts: Union[str, Sequence[str]], **kwargs) -> TokenBatch:
        """Identical token ids for both models (BOS prepended; see :mod:`drope_lens.loading.tokens`)."""
        kwargs.setdefault("n_ctx", self.n_ctx)
        return encode(self.tokenizer, texts, **kwargs)


def _label(model: HookedTransformer) -> str:
    describe = getattr(model.cfg, "describe", None)
    return describe() if callable(describe) else model.cfg.model_name


def load_pair(
    rope: Optional[str] = None,
    drope: Optional[str] = None,
    *,
    dtype: Union[str, torch.dtype] = torch.float32,
    device: Union[str, torch.device] = "cpu",
    process_weights: bool = False,
) -> ModelPair:
    """Load a RoPE/DroPE pair. With no arguments: the embedded SmolLM2-135M and its zero-shot NoPE twin.

    ``drope`` may be a DroPE checkpoint (hub id or folder) or omitted, in which case the twin is
    ``rope`` with RoPE dropped and no recalibration (labelled so everywhere).
    """
    from drope_lens.loading.embedded import load_embedded
    from drope_lens.loading.hf import load_hooked
    from drope_lens.loading.nope import to_nope

    if rope is None:
        rope_model = load_embedded(dtype=dtype, device=device, process_weights=process_weights)
    else:
        rope_model = load_hooked(rope, dtype=dtype, device=device, process_weights=process_weights)
    if getattr(rope_model.cfg, "is_nope", False):
        raise ValueError(f"{rope} has no RoPE; pass it as --drope and a RoPE model as --rope.")
    if drope is None:
        drope_model = to_nope(rope_model)
    else:
        drope_model = load_hooked(drope, dtype=dtype, device=device, process_weights=process_weights)
        if not getattr(drope_model.cfg, "is_nope", False):
            raise ValueError(
                f"{drope} still uses RoPE. Pass a DroPE checkpoint (model_type llama_drope), "
                "or leave --drope out to compare with the zero-shot NoPE twin."
            )
    return ModelPair(rope_model, drope_model)
