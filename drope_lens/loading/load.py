"""Loading a RoPE model or its DroPE/NoPE twin into either backend (:mod:`drope_lens.loading.backend`).

:func:`load_hooked` reads a hub id or folder (:mod:`drope_lens.loading.source`: JSON config, no remote
code, checks before any weight), :func:`hooked_from_hf` converts an in-memory HF model, :func:`to_nope`
drops RoPE from a loaded model. Each returns a HookedTransformer (``backend="hooked"``) or a
TransformerBridge (``backend="bridge"``) with the same hook names, shapes, numbers and config facts.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import torch

from drope_lens.errors import DropeLensInputError
from drope_lens.loading.backend import BACKENDS, backend_of, check_backend
from drope_lens.loading.facts import ZERO_SHOT_NOPE
from drope_lens.loading.source import as_dtype, read_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Source = Union[str, os.PathLike, "PreTrainedModel"]


def _check_options(backend: str, *, process_weights: bool, n_devices: int, model_class: Any = None) -> None:
    if backend == "bridge" and model_class is not None:
        raise DropeLensInputError(
            f"model_class={getattr(model_class, '__name__', model_class)!r} is a hooked-backend option: it names a "
            "HookedTransformer subclass (e.g. SAELens's HookedSAETransformer, which needs TransformerLens < 4 and "
            "the hooked backend). The bridge backend builds a TransformerBridge; use backend='hooked' on "
            "TransformerLens 3.9 for SAELens."
        )
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}.")
    if backend == "bridge" and process_weights:
        raise ValueError(
            "process_weights=True (TransformerLens's fold_ln / centring) is a hooked-backend option; the bridge "
            "backend keeps the HF weights, whose hooks and logits equal the HF model's. Use backend='hooked'."
        )
    if backend == "bridge" and n_devices > 1:
        raise ValueError(
            "n_devices > 1 splits a HookedTransformer's blocks; on the bridge backend load one device, "
            "or use backend='hooked'."
        )


def load_hooked(
    source: Source,
    *,
    backend: Optional[str] = None,
    tokenizer: Any = None,
    nope: Optional[bool] = None,
    dtype: Union[str, torch.dtype] = torch.float32,
    device: Union[str, torch.device] = "cpu",
    process_weights: bool = False,
    n_ctx: Optional[int] = None,
    model_name: Optional[str] = None,
    n_devices: int = 1,
    lean: bool = True,
    model_class: Optional[type] = None,
) -> Any:
    """Load a Llama-family model (hub id, local folder, or in-memory HF model) into TransformerLens.

    ``backend``: ``"hooked"`` (HookedTransformer) or ``"bridge"`` (TransformerBridge); default
    :func:`~drope_lens.loading.backend.default_backend`. SakanaAI DroPE checkpoints (``model_type:
    llama_drope``) load without ``trust_remote_code`` and without ever asking: the config is read as
    JSON, ``attention_type`` and ``softmax_scale`` are honoured, and the model gets the identity
    rotation. ``nope=True`` drops RoPE from any other model (zero-shot NoPE).

    Hooked backend only: folders with safetensors load *lean* (:mod:`drope_lens.loading.hooked.lean`,
    peak host memory about the model's size); ``lean=False`` (or ``process_weights=True``, or
    ``.bin``-only checkpoints) goes through an HF model (~2.2x); ``n_devices`` splits the blocks over
    that many devices (TransformerLens's ``n_devices``; ``device`` then names the first);
    ``model_class`` builds that HookedTransformer subclass instead, e.g.
    ``model_class=sae_lens.HookedSAETransformer`` for ``run_with_saes`` (every drope_lens patch and DroPE
    q/k norm included; see docs/composing.md). The bridge wraps the HF model itself (one copy of the weights).
    """
    backend = check_backend(backend)
    _check_options(backend, process_weights=process_weights, n_devices=n_devices, model_class=model_class)
    dtype = as_dtype(dtype)
    if not isinstance(source, (str, os.PathLike)):
        return hooked_from_hf(
            source,
            tokenizer,
            backend=backend,
            model_name=model_name,
            dtype=dtype,
            device=device,
            position_encoding="nope" if nope else "rope",
            nope_origin=ZERO_SHOT_NOPE if nope else None,
            process_weights=process_weights,
            n_ctx=n_ctx,
            n_devices=n_devices,
            model_class=model_class,
        )
    src = read_source(source, tokenizer=tokenizer, nope=nope)
    if backend == "bridge":
        from drope_lens.loading.bridge.load import load_source as load_bridge

        return load_bridge(src, dtype=dtype, device=device, n_ctx=n_ctx, model_name=model_name)
    from drope_lens.loading.hooked.load import load_source as load_hooked_source

    return load_hooked_source(
        src,
        dtype=dtype,
        device=device,
        process_weights=process_weights,
        n_ctx=n_ctx,
        model_name=model_name,
        n_devices=n_devices,
        lean=lean,
        model_class=model_class,
    )


def hooked_from_hf(
    hf_model: Any,
    tokenizer: Any = None,
    *,
    backend: Optional[str] = None,
    model_name: Optional[str] = None,
    position_encoding: str = "rope",
    nope_origin: Optional[str] = None,
    dtype: Union[str, torch.dtype, None] = None,
    device: Union[str, torch.device] = "cpu",
    process_weights: bool = False,
    n_ctx: Optional[int] = None,
    source: Optional[str] = None,
    n_devices: int = 1,
    drope_attention_type: Optional[str] = None,
    softmax_scale: Optional[float] = None,
    q_norms: Optional[Sequence[torch.Tensor]] = None,
    k_norms: Optional[Sequence[torch.Tensor]] = None,
    model_class: Optional[type] = None,
) -> Any:
    """An in-memory HF ``LlamaForCausalLM`` as a drope_lens model of ``backend``.

    Args:
        hf_model: a loaded Llama-family HF causal LM. The hooked backend converts (copies) its
            weights; the bridge wraps the model itself (it becomes part of the bridge).
        tokenizer: its tokenizer (optional, but needed for text input).
        position_encoding: ``"rope"`` or ``"nope"`` (identity rotation, for DroPE or zero-shot NoPE).
        dtype: model dtype; defaults to the HF model's.
        process_weights: hooked backend: apply TransformerLens's fold_ln / centring.
        n_ctx: context window; defaults to ``max_position_embeddings``.
        drope_attention_type, softmax_scale, q_norms, k_norms: a DroPE model's variant, logit
            multiplier and per-layer full-width q/k RMSNorm gains (``None``: that side unnormed).
        model_class: hooked backend: a HookedTransformer subclass to build (e.g. SAELens's
            ``HookedSAETransformer``); default HookedTransformer.
    """
    backend = check_backend(backend)
    _check_options(backend, process_weights=process_weights, n_devices=n_devices, model_class=model_class)
    common: dict[str, Any] = dict(
        model_name=model_name,
        position_encoding=position_encoding,
        nope_origin=nope_origin,
        dtype=dtype,
        device=device,
        n_ctx=n_ctx,
        source=source,
        drope_attention_type=drope_attention_type,
        softmax_scale=softmax_scale,
    )
    if backend == "bridge":
        from drope_lens.loading.bridge.load import bridge_from_hf

        return bridge_from_hf(hf_model, tokenizer, q_norms=q_norms, k_norms=k_norms, **common)
    from drope_lens.loading.hooked.attention import install_qk_norm
    from drope_lens.loading.hooked.load import hooked_from_hf as convert

    if n_devices > 1:
        common["n_devices"] = n_devices
    model = convert(hf_model, tokenizer, process_weights=process_weights, model_class=model_class, **common)
    if q_norms is not None or k_norms is not None:
        install_qk_norm(model, q_norms, k_norms)
    return model


def to_nope(
    model: Any,
    *,
    origin: str = ZERO_SHOT_NOPE,
    inplace: bool = False,
    backend: Optional[str] = None,
    model_class: Optional[type] = None,
) -> Any:
    """The model with the identity rotation in every layer (zero-shot NoPE, no recalibration), same backend.

    ``inplace=False`` (default): a new model with copied weights; the source model is left
    untouched, and memory doubles. ``inplace=True``: ``model`` itself becomes the NoPE model and is
    returned; no weight is copied, and the RoPE original is gone. Either way the config says
    ``position_encoding='nope'`` and ``nope_origin`` (default: "zero-shot NoPE (RoPE removed, not
    recalibrated)"). ``backend``, if given, must be the model's own (the twin is built in the same class).
    Hooked backend: the twin has ``model``'s class (a HookedSAETransformer stays one), or ``model_class``
    (a HookedTransformer subclass).
    """
    own = backend_of(model)
    if backend is not None and backend != own:
        if backend not in BACKENDS:
            check_backend(backend)  # names the known ones
        raise DropeLensInputError(
            f"to_nope keeps the model's backend ({own!r}); load the RoPE model with backend={backend!r} "
            "(load_hooked / load_pair) and drop RoPE from that one."
        )
    if own == "bridge":
        _check_options("bridge", process_weights=False, n_devices=1, model_class=model_class)
        from drope_lens.loading.bridge.load import to_nope as bridge_to_nope

        return bridge_to_nope(model, origin=origin, inplace=inplace)
    from drope_lens.loading.hooked.nope import to_nope as hooked_to_nope

    return hooked_to_nope(model, origin=origin, inplace=inplace, model_class=model_class)
