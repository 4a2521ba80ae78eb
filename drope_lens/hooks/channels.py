"""Channel interventions on Q/K/V as TransformerLens hook factories.

A *channel* is one ``(head, dim)`` entry of ``hook_q``/``hook_k``/``hook_v`` (pre-RoPE, the study) or
of ``hook_rot_q``/``hook_rot_k`` (post-RoPE, Jin et al.). K and V channels are per KV head (GQA).
Every factory returns a plain ``[(hook_name, fn), ...]`` list usable with ``run_with_hooks``,
``with model.hooks(fwd_hooks=...)`` and ``model.generate`` under ``model.hooks``; the functions
return new tensors (never edit the activation in place), so they compose with other users' hooks.

Interventions
-------------
* :func:`zero_channel_hooks` / :func:`zero_channels_hook`: set the chosen channels to 0 at **every**
  position of every forward pass, KV-cache decode steps included (the study's ``q_proj`` hooks do
  the same). Pre-RoPE the cache holds zeroed keys; post-RoPE ``hook_rot_k`` sees the whole
  (cached + new) key sequence on decode steps and zeroes all of it. Cached generation therefore
  equals the no-cache computation.
* :func:`random_control`: the same number of channels per layer and tensor, drawn with a seeded
  ``torch.Generator`` from the channels **not** in the massive set (the study drew from all 4096, so
  its control could overlap; ``exclude_selected=False`` reproduces that).
* :func:`qk_mean_replacement_hooks`: Jin-style mean replacement (see its docstring for the decode
  policy).

Padding
-------
Statistics inside hooks (token L2 norms, token means) use only real tokens. drope_lens analyses
declare the real-token mask of each right-padded batch with :func:`real_token_mask` (every
``forward_batch`` does). Outside such a block a one-row pass counts every position as real; a
multi-row pass is refused, since the hook cannot tell right-padding from real tokens.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch
from jaxtyping import Bool, Float

from drope_lens.errors import DropeLensInputError
from drope_lens.hooks.positions import PositionTracker
from drope_lens.hooks.types import FwdHooks, HookFn

TENSORS = ("q", "k", "v")
ROTARY_MODES = ("pre", "post")
DECODE_MODES = ("skip", "raise")

_REAL_MASK: ContextVar[Optional[torch.Tensor]] = ContextVar("drope_lens_real_mask", default=None)


# --------------------------------------------------------------------------------------- helpers
@contextmanager
def real_token_mask(mask: Optional[Bool[torch.Tensor, "batch pos"]]) -> Iterator[None]:
    """Declare which positions of the next forward passes are real tokens (True) vs padding."""
    token = _REAL_MASK.set(mask)
    try:
        yield
    finally:
        _REAL_MASK.reset(token)


def current_real_mask(x: torch.Tensor) -> Bool[torch.Tensor, "batch pos"]:
    """The declared real-token mask for activation ``x`` ``[batch, pos, ...]``.

    Without a declared mask: all True for one row; for several rows :class:`DropeLensInputError`
    (padding could be counted as real tokens)."""
    mask = _REAL_MASK.get()
    b, t = x.shape[0], x.shape[1]
    if mask is None:
        if b > 1:
            raise DropeLensInputError(
                f"A statistic over tokens (mean replacement) ran on {b} rows with no real-token mask "
                "declared, so padding would count as real tokens. Run it through a drope_lens analysis "
                "(they declare each batch's mask), or wrap the call in `with real_token_mask(batch.mask):` "
                "(all-True for unpadded rows), or run one row at a time.")
        return torch.ones(b, t, dtype=torch.bool, device=x.device)
    if tuple(mask.shape) != (b, t):
        raise ValueError(
            f"The declared real-token mask has shape {tuple(mask.shape)} but the activation has "
            f"[batch, pos] = {(b, t)}. Declare the mask of the batch you run (real_token_mask)."
        )
    return mask.to(device=x.device, dtype=torch.bool)


def check_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; use one of {tuple(allowed)}.")


def check_tensors(tensors: Sequence[str]) -> tuple[str, ...]:
    tensors = (tensors,) if isinstance(tensors, str) else tuple(tensors)
    if not tensors:
        raise ValueError("tensors is empty; pass a subset of ('q', 'k', 'v').")
    for t in tensors:
        check_choice("tensor", t, TENSORS)
    if len(set(tensors)) != len(tensors):
        raise ValueError(f"tensors has duplicates: {tensors}")
    return tensors


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
    out = sorted({int(l) for l in layers})
    bad = [l for l in out if not 0 <= l < n]
    if bad or not out:
        raise ValueError(f"layers must be a non-empty subset of 0..{n - 1}, got {list(layers)}")
    return out


# --------------------------------------------------------------------------------------- selection
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
            "label": self.label, "rotary": self.rotary, "seed": self.seed,
            "counts_per_layer": self.counts(),
            "totals": {t: self.total(t) for t in self.tensors}, "total": self.total(),
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
        return cls(masks, rotary=d.get("rotary", "pre"), label=d.get("label", "massive"),
                   seed=d.get("seed"), meta={k: v for k, v in d.items() if k not in known})

    def to_dataframe(self):
        import pandas as pd

        rows = [dict(tensor=t, layer=l, head=h, dim=d) for t in self.tensors for l, h, d in self.channels(t)]
        return pd.DataFrame(rows, columns=["tensor", "layer", "head", "dim"])


def random_control(
    selection: ChannelSelection, *, seed: int, exclude_selected: bool = True
) -> ChannelSelection:
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


# --------------------------------------------------------------------------------------- zeroing
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


# --------------------------------------------------------------------------------------- mean replacement
def mean_replace(
    x: Float[torch.Tensor, "batch pos head d_head"],
    real: Bool[torch.Tensor, "batch pos"],
    *,
    k: int,
    threshold: Optional[float] = None,
    largest: bool = True,
) -> tuple[torch.Tensor, Bool[torch.Tensor, "batch head d_head"], torch.Tensor]:
    """Jin-style replacement of one forward's activation: ``(new_x, selected, means)``.

    Per sequence and head: the ``k`` dims with the largest L2 norm over real tokens are selected
    (with ``threshold``: only those whose norm also exceeds ``threshold`` x the head's mean norm,
    the study's J-B) and set, at every real position, to that channel's mean over the real tokens
    (BOS included). Norms and means are computed in float32, the mean cast back to ``x.dtype``.
    ``largest=False`` selects the ``k`` dims with the *smallest* norms instead (Jin et al.'s control).
    """
    if not largest and threshold is not None:
        raise ValueError("threshold gates the largest dims; it cannot be combined with largest=False.")
    xf = x.float()
    w = real.to(xf.dtype)[:, :, None, None]
    norms = (xf * xf * w).sum(1).sqrt()  # [b, h, d]
    top = norms.topk(k, dim=-1, largest=largest).indices
    selected = torch.zeros_like(norms, dtype=torch.bool).scatter_(-1, top, True)
    if threshold is not None:
        selected &= norms > threshold * norms.mean(-1, keepdim=True)
    means = ((xf * w).sum(1) / w.sum(1).clamp_min(1.0)).to(x.dtype)
    where = selected[:, None] & real[:, :, None, None]
    return torch.where(where, means[:, None], x), selected, means


class _MeanReplacement:
    """Shared state of one :func:`mean_replacement_hooks` call."""

    def __init__(self, tracker: PositionTracker, *, k: int, threshold, decode: str, rotary: str,
                 largest: bool = True):
        self.tracker, self.k, self.threshold, self.decode, self.rotary = tracker, k, threshold, decode, rotary
        self.largest = largest
        self.prefill: dict[str, tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.has_layer0 = False

    def guard(self, k: torch.Tensor, hook=None) -> None:
        """At layer 0's hook_rot_k (after the tracker): refuse what layer 0 could not handle."""
        tr = self.tracker
        if tr.offset > 0 and self.decode == "raise":
            raise RuntimeError(
                "Mean replacement was set up with decode='raise' and a KV-cache decode step arrived. "
                "Use decode='skip' (perturb the prompt only, like the study and Jin) or run without cache."
            )
        if tr.offset > 0 and tr.n_new > 1 and self.has_layer0:
            raise NotImplementedError(
                f"A {tr.n_new}-token continuation on a KV cache (offset {tr.offset}) reached "
                "mean-replacement hooks. Layer 0's hook_q/hook_k fire before TransformerLens "
                "reveals the cache offset, so only one-token decode steps (model.generate) and "
                "cache-free passes are supported. Feed the continuation one token at a time."
            )

    def hook(self, layer: int, tensor: str) -> HookFn:
        full_sequence_k = self.rotary == "post" and tensor == "k"

        def fn(x: torch.Tensor, hook=None):
            if layer == 0 and not full_sequence_k:
                # Fires before the tracker knows this pass's offset. A 1-token pass is left as is
                # (replacing a channel by its mean over one token is the identity); a multi-token
                # pass is a prefill, since multi-token cache continuations are refused by guard().
                decode_step = False
                if x.shape[1] == 1:
                    return None
            else:
                decode_step = self.tracker.offset > 0
            if not decode_step:
                new, selected, means = mean_replace(x, current_real_mask(x), k=self.k, threshold=self.threshold,
                                                    largest=self.largest)
                if full_sequence_k:
                    self.prefill[hook.name if hook is not None else str(layer)] = (
                        x.shape[1], selected, means, current_real_mask(x))
                return new
            if not full_sequence_k:
                return None  # decode="skip": new tokens untouched; pre-RoPE cached keys stay perturbed
            # post-RoPE K on a decode step: TransformerLens caches the *pre-rotary* k and hook_rot_k
            # sees cached + new positions, so re-apply the prefill replacement to the prompt part.
            key = hook.name if hook is not None else str(layer)
            if key not in self.prefill:
                raise RuntimeError(
                    f"{key}: decode step without a recorded prefill. Run the prompt through the "
                    "model under these hooks first (model.generate does)."
                )
            n_prompt, selected, means, real = self.prefill[key]
            if x.shape[0] != selected.shape[0] or x.shape[1] < n_prompt:
                raise RuntimeError(f"{key}: decode step does not continue the recorded prompt.")
            where = selected[:, None] & real[:, :, None, None]
            head = torch.where(where, means[:, None], x[:, :n_prompt])
            return torch.cat([head, x[:, n_prompt:]], dim=1)

        return fn


def mean_replacement_hooks(
    model,
    *,
    tensors: Sequence[str] = ("q", "k"),
    k: int = 1,
    rotary: str = "pre",
    layers: Optional[Sequence[int]] = None,
    decode: str = "skip",
    threshold: Optional[float] = None,
    largest: bool = True,
) -> FwdHooks:
    """Jin-style mean replacement on the given tensors; see :func:`qk_mean_replacement_hooks`.

    ``largest=False``: replace the ``k`` smallest-norm dims instead (Jin et al.'s control)."""
    tensors = check_tensors(tensors)
    check_choice("rotary", rotary, ROTARY_MODES)
    check_choice("decode", decode, DECODE_MODES)
    d_head = model.cfg.d_head
    if not isinstance(k, int) or not 1 <= k <= d_head:
        raise ValueError(f"k must be an integer in 1..d_head={d_head}, got {k!r}")
    if threshold is not None and not threshold > 0:
        raise ValueError(f"threshold must be > 0 (or None for no gate), got {threshold}")
    if not largest and threshold is not None:
        raise ValueError("threshold gates the largest dims; it cannot be combined with largest=False.")
    layers = check_layers(model, layers)
    tracker = PositionTracker()
    state = _MeanReplacement(tracker, k=k, threshold=threshold, decode=decode, rotary=rotary, largest=largest)
    hooks: FwdHooks = list(tracker.hooks())
    state.has_layer0 = 0 in layers
    hooks.append(("blocks.0.attn.hook_rot_k", state.guard))
    for layer in layers:
        for t in tensors:
            hooks.append((hook_name(layer, t, rotary), state.hook(layer, t)))
    return hooks


def qk_mean_replacement_hooks(
    model,
    *,
    k: int = 1,
    rotary: str = "pre",
    layers: Optional[Sequence[int]] = None,
    decode: str = "skip",
    threshold: Optional[float] = None,
    largest: bool = True,
) -> FwdHooks:
    """Jin-style mean replacement on Q and K of all (or the given) layers.

    On every full (prefill / cache-free) pass, per sequence and head, the ``k`` dims with the largest
    L2 norm over the real tokens are replaced at every real position by that channel's mean over the
    real tokens (BOS included, padding excluded; see :func:`real_token_mask`). ``threshold`` (e.g.
    5.0) adds the study's J-B gate: replace only dims whose norm exceeds ``threshold`` x the head's
    mean norm. With ``threshold=None`` this is the study's J-A (``rotary="pre"``: ``hook_q/hook_k``,
    the study) or Jin's own variant (``rotary="post"``: ``hook_rot_q/hook_rot_k``).
    Differences from the study: dims and means are per sequence (the study took the dims from batch
    element 0 and the mean over the whole padded batch) and means are accumulated in float32.

    KV-cache decode steps (``decode="skip"``, the study's and Jin's behaviour): generated tokens are
    never perturbed, the prompt stays perturbed. Pre-RoPE, TransformerLens caches ``k`` after
    ``hook_k``, so the cached prompt keys are the perturbed ones. Post-RoPE, the cache holds the
    un-rotated, unperturbed keys and ``hook_rot_k`` sees all positions again on each step, so the
    prefill's replacement (same dims, same means) is re-applied to the prompt positions. Either way
    cached generation equals the cache-free computation that perturbs only the prompt positions.
    Decode steps are recognised with :class:`~drope_lens.hooks.positions.PositionTracker` (whose
    hooks are in the returned list), not by their length. Multi-token continuations on a cache are
    refused (layer 0 cannot tell them from a prompt). ``decode="raise"`` refuses any decode step.
    ``largest=False`` replaces the ``k`` smallest-norm dims instead (Jin et al.'s control).
    """
    return mean_replacement_hooks(
        model, tensors=("q", "k"), k=k, rotary=rotary, layers=layers, decode=decode, threshold=threshold,
        largest=largest,
    )
