"""Attention patterns of one layer, and circuitsvis views of them (one model or a pair side by side).

Patterns come from a single hook on ``blocks.{layer}.attn.hook_pattern`` (no full cache; the forward
pass stops after that layer) and are the models' real float32 attention weights. Texts are tokenized
with drope_lens's BOS policy (BOS at position 0), so both models of a pair see identical ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from jaxtyping import Float, Int

from drope_lens.errors import NonFiniteError
from drope_lens.loading.tokens import TokenBatch, encode
from drope_lens.views.html import ViewGroup

__all__ = ["attention_patterns", "attention_heads_view", "pair_attention_view", "display_tokens"]

Heads = Optional[Union[int, Sequence[int]]]
TextOrTokens = Union[str, TokenBatch, torch.Tensor, Sequence[int]]


def _check_layer(model: Any, layer: int) -> int:
    n_layers = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise ValueError(f"layer must be an int, got {layer!r}.")
    if not 0 <= int(layer) < n_layers:
        raise ValueError(f"layer={layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1}).")
    return int(layer)


def _head_indices(heads: Heads, n_heads: int) -> list[int]:
    if heads is None:
        return list(range(n_heads))
    idx = [heads] if isinstance(heads, (int, np.integer)) else list(heads)
    if not idx:
        raise ValueError("heads is empty; pass None for all heads.")
    for h in idx:
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)):
            raise ValueError(f"Head indices must be ints, got {h!r}.")
        if not 0 <= int(h) < n_heads:
            raise ValueError(f"Head {h} is out of range: the layer has {n_heads} heads (0..{n_heads - 1}).")
    return [int(h) for h in idx]


def _single_tokens(model: Any, text_or_tokens: TextOrTokens) -> Int[torch.Tensor, " pos"]:
    """One sequence of ids (BOS first for texts), without padding."""
    x = text_or_tokens
    if isinstance(x, str):
        if not x.strip():
            raise ValueError("The text is empty.")
        if model.tokenizer is None:
            raise ValueError("This model has no tokenizer; pass token ids instead of a text.")
        batch = encode(model.tokenizer, x, n_ctx=model.cfg.n_ctx)
        return batch.tokens[0, : int(batch.lengths[0])]
    if isinstance(x, TokenBatch):
        if len(x) != 1:
            raise ValueError(f"Pass one text at a time; the TokenBatch holds {len(x)}. Use batch.select([i]).")
        return x.tokens[0, : int(x.lengths[0])]
    if isinstance(x, torch.Tensor):
        if x.ndim == 2 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 1:
            raise ValueError(f"Pass one sequence of token ids ([pos] or [1, pos]), got shape {tuple(x.shape)}.")
        ids = x.long()
    elif isinstance(x, Sequence) and all(isinstance(t, (int, np.integer)) for t in x):
        ids = torch.tensor(list(x), dtype=torch.long)
    else:
        raise ValueError(
            f"Expected a text, a one-row TokenBatch or a 1-D tensor of ids, got {type(x).__name__}. "
            "Views show one text at a time."
        )
    if ids.numel() == 0:
        raise ValueError("No tokens given.")
    if ids.numel() > model.cfg.n_ctx:
        raise ValueError(f"{ids.numel()} tokens exceed the model's n_ctx={model.cfg.n_ctx}.")
    return ids


def _str_tokens(model: Any, ids: torch.Tensor) -> list[str]:
    if model.tokenizer is None:
        return [str(int(t)) for t in ids]
    return list(model.tokenizer.batch_decode(ids[:, None].tolist(), clean_up_tokenization_spaces=False))


def display_tokens(str_tokens: Sequence[str]) -> list[str]:
    """Tokens made visible for views: newlines/tabs shown as ``\\n``/``\\t``, empty ones as ``∅``."""
    out = []
    for t in str_tokens:
        t = t.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
        out.append(t if t else "∅")
    return out


@torch.no_grad()
def attention_patterns(
    model: Any,
    text_or_tokens: TextOrTokens,
    *,
    layer: int,
    heads: Heads = None,
) -> tuple[Float[torch.Tensor, "heads query key"], list[str]]:
    """Attention pattern of ``layer`` for one text: ``(pattern[heads, q, k] float32 on CPU, str_tokens)``.

    Args:
        model: a HookedTransformer (RoPE or NoPE/DroPE).
        text_or_tokens: a text (tokenized with BOS first), a one-row :class:`TokenBatch`, or ids.
        layer: layer index.
        heads: a head index, a list of them, or None for all heads (in that order).

    Rows of the pattern sum to 1 (causal: ``pattern[h, q, k] = 0`` for ``k > q``).
    """
    layer = _check_layer(model, layer)
    head_idx = _head_indices(heads, model.cfg.n_heads)
    ids = _single_tokens(model, text_or_tokens)
    captured: dict[str, torch.Tensor] = {}

    def grab(pattern: torch.Tensor, hook: Any) -> None:
        captured["pattern"] = pattern[0, head_idx].detach().to(torch.float32).cpu().clone()

    name = f"blocks.{layer}.attn.hook_pattern"
    device = getattr(model.cfg, "device", None) or "cpu"
    with model.hooks(fwd_hooks=[(name, grab)]):  # removed on exit, also on exceptions
        model(ids[None].to(device), stop_at_layer=layer + 1)
    if "pattern" not in captured:
        raise RuntimeError(f"The hook {name} did not fire; is this a HookedTransformer?")
    pattern = captured["pattern"]
    if not torch.isfinite(pattern).all():
        raise NonFiniteError(
            f"Layer {layer} attention pattern contains NaN/inf. Run the model in float32 "
            "(drope_lens.load_hooked(..., dtype='float32'))."
        )
    return pattern, _str_tokens(model, ids.cpu())


def _rounded(pattern: torch.Tensor, decimals: int) -> np.ndarray:
    # float64 before rounding, so the JSON holds short numbers (0.1235, not 0.12349999696...).
    return np.round(pattern.numpy().astype(np.float64), decimals)


def attention_heads_view(
    model: Any,
    text_or_tokens: TextOrTokens,
    *,
    layer: int,
    heads: Heads = None,
    name_prefix: str = "",
    decimals: int = 4,
):
    """circuitsvis ``attention_heads`` view of one layer for one text (thumbnails + a large pattern).

    Returns the circuitsvis object: it displays in notebooks; for offline files use
    :func:`drope_lens.views.to_offline_html` / :func:`save_html` (never ``str(view)``, which needs a CDN).
    Head names read ``{name_prefix}L{layer}H{h}``.
    """
    import circuitsvis as cv

    head_idx = _head_indices(heads, model.cfg.n_heads)
    pattern, str_tokens = attention_patterns(model, text_or_tokens, layer=layer, heads=head_idx)
    return cv.attention.attention_heads(
        attention=_rounded(pattern, decimals),
        tokens=display_tokens(str_tokens),
        attention_head_names=[f"{name_prefix}L{layer}H{h}" for h in head_idx],
        max_value=1.0,
        min_value=0.0,
    )


def pair_attention_view(
    pair: Any,
    text_or_tokens: TextOrTokens,
    *,
    layer: int,
    heads: Heads = None,
    layout: str = "row",
    decimals: int = 4,
) -> ViewGroup:
    """Both models' attention heads at ``layer`` on the same token ids, side by side.

    Titles come from ``pair.labels``; head names are prefixed ``RoPE`` / ``NoPE`` (or ``DroPE``).
    Returns a :class:`ViewGroup` (displays offline in notebooks; ``.save(path)`` writes a page).
    """
    if isinstance(text_or_tokens, str):
        if not text_or_tokens.strip():
            raise ValueError("The text is empty.")
        batch = pair.encode(text_or_tokens)
        ids: TextOrTokens = batch.tokens[0, : int(batch.lengths[0])]
    else:
        ids = text_or_tokens
    views = []
    for key, model in pair.items():
        prefix = "RoPE " if key == "rope" else _nope_prefix(pair.labels.get(key, ""))
        view = attention_heads_view(model, ids, layer=layer, heads=heads, name_prefix=prefix, decimals=decimals)
        views.append((pair.labels.get(key, key), view))
    return ViewGroup(views, layout=layout, title=f"Attention at layer {layer}")


def _nope_prefix(label: str) -> str:
    return "DroPE " if "DroPE" in label else "NoPE "
