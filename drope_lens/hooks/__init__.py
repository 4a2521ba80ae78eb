"""Hook functions and hook factories: ``fn(tensor, hook)`` usable in run_with_hooks / model.hooks()."""

from drope_lens.hooks.bos import bos_mlp_ablation_hooks, mlp_out_mean
from drope_lens.hooks.channels import (
    ChannelSelection,
    mean_replacement_hooks,
    qk_mean_replacement_hooks,
    random_control,
    real_token_mask,
    zero_channel_hooks,
    zero_channels_hook,
)
from drope_lens.hooks.positions import PositionTracker

__all__ = [
    "bos_mlp_ablation_hooks", "mlp_out_mean", "ChannelSelection", "mean_replacement_hooks",
    "qk_mean_replacement_hooks", "random_control", "real_token_mask", "zero_channel_hooks",
    "zero_channels_hook", "PositionTracker",
]
