"""A RoPE model and its DroPE/NoPE twin, sharing one tokenizer and identical token ids."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from drope_lens.errors import TokenizerMismatchError
from drope_lens.loading.backend import Model
from drope_lens.loading.embedded import EMBEDDED_NAME
from drope_lens.loading.forward import model_label
from drope_lens.loading.tokens import TokenBatch, encode

RECALIBRATED = "recalibrated"  # load_pair(drope=...) value: the cached default recalibration

PROBE_TEXT = (
    "The 3 quick brown foxes — naïve, café-loving — jumped over 42 lazy dogs in Zürich!\n"
    "def f(x): return x**2  # code, émojis 🙂 and 漢字 too."
)


def check_same_tokenizer(tok_a: Any, tok_b: Any, probe: str = PROBE_TEXT) -> None:
    """Raise :class:`TokenizerMismatchError` unless both tokenizers give the same ids and BOS."""
    ids_a = list(tok_a(probe, add_special_tokens=False)["input_ids"])
    ids_b = list(tok_b(probe, add_special_tokens=False)["input_ids"])
    if ids_a != ids_b or getattr(tok_a, "bos_token_id", None) != getattr(tok_b, "bos_token_id", None):
        first = next(
            (i for i, (a, b) in enumerate(zip(ids_a, ids_b, strict=False)) if a != b), min(len(ids_a), len(ids_b))
        )
        raise TokenizerMismatchError(
            "The two models tokenize differently (first difference at token "
            f"{first}; BOS {getattr(tok_a, 'bos_token_id', None)} vs "
            f"{getattr(tok_b, 'bos_token_id', None)}). A RoPE/DroPE pair must share a tokenizer: "
            "pair a model with its own DroPE variant (e.g. meta-llama/Llama-2-7b-hf with "
            "SakanaAI/Llama-2-7b-hf-DroPE), or pass the same tokenizer to both loaders."
        )


@dataclass
class ModelPair:
    """Two models (Models or TransformerBridges) to compare; ``rope`` has RoPE, ``drope`` does not.

    With ``offload`` set (e.g. ``"cpu"``), only one model is on ``device`` at a time: :meth:`items`
    and :meth:`on_device` bring the model they hand out onto ``device`` and send the other to
    ``offload`` first, so peak device memory is one model plus one step's working memory.
    """

    rope: Model
    drope: Model
    labels: dict[str, str] = field(default_factory=dict)
    device: Optional[str] = None
    offload: Optional[str] = None
    moves: list = field(default_factory=list, repr=False)  # (role, device) per move, in order

    def __post_init__(self) -> None:
        check_same_tokenizer(self.rope.tokenizer, self.drope.tokenizer)
        if self.rope.cfg.d_vocab != self.drope.cfg.d_vocab:
            raise TokenizerMismatchError(
                f"Vocabulary sizes differ ({self.rope.cfg.d_vocab} vs {self.drope.cfg.d_vocab})."
            )
        self.labels.setdefault("rope", model_label(self.rope))
        self.labels.setdefault("drope", model_label(self.drope))

    @property
    def tokenizer(self):
        return self.rope.tokenizer

    @property
    def n_ctx(self) -> int:
        return min(self.rope.cfg.n_ctx, self.drope.cfg.n_ctx)

    def items(self, move: bool = True) -> Iterator[tuple[str, Model]]:
        """``("rope", model), ("drope", model)``; each put on the device just before it is handed out.

        Always rope then drope (steps may pass facts from the RoPE model to its twin, so the order
        is kept). Without offload nothing moves; with offload each model moves onto the device
        once per loop, and the one already there is not moved again. ``move=False`` only lists
        them (e.g. to read configs).
        """
        for role in ("rope", "drope"):
            if move:
                self.activate(role)
            yield role, getattr(self, role)

    _resident: Optional[str] = field(default=None, init=False, repr=False)

    def activate(self, role: str) -> Model:
        """Put ``role``'s model on ``device`` (the other on ``offload``); a no-op without offload."""
        if role not in ("rope", "drope"):
            raise ValueError(f"role must be 'rope' or 'drope', got {role!r}")
        if self.offload is None or self._resident == role:
            return getattr(self, role)
        from drope_lens.loading.surface import place

        other = "drope" if role == "rope" else "rope"
        if _on(getattr(self, other)) != {str(self.offload)} or self._resident == other:
            place(getattr(self, other), self.offload)  # off first: never both on the device
            self.moves.append((other, str(self.offload)))
        place(getattr(self, role), str(self.device))
        self.moves.append((role, str(self.device)))
        self._resident = role
        return getattr(self, role)

    @contextlib.contextmanager
    def on_device(self, role: str) -> Iterator[Model]:
        """``with pair.on_device("rope") as model:`` -- that model on the device for the block."""
        yield self.activate(role)

    def encode(self, texts: Union[str, Sequence[str]], **kwargs) -> TokenBatch:
        """Identical token ids for both models (BOS prepended; see :mod:`drope_lens.loading.tokens`)."""
        kwargs.setdefault("n_ctx", self.n_ctx)
        return encode(self.tokenizer, texts, **kwargs)


def _on(model: Model) -> set[str]:
    return {str(p.device) for p in model.parameters()}


def load_pair(
    rope: Optional[str] = None,
    drope: Optional[str] = None,
    *,
    dtype: Union[str, torch.dtype] = torch.float32,
    device: Union[str, torch.device] = "cpu",
    process_weights: bool = False,
    offload: Optional[str] = None,
    n_devices: int = 1,
    lean: bool = True,
    backend: Optional[str] = None,
    model_class: Optional[type] = None,
    quantize: Optional[str] = None,
    device_map: Any = None,
    max_memory: Optional[dict] = None,
) -> ModelPair:
    """Load a RoPE/DroPE pair. With no arguments: the embedded SmolLM2-135M and its zero-shot NoPE twin.

    ``drope`` may be a DroPE checkpoint (hub id or folder), ``"recalibrated"`` (with ``rope=None``:
    the latest checkpoint of the cached ``drope-lens recalibrate`` run, labelled "RoPE removed,
    recalibrated on N tokens" with its recipe) or omitted, in which case the twin is ``rope``
    with RoPE dropped and no recalibration (labelled so everywhere).

    ``offload="cpu"``: the models load onto ``offload`` and only the one in use sits on ``device``
    (see :class:`ModelPair`), so a pair that does not fit the device together still runs.
    ``quantize``, ``device_map``, ``max_memory`` (bridge; see :func:`~drope_lens.loading.load.load_hooked`)
    apply to both models. With ``device_map`` each model is placed by its own map (both sharded at once),
    or, with ``offload`` too, each loads onto the devices of its map, is moved to ``offload`` and comes
    back to that map when it is used: one model on the devices at a time. The zero-shot twin of a
    quantized or device-mapped model is loaded a second time (bitsandbytes' quantization is
    deterministic, so its weights are the RoPE model's) rather than deep-copied.
    ``backend``, ``n_devices``, ``lean``, ``model_class``: as for :func:`~drope_lens.loading.load.load_hooked`
    (``model_class=sae_lens.HookedSAETransformer`` gives two HookedSAETransformers).
    """
    if drope == RECALIBRATED and rope is not None:
        from drope_lens.errors import DropeLensInputError

        raise DropeLensInputError(
            "--drope recalibrated is the cached recalibration of the embedded model; leave --rope "
            "out, or pass your own recalibrated checkpoint folder as --drope"
        )
    if drope == RECALIBRATED:
        from drope_lens.loading.drope_format import cached_recalibrated

        cached_recalibrated()  # a missing cache fails here, before any model is loaded
    if offload is not None:
        torch.device(offload)  # a bad name fails here, before any model is loaded
    torch.device(device)
    from drope_lens.loading.facts import check_quantization
    from drope_lens.loading.load import choose_backend, load_hooked, to_nope
    from drope_lens.loading.source import read_family

    quantize = check_quantization(quantize)
    families = tuple(read_family(s) for s in (rope, drope) if s is not None and s != RECALIBRATED)
    backend = choose_backend(
        backend,
        families,
        quantize=quantize,
        device_map=device_map,
        max_memory=max_memory,
        process_weights=process_weights,
        n_devices=n_devices,
        model_class=model_class,
    )
    mapped = device_map is not None
    if mapped:
        from drope_lens.loading.bridge.devices import ON_ITS_MAP

        target: Union[str, torch.device] = ON_ITS_MAP if offload is not None else "cpu"
    else:
        target, device = device, (offload if offload is not None else device)
    from drope_lens.loading.embedded import load_embedded

    extra: dict[str, Any] = {}
    if quantize is not None:
        extra["quantize"] = quantize
    if mapped:
        extra.update(device_map=device_map, max_memory=max_memory)

    def settle(model: Model) -> Model:
        """A device-mapped model of an offloaded pair goes to ``offload`` once loaded (its map is kept)."""
        if mapped and offload is not None:
            from drope_lens.loading.surface import place

            place(model, offload)
        return model

    def load(source: Any, **kw: Any) -> Model:
        return load_hooked(
            source,
            backend=backend,
            dtype=dtype,
            device=device,
            process_weights=process_weights,
            n_devices=n_devices,
            lean=lean,
            model_class=model_class,
            **extra,
            **kw,
        )

    def embedded(**kw: Any) -> Model:
        if model_class is not None:  # what load_embedded loads, as model_class
            from drope_lens.loading.embedded import embedded_checkpoint

            return load(embedded_checkpoint(), model_name=EMBEDDED_NAME, **kw)
        return load_embedded(
            dtype=dtype,
            device=device,
            process_weights=process_weights,
            n_devices=n_devices,
            backend=backend,
            **extra,
            **kw,
        )

    rope_model = settle(embedded() if rope is None else load(rope))
    if getattr(rope_model.cfg, "is_nope", False):
        raise ValueError(f"{rope} has no RoPE; pass it as --drope and a RoPE model as --rope.")
    if drope is None and (quantize is not None or mapped):
        drope_model = settle(embedded(nope=True) if rope is None else load(rope, nope=True))
    elif drope is None:
        drope_model = to_nope(rope_model)
    elif drope == RECALIBRATED:
        from drope_lens.loading.drope_format import cached_recalibrated

        drope_model = settle(load(cached_recalibrated(), model_name=EMBEDDED_NAME))
    else:
        drope_model = settle(load(drope))
        if not getattr(drope_model.cfg, "is_nope", False):
            raise ValueError(
                f"{drope} still uses RoPE. Pass a DroPE checkpoint (model_type llama_drope or qwen2_drope), "
                "or leave --drope out to compare with the zero-shot NoPE twin."
            )
    pair = ModelPair(rope_model, drope_model, device=str(target), offload=None if offload is None else str(offload))
    if mapped and offload is None:
        pair.device = None  # each model stays on the devices of its own map
    return pair
