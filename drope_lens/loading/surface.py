"""The backend-neutral model surface: what analyses, hooks, tasks, views and the report may use beyond
hook names, ``cfg`` fields, ``run_with_hooks`` / ``hooks()`` and drope_lens's tokenization.

Everything here works the same on a HookedTransformer and on a TransformerBridge; whatever differs
between them is decided here (or in the backend packages), never in an analysis.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Any, Iterator, Optional, Union

import torch

from drope_lens.loading.backend import is_bridge


def observed(hp: Any) -> bool:
    """Whether anything observes or replaces this hook point: TransformerLens handles, raw torch hooks, or a
    module spliced in its place (anything but a plain :class:`~transformer_lens.hook_points.HookPoint`,
    e.g. the SAE wrapper SAELens's ``HookedSAETransformer.add_sae`` puts there)."""
    from transformer_lens.hook_points import HookPoint

    if not isinstance(hp, HookPoint):
        return True
    return bool(
        hp.fwd_hooks
        or hp.bwd_hooks
        or hp._forward_hooks
        or hp._forward_pre_hooks
        or hp._backward_hooks
        or getattr(hp, "_backward_pre_hooks", None)
    )


def attention_scale(model: Any, layer: int) -> float:
    """The divisor of ``q·k`` in ``layer``'s attention (``sqrt(d_head)``, or ``1/softmax_scale`` for DroPE)."""
    attn = model.blocks[layer].attn
    if is_bridge(model):
        return 1.0 / float(attn.original_component.scaling)
    return float(attn.attn_scale)


def final_norm_gain(model: Any) -> Optional[torch.Tensor]:
    """The final RMSNorm's gain; None where TransformerLens folded it away (``process_weights=True``)."""
    if is_bridge(model):
        return model.ln_final.original_component.weight
    return getattr(model.ln_final, "w", None)


def rotary_frequencies(model: Any) -> Optional[torch.Tensor]:
    """Angular frequency (radians/token) of every head dim (float64, 0 for unrotated dims); None for NoPE."""
    cfg = model.cfg
    if getattr(cfg, "is_nope", False):
        return None
    freqs = torch.zeros(cfg.d_head, dtype=torch.float64)
    if is_bridge(model):
        inv = model.original_model.model.rotary_emb.inv_freq.double().cpu()
        rot = min(2 * inv.numel(), cfg.d_head)
        freqs[:rot] = torch.cat([inv, inv])[:rot]
        return freqs
    rot = int(cfg.rotary_dim or 0)
    if cfg.positional_embedding_type != "rotary" or rot == 0:
        return None
    attn = model.blocks[0].attn
    freqs[:rot] = torch.atan2(attn.rotary_sin[1, :rot].double(), attn.rotary_cos[1, :rot].double()).cpu()
    return freqs


def devices_of(model: Any) -> set[torch.device]:
    """Every device holding one of ``model``'s parameters."""
    return {p.device for p in model.parameters()}


def place(model: Any, device: Union[str, torch.device]) -> Any:
    """Move ``model`` to ``device`` (its layout and, on the hooked backend, its block split kept).

    A bridge loaded with a device map leaves it for ``device`` and returns to it when ``device`` is
    ``"device_map"`` (:data:`drope_lens.loading.bridge.devices.ON_ITS_MAP`), as a pair's offload does.
    """
    if is_bridge(model):
        from drope_lens.loading.bridge.devices import place_bridge

        return place_bridge(model, device)
    from drope_lens.loading.hooked.devices import place as place_hooked

    return place_hooked(model, device)


@contextlib.contextmanager
def explicit_attention(*models: Any) -> Iterator[None]:
    """Use the explicit attention (scores, softmax, pattern) inside the block, on either backend.

    Accepts models or a :class:`~drope_lens.loading.pair.ModelPair`. The previous setting of
    ``cfg.fast_attention`` is restored on exit, also after an exception::

        with dl.explicit_attention(model):
            logits = model(tokens)   # every layer materialises its pattern
    """
    flat: list[Any] = []
    for m in models:
        flat.extend([m.rope, m.drope] if hasattr(m, "rope") and hasattr(m, "drope") else [m])
    saved = [(m.cfg, getattr(m.cfg, "fast_attention", True)) for m in flat]
    try:
        for cfg, _ in saved:
            cfg.fast_attention = False
        yield
    finally:
        for cfg, value in saved:
            cfg.fast_attention = value


def attention_path(model: Any) -> str:
    """``"fast (sdpa when no pattern/scores hook)"`` or ``"explicit"`` — for labels and reports."""
    if is_bridge(model):
        from drope_lens.loading.bridge.attention import DropeLensAttention

        installed = all(isinstance(b.attn, DropeLensAttention) for b in model.blocks)
    else:
        from drope_lens.loading.hooked.fast_attention import fast_path_installed

        installed = fast_path_installed(model)
    if installed and getattr(model.cfg, "fast_attention", True):
        return "fast (sdpa when no pattern/scores hook)"
    return "explicit"


class KVCache:
    """A key/value cache for one batch, on either backend.

    :meth:`kwargs` gives the keyword arguments of a forward pass that feeds ``new`` tokens through
    the cache (``mask``: which of them are real, default all). Pads stay masked for every later
    step, and rotary positions count real tokens only, so each row decodes as it would alone.
    :meth:`copy` branches the cache (the model itself is shared, never copied).
    """

    def __init__(self, model: Any, batch_size: int):
        self.model = model
        self.mask: Optional[torch.Tensor] = None
        if is_bridge(model):
            from transformers import DynamicCache

            self.inner: Any = DynamicCache()
            # transformers >= 5.2x names the argument ``cache`` (``past_key_values`` is deprecated there)
            forward = inspect.signature(type(model.original_model).forward).parameters
            self.key = "cache" if "cache" in forward else "past_key_values"
        else:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            self.inner = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size)

    def kwargs(self, n_new: int, batch_size: int, mask: Optional[torch.Tensor] = None) -> dict:
        device = self.model.cfg.device
        new = torch.ones((batch_size, n_new), dtype=torch.long, device=device) if mask is None else mask.long()
        if not is_bridge(self.model):
            return {"past_kv_cache": self.inner, "attention_mask": new.to(device)}
        self.mask = new.to(device) if self.mask is None else torch.cat([self.mask, new.to(self.mask.device)], 1)
        return {self.key: self.inner, "attention_mask": self.mask}

    def copy(self) -> "KVCache":
        twin = copy.copy(self)
        twin.inner = copy.deepcopy(self.inner)
        twin.mask = None if self.mask is None else self.mask.clone()
        return twin
