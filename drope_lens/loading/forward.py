"""Inputs to a right-padded batch, one forward pass with its real-token mask declared, hooked passes over
chunks of a batch, a model's label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch

from drope_lens.hooks.mask import real_token_mask
from drope_lens.hooks.types import FwdHook
from drope_lens.loading.tokens import TokenBatch, as_batch


def model_label(model) -> str:
    """What a model is, for results and progress bars (``cfg.describe()`` where the config has one)."""
    describe = getattr(model.cfg, "describe", None)
    return describe() if callable(describe) else str(model.cfg.model_name)


def to_batch(model, inputs, *, max_length: Optional[int] = None) -> TokenBatch:
    """Texts, a TokenBatch or an id tensor -> a right-padded :class:`TokenBatch`."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, TokenBatch):
        batch = inputs
        if max_length is not None and batch.tokens.shape[1] > max_length:
            batch = TokenBatch(batch.tokens[:, :max_length], batch.lengths.clamp(max=max_length))
        return batch
    if isinstance(inputs, torch.Tensor):
        return as_batch(model, inputs[..., :max_length] if max_length else inputs)
    return as_batch(model, list(inputs), max_length=max_length)


def forward_batch(model, batch: TokenBatch, *, return_type: Optional[str] = "logits"):
    """One forward pass on a right-padded batch, with its real-token mask declared to hooks.

    An attention mask is passed only when the tokenizer pads on the left (TransformerLens would
    otherwise infer one from pad ids); for right padding causal attention already hides the pads.
    """
    device = model.cfg.device
    tokens = batch.tokens.to(device)
    mask = batch.mask.to(device)
    kwargs = {}
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "padding_side", "right") == "left":
        kwargs["attention_mask"] = mask.long()
    with real_token_mask(mask):
        return model(tokens, return_type=return_type, **kwargs)


def hooked_passes(
    model,
    batch: TokenBatch,
    fwd_hooks: Sequence[FwdHook],
    state: dict[str, Any],
    *,
    batch_size: int,
    desc: str = "",
    progress: bool = False,
) -> None:
    """Forward passes (no output) over ``batch`` in chunks of ``batch_size``, each under ``fwd_hooks``
    (removed after every pass, also on errors), for hooks that stream their statistics. Before each
    pass ``state["idx"]`` holds the chunk's row indices in ``batch`` and ``state["batch"]`` the chunk."""
    parts = list(batch.batches(batch_size))
    if progress:
        from tqdm.auto import tqdm

        parts = tqdm(parts, desc=desc, leave=False)
    for idx, sub in parts:
        state["idx"], state["batch"] = idx, sub
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            forward_batch(model, sub, return_type=None)
