"""BOS-MLP ablation: zero (or mean-replace) one layer's MLP output at absolute position 0 only.

The study's hook (``out[:, 0] = 0`` on ``layers[spike].mlp``) hit index 0 of *every* forward call, so
during KV-cache generation it also ablated each newly generated token (bug B3). Here a
:class:`~drope_lens.hooks.positions.PositionTracker` tells the hook whether index 0 of the current
pass is absolute position 0; on decode steps nothing is touched. ``study_compatible=True`` restores
the study's behaviour for comparison.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float

from drope_lens.errors import DropeLensInputError
from drope_lens.hooks.mask import current_real_mask, real_token_mask
from drope_lens.hooks.positions import PositionTracker
from drope_lens.hooks.types import FwdHooks
from drope_lens.loading.backend import Model
from drope_lens.options import BOS_MODES, DEFAULT_BATCH_SIZE, BosAblationOptions, takes_options  # noqa: E402,F401  (BOS_MODES re-exported)
from drope_lens.validation import check_layer  # noqa: E402,F401  (re-exported)


@takes_options(BosAblationOptions)
def bos_mlp_ablation_hooks(
    layer: Optional[int] = BosAblationOptions.default("layer"),
    *,
    mode: str = BosAblationOptions.default("mode"),
    mean_vector: Optional[Float[torch.Tensor, " d_model"]] = None,
    study_compatible: bool = BosAblationOptions.default("study_compatible"),
    model: Optional[Model] = None,
) -> FwdHooks:
    """Hooks ablating ``blocks.{layer}.hook_mlp_out`` at absolute position 0.

    Args:
        layer: the MLP's layer (required, here or as ``options.layer``).
        options: (keyword) a :class:`~drope_lens.options.BosAblationOptions` filling ``layer``,
            ``mode`` and ``study_compatible`` where the call leaves them out.
        mode: ``"zero"`` sets the BOS MLP output to 0; ``"mean"`` replaces it by ``mean_vector``
            (e.g. from :func:`mlp_out_mean`) or, without one, by the mean MLP output over the real
            positions 1… of the same row (the batch's declared real-token mask; a multi-row pass
            without one is refused, see :func:`~drope_lens.hooks.mask.current_real_mask`).
        study_compatible: ablate index 0 of every forward call, decode steps included (bug B3).
        model: if given, ``layer`` is range-checked against it.
    """
    if layer is None:
        raise DropeLensInputError(
            "bos_mlp_ablation_hooks needs a layer (the spike layer): pass layer or "
            "options=BosAblationOptions(layer=...)."
        )
    check_layer(model, layer)
    BosAblationOptions(layer=layer, mode=mode, study_compatible=study_compatible)  # type: ignore[arg-type]  # checks
    if mean_vector is not None and mode != "mean":
        raise DropeLensInputError("mean_vector is only used with mode='mean'.")
    tracker = PositionTracker()

    def ablate(out: torch.Tensor, hook) -> Optional[torch.Tensor]:
        if not study_compatible and tracker.offset != 0:
            return None  # decode step: index 0 is a generated token, not BOS
        out = out.clone()
        if mode == "zero":
            out[:, 0] = 0
        elif mean_vector is not None:
            out[:, 0] = mean_vector.to(device=out.device, dtype=out.dtype)
        else:
            if out.shape[1] < 2:
                raise DropeLensInputError("mode='mean' without mean_vector needs more than one position per pass.")
            real = current_real_mask(out)[:, 1:, None].float()  # the batch's mask; refuses if unknown
            mean = (out[:, 1:].float() * real).sum(1) / real.sum(1).clamp_min(1.0)
            out[:, 0] = mean.to(out.dtype)
        return out

    hooks: FwdHooks = [] if study_compatible else tracker.hooks()
    return hooks + [(f"blocks.{layer}.hook_mlp_out", ablate)]


@torch.no_grad()
def mlp_out_mean(
    model: Model,
    inputs,
    layer: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
) -> Float[torch.Tensor, " d_model"]:
    """Mean of ``blocks.{layer}.hook_mlp_out`` over the real non-BOS tokens of ``inputs`` (float32)."""
    from drope_lens.loading.tokens import as_batch

    check_layer(model, layer)
    batch = as_batch(model, inputs, max_length=max_length)
    total = torch.zeros(model.cfg.d_model, dtype=torch.float64)
    count = 0
    store: dict[str, torch.Tensor] = {}

    def grab(out: torch.Tensor, hook) -> None:
        store["out"] = out.detach()

    name = f"blocks.{layer}.hook_mlp_out"
    for _, sub in batch.batches(batch_size):
        sub = sub.to(model.cfg.device)
        with real_token_mask(sub.mask):  # other active hooks see this batch's padding too
            model.run_with_hooks(sub.tokens, return_type=None, stop_at_layer=layer + 1, fwd_hooks=[(name, grab)])
        keep = sub.mask.clone()
        keep[:, 0] = False
        total += store["out"][keep].double().sum(0).cpu()
        count += int(keep.sum())
    if count == 0:
        raise DropeLensInputError("No non-BOS tokens to average over.")
    return (total / count).float()
