"""Zero chosen Q/K/V channels as TransformerLens hooks.

:func:`zero_channel_hooks` / :func:`zero_channels_hook` set the chosen channels to 0 at **every**
position of every forward pass, KV-cache decode steps included (the study's ``q_proj`` hooks do the
same). Pre-RoPE the cache holds zeroed keys; post-RoPE ``hook_rot_k`` sees the whole (cached + new)
key sequence on decode steps and zeroes all of it. Cached generation therefore equals the no-cache
computation. The hooks return new tensors (never edit the activation in place), so they compose
with other users' hooks.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Bool, Float

from drope_lens.hooks.points import ROTARY_MODES, hook_name
from drope_lens.hooks.selection import ChannelSelection
from drope_lens.hooks.types import FwdHooks, HookFn
from drope_lens.validation import check_choice


def zero_channels_hook(mask: Bool[torch.Tensor, "head d_head"]) -> HookFn:
    """Hook setting ``mask``'s channels to 0 at every position (other channels bit-identical)."""
    mask = mask.bool()
    on_device: dict = {}

    def hook(x: Float[torch.Tensor, "batch pos head d_head"], hook=None):
        if tuple(x.shape[2:]) != tuple(mask.shape):
            raise ValueError(
                f"Channel mask {tuple(mask.shape)} does not fit activation heads x d_head "
                f"{tuple(x.shape[2:])} at {getattr(hook, 'name', '?')} (K/V use the KV-head count)."
            )
        if x.device not in on_device:
            on_device[x.device] = mask.to(x.device)
        return x.masked_fill(on_device[x.device], 0.0)

    return hook


def zero_channel_hooks(selection, *, rotary: Optional[str] = None) -> FwdHooks:
    """Zero every channel of a :class:`ChannelSelection` (or ``{tensor: [layer, head, d] mask}``).

    ``rotary`` overrides the selection's own pre/post choice. Layers without selected channels get
    no hook. Applies on KV-cache decode steps too (see module docstring).
    """
    if not isinstance(selection, ChannelSelection):
        selection = ChannelSelection(dict(selection))
    rotary = rotary or selection.rotary
    check_choice("rotary", rotary, ROTARY_MODES)
    hooks: FwdHooks = []
    for t, masks in selection.masks.items():
        for layer in range(masks.shape[0]):
            if bool(masks[layer].any()):
                hooks.append((hook_name(layer, t, rotary), zero_channels_hook(masks[layer])))
    return hooks
