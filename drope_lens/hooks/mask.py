"""The real-token mask of the current forward pass, declared to hooks that compute token statistics.

Statistics inside hooks (token L2 norms, token means) use only real tokens. drope_lens analyses
declare the real-token mask of each right-padded batch with :func:`real_token_mask` (every
:func:`~drope_lens.loading.forward.forward_batch` does). Outside such a block a one-row pass counts
every position as real; a multi-row pass is refused, since a hook cannot tell right-padding from
real tokens.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

import torch
from jaxtyping import Bool

from drope_lens.errors import DropeLensInputError

_REAL_MASK: ContextVar[Optional[torch.Tensor]] = ContextVar("drope_lens_real_mask", default=None)


@contextmanager
def real_token_mask(mask: Optional[Bool[torch.Tensor, "batch pos"]]) -> Iterator[None]:
    """Declare which positions of the next forward passes are real tokens (True) vs padding."""
    token = _REAL_MASK.set(mask)
    try:
        yield
    finally:
        _REAL_MASK.reset(token)


def current_real_mask(x: torch.Tensor) -> Bool[torch.Tensor, "batch pos"]:
    """The declared real-token mask for activation ``x`` ``[batch, pos, ...]``.

    Without a declared mask: all True for one row; for several rows :class:`DropeLensInputError`
    (padding could be counted as real tokens)."""
    mask = _REAL_MASK.get()
    b, t = x.shape[0], x.shape[1]
    if mask is None:
        if b > 1:
            raise DropeLensInputError(
                f"A statistic over tokens (mean replacement) ran on {b} rows with no real-token mask "
                "declared, so padding would count as real tokens. Run it through a drope_lens analysis "
                "(they declare each batch's mask), or wrap the call in `with real_token_mask(batch.mask):` "
                "(all-True for unpadded rows), or run one row at a time."
            )
        return torch.ones(b, t, dtype=torch.bool, device=x.device)
    if tuple(mask.shape) != (b, t):
        raise ValueError(
            f"The declared real-token mask has shape {tuple(mask.shape)} but the activation has "
            f"[batch, pos] = {(b, t)}. Declare the mask of the batch you run (real_token_mask)."
        )
    return mask.to(device=x.device, dtype=torch.bool)
