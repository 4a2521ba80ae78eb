"""Loading a RoPE model or its DroPE/NoPE twin into either backend (:mod:`drope_lens.loading.backend`).

:func:`load_hooked` reads a hub id or folder (:mod:`drope_lens.loading.source`: JSON config, no remote
code, checks before any weight), :func:`hooked_from_hf` converts an in-memory HF model, :func:`to_nope`
drops RoPE from a loaded model. Each returns a HookedTransformer (``backend="hooked"``) or a
TransformerBridge (``backend="bridge"``) with the same hook names, shapes, numbers and config facts.

Quantized weights (``quantize=``), device maps (``device_map=``, ``max_memory=``) and the Qwen2/Qwen3
families exist on the bridge only. When ``backend`` is not given (and ``$DROPE_LENS_BACKEND`` not set)
such a request gets the bridge; asking for the hooked backend with one of them is refused before
anything is loaded, with a message naming the bridge (:func:`resolve_backend`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import torch

from drope_lens.errors import DropeLensInputError
from drope_lens.loading.backend import BACKENDS, ENV_VAR, backend_of, check_backend
from drope_lens.loading.facts import ZERO_SHOT_NOPE, check_quantization
from drope_lens.loading.source import Family, as_dtype, check_backend_holds, family_of, read_family, read_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Source = Union[str, os.PathLike, "PreTrainedModel"]


def bridge_reasons(
    *,
    quantize: Optional[str] = None,
    device_map: Any = None,
    max_memory: Any = None,
    families: tuple[Family, ...] = (),
) -> list[str]:
    """What in a request only the bridge backend can do (empty: either backend)."""
    reasons = []
    if quantize is not None:
        reasons.append(f"quantize={quantize!r}")
    if device_map is not None or max_memory is not None:
        reasons.append("device_map/max_memory")
    reasons += [f"{f.title} ({f.architecture})" for f in families if "hooked" not in f.backends]
    return reasons


def resolve_backend(backend: Optional[str], reasons: list[str], *, what: str = "backend") -> str:
    """The backend for a request: ``backend`` (checked), else the default, except that a request only the
    bridge can serve (``reasons``, :func:`bridge_reasons`) gets the bridge when nobody chose the hooked
    backend; choosing it (``backend='hooked'`` or ``$DROPE_LENS_BACKEND=hooked``) is refused, before loading."""
    chosen = backend if backend is not None else (os.environ.get(ENV_VAR, "").strip() or None)
    if not reasons:
        return check_backend(backend, what=what)
    if chosen is None:
        return check_backend("bridge", what=what)
    resolved = check_backend(backend, what=what)
    if resolved == "hooked":
        verb = "needs" if len(reasons) == 1 else "need"
        raise DropeLensInputError(
            f"{' and '.join(reasons)} {verb} the bridge backend (TransformerBridge): pass backend='bridge' "
            f"(CLI: --backend bridge) or leave the backend unset. The hooked backend (HookedTransformer) converts "
            "full-precision Llama weights into its own tensors, so it can hold no quantized weights, device map or "
            "other architecture."
        )
    return resolved


def _check_options(
    backend: str,
    *,
    process_weights: bool,
    n_devices: int,
    device_map: Any = None,
    max_memory: Any = None,
    model_class: Any = None,
) -> None:
    if device_map is not None and n_devices > 1:
        raise ValueError("Give device_map or n_devices, not both (n_devices is the hooked backend's block split).")
    if backend == "bridge":
        from drope_lens.loading.bridge.devices import check_device_map

        check_device_map(device_map, max_memory)
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
            "n_devices > 1 splits a HookedTransformer's blocks; on the bridge backend give an accelerate "
            "device_map instead (device_map='auto' or 'balanced', max_memory=...), or use backend='hooked'."
        )


def choose_backend(
    backend: Optional[str],
    families: tuple[Family, ...],
    *,
    quantize: Optional[str],
    device_map: Any,
    max_memory: Any,
    process_weights: bool,
    n_devices: int,
    model_class: Any,
) -> str:
    """The backend for a load request (:func:`resolve_backend`), with every option checked against it."""
    reasons = bridge_reasons(quantize=quantize, device_map=device_map, max_memory=max_memory, families=families)
    backend = resolve_backend(backend, reasons)
    _check_options(
        backend,
        process_weights=process_weights,
        n_devices=n_devices,
        device_map=device_map,
        max_memory=max_memory,
        model_class=model_class,
    )
    return backend


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
    quantize: Optional[str] = None,
    device_map: Any = None,
    max_memory: Optional[dict] = None,
) -> Any:
    """Load a model (hub id, local folder, or in-memory HF model) into TransformerLens.

    Supported: Llama-family causal LMs (both backends), Qwen2 and Qwen3 (bridge), and SakanaAI DroPE
    checkpoints of Llama (``model_type: llama_drope``) and Qwen2 (``qwen2_drope``); anything else is
    refused, listing what is supported, before any weight is read.

    ``backend``: ``"hooked"`` (HookedTransformer) or ``"bridge"`` (TransformerBridge); default
    :func:`~drope_lens.loading.backend.default_backend`, or the bridge for what only it can hold
    (:func:`resolve_backend`). DroPE checkpoints load without ``trust_remote_code`` and without ever
    asking: the config is read as JSON, ``attention_type`` and ``softmax_scale`` are honoured, and the
    model gets the identity rotation. ``nope=True`` drops RoPE from any other model (zero-shot NoPE).

    Bridge only: ``quantize`` (``"nf4"``: 4-bit NormalFloat with double quantization, as the study;
    ``"fp4"``; ``"int8"``: LLM.int8(); bitsandbytes, computing in ``dtype``; hooks see dequantized
    activations and attention stays float32), ``device_map`` (``"auto"``, ``"balanced"``,
    ``"sequential"`` or a ``{module: device}`` dict; replaces ``device``) and ``max_memory``
    (``{0: "20GiB", 1: "20GiB"}``). See docs/quantization-and-devices.md.

    Hooked backend only: folders with safetensors load *lean* (:mod:`drope_lens.loading.hooked.lean`,
    peak host memory about the model's size); ``lean=False`` (or ``process_weights=True``, or
    ``.bin``-only checkpoints) goes through an HF model (~2.2x); ``n_devices`` splits the blocks over
    that many devices (TransformerLens's ``n_devices``; ``device`` then names the first);
    ``model_class`` builds that HookedTransformer subclass instead, e.g.
    ``model_class=sae_lens.HookedSAETransformer`` for ``run_with_saes`` (every drope_lens patch and DroPE
    q/k norm included; see docs/composing.md). The bridge wraps the HF model itself (one copy of the weights).
    """
    quantize = check_quantization(quantize)
    dtype = as_dtype(dtype)
    if not isinstance(source, (str, os.PathLike)):
        if quantize is not None or device_map is not None or max_memory is not None:
            raise DropeLensInputError(
                "quantize / device_map / max_memory apply when drope_lens loads the checkpoint; an in-memory HF "
                "model is already loaded: quantize or place it with from_pretrained(quantization_config=..., "
                "device_map=...) and pass it in (the bridge keeps it as it is)."
            )
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
    family = read_family(source)  # config.json only: an unsupported architecture stops here
    backend = choose_backend(
        backend,
        (family,),
        quantize=quantize,
        device_map=device_map,
        max_memory=max_memory,
        process_weights=process_weights,
        n_devices=n_devices,
        model_class=model_class,
    )
    src = read_source(source, tokenizer=tokenizer, nope=nope, backend=backend)
    if backend == "bridge":
        from drope_lens.loading.bridge.load import load_source as load_bridge

        return load_bridge(
            src,
            dtype=dtype,
            device=device,
            n_ctx=n_ctx,
            model_name=model_name,
            quantize=quantize,
            device_map=device_map,
            max_memory=max_memory,
        )
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
    """An in-memory HF causal LM (Llama-family; Qwen2/Qwen3 on the bridge) as a drope_lens model of ``backend``.

    Args:
        hf_model: a loaded HF causal LM. The hooked backend converts (copies) its weights; the bridge
            wraps the model itself (it becomes part of the bridge), also a bitsandbytes-quantized one or
            one placed by a device map (both kept as they are; bridge only).
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
    family = family_of(hf_model.config)
    from drope_lens.loading.bridge.quantize import quantization_of

    reasons = bridge_reasons(
        quantize=quantization_of(hf_model),
        device_map=getattr(hf_model, "hf_device_map", None),
        families=(family,),
    )
    backend = resolve_backend(backend, reasons)
    check_backend_holds(family, backend)
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
