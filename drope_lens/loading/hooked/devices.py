"""Where a HookedTransformer's modules live: one device, or blocks split over ``cfg.n_devices``."""

from __future__ import annotations

from typing import Union

import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities.multi_gpu import get_device_for_block_index


def place(model: HookedTransformer, device: Union[str, torch.device, None] = None) -> HookedTransformer:
    """Move ``model`` onto ``device`` (default ``cfg.device``), blocks split over ``cfg.n_devices``.

    Embedding on the first block's device, final norm and unembedding on the last block's, like
    TransformerLens's own forward pass expects. Parameter layouts (strides) are kept. Sets
    ``cfg.device``. Returns ``model``.
    """
    cfg = model.cfg
    if device is not None:
        # TransformerLens annotates cfg.device as str but sets and accepts torch.device
        cfg.device = torch.device(device) if not isinstance(device, torch.device) else device  # type: ignore[assignment]
    first = get_device_for_block_index(0, cfg)
    last = get_device_for_block_index(cfg.n_layers - 1, cfg)
    for name, module in model.named_children():
        if name == "blocks":
            for i, block in enumerate(model.blocks):
                nn_to(block, get_device_for_block_index(i, cfg))
        elif name in ("ln_final", "unembed"):
            nn_to(module, last)
        else:
            nn_to(module, first)
    return model


def nn_to(module: torch.nn.Module, device: torch.device) -> None:
    """``nn.Module.to`` (not TransformerLens's override, which also rewrites ``cfg.device``)."""
    torch.nn.Module.to(module, device)
