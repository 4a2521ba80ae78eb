"""The kernels' private nn.Linear-layout copies of TransformerLens's weight matrices.

The model's parameters are plain contiguous tensors in TransformerLens's own layout (``W_Q [head, d_model,
d_head]``, ``W_in [d_model, d_mlp]``, ``W_U [d_model, d_vocab]`` ...): ``state_dict()``, ``safetensors``,
``parameters_to_vector`` and ``.view(-1)`` treat them like any HookedTransformer's. TransformerLens turns each
into the ``nn.Linear`` layout (``[out, in]``, contiguous) at every call (``W.T.contiguous()``,
``rearrange(...)``): a copy of every matrix per forward pass, ~0.4 s for SmolLM2-135M on two CPU cores, most
of a KV-cache decode step. drope_lens's patched projections (q/k/v, attention output, gated MLP,
unembedding) ask :func:`kernel_weight` instead, which makes that copy once and keeps it until the parameter
changes. The matrix product then runs on the very tensor TransformerLens would have built, so the results
are bit-identical to TransformerLens's (and, in bf16, to Hugging Face's ``nn.Linear``).

When the copy is rebuilt: it is keyed on the parameter object, its version counter (every in-place edit
bumps it: ``W_Q[...] *= 2`` under ``no_grad``, ``load_state_dict``, ``process_weights_``, optimizer steps),
its ``data_ptr``/dtype/device/shape/strides (``.data = ...``, ``.to()``, a new Parameter), and it is
dropped on ``.to()``/``.half()``/``.cuda()`` and left out of pickles and deep copies. Edits through
``param.data`` would bypass the version counter (``.data`` hands out a tensor with a counter of its own),
so a parameter used by these kernels becomes a :class:`WatchedParameter`: an ``nn.Parameter`` whose
``.data`` is ``detach()`` (same storage, *shared* counter). A parameter created inside
``torch.inference_mode`` has no counter at all and is transformed per call, as TransformerLens does.

Memory: the copies double the bytes of the matrices (embedding excluded). They are made on first use
(loading memory is unchanged). :func:`release_kernel_weights` frees them; ``kernel_weight_cache(model,
False)`` turns the cache off (TransformerLens's per-call copy, same numbers, no extra memory).
With autograd on and a parameter that requires grad, the cached copy is used through a function whose
backward maps the gradient back onto the parameter's layout (same gradient as TransformerLens's).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import nn

#: Where the kernels keep their nn.Linear-layout weight copies on a module.
KERNEL_WEIGHTS = "_drope_lens_kernel_weights"
_ENABLED = "_drope_lens_cache_weights"  # module attribute; absent = on


class WatchedParameter(nn.Parameter):
    """An ``nn.Parameter`` whose ``.data`` shares its version counter, so edits through it are seen.

    ``p.data`` is ``p.detach()``: the same storage, ``requires_grad=False``, but edits bump ``p._version``
    (with a plain Parameter they do not). ``p.data = tensor`` is unchanged. Everything else is
    ``nn.Parameter``; pickling gives a plain ``nn.Parameter`` (watched again on first use).
    """

    @property
    def data(self) -> torch.Tensor:
        return self.detach()

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        torch._C.TensorBase.data.__set__(self, value)  # type: ignore[attr-defined]


def _watch(param: Optional[torch.Tensor]) -> None:
    if type(param) is nn.Parameter:
        param.__class__ = WatchedParameter


def watch_parameters(module: nn.Module) -> None:
    r"""Make ``module``'s matrix parameters :class:`WatchedParameter`\ s (the same objects; idempotent).

    Called when a module is patched, unpickled or given a new matrix parameter, so a ``.data`` handle
    taken at any time shares the parameter's version counter.
    """
    for name, param in module._parameters.items():
        if name in RULES:
            _watch(param)


# ---------------------------------------------------------------------------------------- layout rules
def _heads_in(p: torch.Tensor) -> torch.Tensor:
    """``[head, d_model, d_head]`` -> ``[(head d_head), d_model]`` (q/k/v projections)."""
    h, m, d = p.shape
    return p.permute(0, 2, 1).reshape(h * d, m)


def _heads_in_back(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    h, m, d = like.shape
    return g.reshape(h, d, m).permute(0, 2, 1)


def _heads_out(p: torch.Tensor) -> torch.Tensor:
    """``[head, d_head, d_model]`` -> ``[d_model, (head d_head)]`` (attention output)."""
    h, d, m = p.shape
    return p.permute(2, 0, 1).reshape(m, h * d)


def _heads_out_back(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    h, d, m = like.shape
    return g.reshape(m, h, d).permute(1, 2, 0)


def _transposed(p: torch.Tensor) -> torch.Tensor:
    """``[in, out]`` -> ``[out, in]`` (MLP, unembedding)."""
    return p.T


def _transposed_back(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return g.T


class _Rule(NamedTuple):
    to_linear: Callable[[torch.Tensor], torch.Tensor]
    back: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ndim: int


_HEADS_IN = _Rule(_heads_in, _heads_in_back, 3)
RULES: dict[str, _Rule] = {
    "W_Q": _HEADS_IN,
    "W_K": _HEADS_IN,
    "W_V": _HEADS_IN,
    "_W_K": _HEADS_IN,
    "_W_V": _HEADS_IN,
    "W_O": _Rule(_heads_out, _heads_out_back, 3),
    "W_in": _Rule(_transposed, _transposed_back, 2),
    "W_gate": _Rule(_transposed, _transposed_back, 2),
    "W_out": _Rule(_transposed, _transposed_back, 2),
    "W_U": _Rule(_transposed, _transposed_back, 2),
}


class _Entry(NamedTuple):
    ref: weakref.ref
    key: tuple
    weight: torch.Tensor


class _WithGrad(torch.autograd.Function):
    """The cached copy as a function of the parameter: forward is the copy, backward the inverse layout."""

    @staticmethod
    def forward(ctx: Any, param: torch.Tensor, weight: torch.Tensor, rule: _Rule) -> torch.Tensor:
        ctx.rule = rule
        ctx.save_for_backward(param)  # only its shape is needed; saving keeps the version check honest
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], None, None]:
        (param,) = ctx.saved_tensors
        return ctx.rule.back(grad, param), None, None


def _key(param: torch.Tensor) -> tuple:
    return (param._version, param.data_ptr(), param.dtype, param.device, tuple(param.shape), param.stride())


def kernel_weight(module: nn.Module, name: str) -> torch.Tensor:
    """``module``'s parameter ``name`` in ``nn.Linear`` layout (contiguous ``[out, in]``), cached.

    Exactly the tensor TransformerLens builds at each call (``W.T.contiguous()`` / ``rearrange``); see the
    module docstring for when the cached copy is rebuilt.
    """
    param = module._parameters[name]
    assert param is not None
    rule = RULES[name]
    grad = torch.is_grad_enabled() and param.requires_grad
    if not module.__dict__.get(_ENABLED, True) or param.is_inference() or not param.is_floating_point():
        return rule.to_linear(param).contiguous()  # TransformerLens's per-call copy
    _watch(param)
    cache = module.__dict__.setdefault(KERNEL_WEIGHTS, {})
    key = _key(param)
    entry = cache.get(name)
    if entry is None or entry.ref() is not param or entry.key != key:
        cache.pop(name, None)  # free the stale copy before making the new one
        with torch.inference_mode(False), torch.no_grad():
            weight = rule.to_linear(param).contiguous()
        entry = cache[name] = _Entry(weakref.ref(param), key, weight)
    if grad:
        return _WithGrad.apply(param, entry.weight, rule)
    return entry.weight


def _patched_modules(model: nn.Module):
    from drope_lens.loading.hooked.patching import Patched

    return [m for m in model.modules() if isinstance(m, Patched)]


def release_kernel_weights(model: nn.Module) -> int:
    """Free the kernels' cached weight copies of ``model`` (rebuilt on the next call). Returns bytes freed."""
    freed = 0
    for module in _patched_modules(model):
        for entry in module.__dict__.pop(KERNEL_WEIGHTS, {}).values():
            freed += entry.weight.numel() * entry.weight.element_size()
    return freed


def kernel_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the kernels' cached weight copies of ``model`` right now."""
    return sum(
        e.weight.numel() * e.weight.element_size()
        for m in _patched_modules(model)
        for e in m.__dict__.get(KERNEL_WEIGHTS, {}).values()
    )


def kernel_weight_cache(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn the cache of nn.Linear-layout weight copies on (default) or off for ``model``.

    Off: each call copies the matrices as TransformerLens does (slower, no extra memory; same numbers).
    The setting is a module attribute, so it survives pickling and ``copy.deepcopy``. Returns ``model``.
    """
    for module in _patched_modules(model):
        if enabled:
            module.__dict__.pop(_ENABLED, None)
        else:
            module.__dict__[_ENABLED] = False
            module.__dict__.pop(KERNEL_WEIGHTS, None)
    return model
