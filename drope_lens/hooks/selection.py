"""A set of Q/K/V channels per layer (:class:`ChannelSelection`) and its seeded random control.

:func:`random_control` draws the same number of channels per layer and tensor with a seeded
``torch.Generator`` from the channels **not** in the selection (the study drew from all 4096, so
its control could overlap; ``exclude_selected=False`` reproduces that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from jaxtyping import Bool

from drope_lens.hooks.points import ROTARY_MODES, check_tensors
from drope_lens.validation import check_choice


@dataclass
class ChannelSelection:
    """A set of channels per tensor: ``masks[t]`` is ``[n_layers, heads_t, d_head]`` bool."""

    masks: dict[str, Bool[torch.Tensor, "layer head d_head"]]
    rotary: str = "pre"
    label: str = "massive"
    seed: Optional[int] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("rotary", self.rotary, ROTARY_MODES)
        check_tensors(tuple(self.masks))
        self.masks = {t: m.bool().cpu() for t, m in self.masks.items()}

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(self.masks)

    def counts(self) -> dict[str, list[int]]:
        """Number of selected channels per layer, per tensor."""
        return {t: m.flatten(1).sum(1).tolist() for t, m in self.masks.items()}

    def total(self, tensor: Optional[str] = None) -> int:
        if tensor is not None:
            return int(self.masks[tensor].sum())
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def layers(self) -> list[int]:
        """Layers with at least one selected channel in any tensor."""
        any_sel = torch.stack([m.flatten(1).any(1) for m in self.masks.values()]).any(0)
        return any_sel.nonzero().flatten().tolist()

    def overlap(self, other: "ChannelSelection") -> int:
        """Channels selected in both (same tensor, layer, head, dim)."""
        return sum(int((m & other.masks[t]).sum()) for t, m in self.masks.items() if t in other.masks)

    def channels(self, tensor: str) -> list[tuple[int, int, int]]:
        """``(layer, head, dim)`` of every selected channel of ``tensor``."""
        return [tuple(x) for x in self.masks[tensor].nonzero().tolist()]

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "rotary": self.rotary,
            "seed": self.seed,
            "counts_per_layer": self.counts(),
            "totals": {t: self.total(t) for t in self.tensors},
            "total": self.total(),
            "channels": {t: [list(c) for c in self.channels(t)] for t in self.tensors},
            "shapes": {t: list(m.shape) for t, m in self.masks.items()},
            **self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ChannelSelection":
        """Rebuild a selection saved with :meth:`to_dict`."""
        masks = {}
        for t, shape in d["shapes"].items():
            m = torch.zeros(shape, dtype=torch.bool)
            for layer, head, dim in d["channels"][t]:
                m[layer, head, dim] = True
            masks[t] = m
        known = {"label", "rotary", "seed", "counts_per_layer", "totals", "total", "channels", "shapes"}
        return cls(
            masks,
            rotary=d.get("rotary", "pre"),
            label=d.get("label", "massive"),
            seed=d.get("seed"),
            meta={k: v for k, v in d.items() if k not in known},
        )

    def to_dataframe(self):
        import pandas as pd

        rows = [dict(tensor=t, layer=li, head=h, dim=d) for t in self.tensors for li, h, d in self.channels(t)]
        return pd.DataFrame(rows, columns=["tensor", "layer", "head", "dim"])


def random_control(selection: ChannelSelection, *, seed: int, exclude_selected: bool = True) -> ChannelSelection:
    """Random channels with the same count per layer and tensor as ``selection``.

    Layers ascending, tensors in ``selection`` order, one ``torch.randperm`` per (layer, tensor) from
    ``torch.Generator().manual_seed(seed)`` (never the global RNG), so a seed always gives the same
    channels. With ``exclude_selected`` (default) the draw is among the non-selected channels only.
    """
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {t: torch.zeros_like(m) for t, m in selection.masks.items()}
    n_layers = next(iter(selection.masks.values())).shape[0]
    for layer in range(n_layers):
        for t, mask in selection.masks.items():
            flat = mask[layer].flatten()
            n = int(flat.sum())
            if n == 0:
                continue
            pool = (~flat).nonzero().flatten() if exclude_selected else torch.arange(flat.numel())
            if n > pool.numel():
                raise ValueError(
                    f"Layer {layer} {t.upper()}: {n} channels are selected but only {pool.numel()} "
                    "others exist; a disjoint random control is impossible. Raise the threshold or "
                    "pass exclude_selected=False."
                )
            picked = pool[torch.randperm(pool.numel(), generator=gen)[:n]]
            new = torch.zeros(flat.numel(), dtype=torch.bool)
            new[picked] = True
            out[t][layer] = new.view_as(mask[layer])
    return ChannelSelection(out, rotary=selection.rotary, label="random", seed=int(seed))
