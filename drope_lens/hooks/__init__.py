"""Hook functions and hook factories: ``fn(tensor, hook)`` usable in run_with_hooks / model.hooks()."""

from drope_lens.hooks.bos import bos_mlp_ablation_hooks, mlp_out_mean
from drope_lens.hooks.mask import real_token_mask
from drope_lens.hooks.mean_replacement import mean_replacement_hooks, qk_mean_replacement_hooks
from drope_lens.hooks.positions import PositionTracker, zero_bos_hooks
from drope_lens.hooks.selection import ChannelSelection, random_control
from drope_lens.hooks.zeroing import zero_channel_hooks, zero_channels_hook

__all__ = [
    "bos_mlp_ablation_hooks",
    "mlp_out_mean",
    "ChannelSelection",
    "mean_replacement_hooks",
    "qk_mean_replacement_hooks",
    "random_control",
    "real_token_mask",
    "zero_channel_hooks",
    "zero_channels_hook",
    "PositionTracker",
    "zero_bos_hooks",
]
