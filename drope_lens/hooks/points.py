"""Where a channel lives: the Q/K/V tensors, their hook points (pre/post RoPE), head counts, layers.

A *channel* is one ``(head, dim)`` entry of ``hook_q``/``hook_k``/``hook_v`` (pre-RoPE, the study) or
of ``hook_rot_q``/``hook_rot_k`` (post-RoPE, Jin et al.). K and V channels are per KV head (GQA).
"""

from __future__ import annotations

from typing import Optional, Sequence

from drope_lens.options import ROTARY_MODES, TENSORS, check_tensors  # noqa: F401  (re-exported)
from drope_lens.validation import check_choice


def hook_name(layer: int, tensor: str, rotary: str = "pre") -> str:
    """Hook point of ``tensor`` at ``layer``. V has no rotation: ``"post"`` uses ``hook_v``."""
    check_choice("tensor", tensor, TENSORS)
    check_choice("rotary", rotary, ROTARY_MODES)
    if rotary == "post" and tensor in ("q", "k"):
        return f"blocks.{layer}.attn.hook_rot_{tensor}"
    return f"blocks.{layer}.attn.hook_{tensor}"


def n_heads_of(model, tensor: str) -> int:
    """Query heads for Q, KV heads for K and V (GQA-aware)."""
    cfg = model.cfg
    return cfg.n_heads if tensor == "q" else int(cfg.n_key_value_heads or cfg.n_heads)


def check_layers(model, layers: Optional[Sequence[int]]) -> list[int]:
    n = model.cfg.n_layers
    if layers is None:
        return list(range(n))
    out = sorted({int(layer) for layer in layers})
    bad = [layer for layer in out if not 0 <= layer < n]
    if bad or not out:
        raise ValueError(f"layers must be a non-empty subset of 0..{n - 1}, got {list(layers)}")
    return out
