"""Absolute positions inside hook functions, also on KV-cache decode steps.

TransformerLens hook functions see only tensors. On a KV-cache decode step ``hook_mlp_out`` has one
position, and that position is a *new* token, not BOS. The study's hooks (``out[:, 0] = 0``) therefore
also hit every generated token. :class:`PositionTracker` records the cache offset of the current
forward pass from layer 0's ``hook_rot_q`` (new positions) and ``hook_rot_k`` (cached + new
positions), which fire before any MLP or later attention, so hooks can act on absolute positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from drope_lens.hooks.types import FwdHooks


class PositionTracker:
    """Tracks the absolute position of index 0 of the current forward pass.

    Add :meth:`hooks` to the same ``run_with_hooks`` / ``model.hooks`` call as the hooks that read
    :attr:`offset`. ``offset`` is 0 on a full (prefill) pass and the number of cached positions on a
    decode step.
    """

    def __init__(self) -> None:
        self.offset = 0
        self.n_new = 0

    def _on_q(self, q: torch.Tensor, hook) -> None:
        self.n_new = q.shape[1]

    def _on_k(self, k: torch.Tensor, hook) -> None:
        self.offset = k.shape[1] - self.n_new

    def hooks(self) -> FwdHooks:
        return [("blocks.0.attn.hook_rot_q", self._on_q), ("blocks.0.attn.hook_rot_k", self._on_k)]

    @property
    def is_decode_step(self) -> bool:
        return self.offset > 0

    def positions(self, n: int, device=None) -> torch.Tensor:
        """Absolute positions of the ``n`` positions in the current pass."""
        return torch.arange(self.offset, self.offset + n, device=device)


def zero_bos_hooks(names: Sequence[str]) -> FwdHooks:
    """Hooks setting absolute position 0 of each named activation to 0 on full passes; KV-cache decode
    steps are left alone (their index 0 is a generated token). Includes the :class:`PositionTracker`."""
    tracker = PositionTracker()

    def zero_bos(x: torch.Tensor, hook) -> Optional[torch.Tensor]:
        if tracker.offset != 0:
            return None
        x = x.clone()
        x[:, 0] = 0
        return x

    return tracker.hooks() + [(name, zero_bos) for name in names]
