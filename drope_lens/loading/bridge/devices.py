"""Where a bridge's HF model lives: one device, or an accelerate device map (layers on several devices).

``device_map`` (``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"`` or a ``{module: device}``
dict) and ``max_memory`` go to HF's ``from_pretrained``, which places every module and (for maps over
more than one device) attaches accelerate's hooks that move each layer's inputs onto its device.
TransformerBridge runs such a model as it is: its components call the HF modules, whose hooks move
the activations; ``cfg.device`` is the embedding's device (where token ids go). drope_lens's attention
computes on whatever device its layer's inputs arrive on, and the analyses move what they combine.

Two kinds of map are refused, as TransformerBridge refuses them: ``"disk"``/``"meta"`` entries and maps
that mix CPU and GPU entries. accelerate implements both as offload (weights materialised by its hooks
only around the HF module's own forward), which the bridge's components bypass. Use an all-GPU map
(several GPUs), an all-CPU map, or ``offload="cpu"`` on a pair (one model on the GPUs at a time).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from drope_lens.errors import DropeLensInputError

#: ``device_map`` strings HF / accelerate compute a map from.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
#: The target a pair hands :func:`place_bridge` to put a model back on the devices of its own map.
ON_ITS_MAP = "device_map"

DeviceMap = Union[str, dict]


def _kind(value: Any) -> str:
    """``"cpu"``, ``"gpu"`` (an index or an accelerator device), ``"disk"`` or ``"meta"``."""
    if isinstance(value, int) or isinstance(value, torch.device) and value.type not in ("cpu", "meta"):
        return "gpu"
    text = str(value).lower()
    if text in ("cpu", "disk", "meta"):
        return text
    return "meta" if text.startswith("meta") else "gpu"


def check_device_map(device_map: Optional[DeviceMap], max_memory: Optional[dict] = None, *, what: str = "") -> None:
    """Refuse, before loading, a device map the bridge cannot run (see the module docstring)."""
    where = f"{what}: " if what else ""
    if device_map is None:
        if max_memory is not None:
            raise DropeLensInputError(f"{where}max_memory needs a device_map (e.g. device_map='auto').")
        return
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise DropeLensInputError(
                f"{where}device_map must be one of {DEVICE_MAP_STRATEGIES} or a {{module: device}} dict, "
                f"got {device_map!r}."
            )
    elif isinstance(device_map, dict):
        if not device_map:
            raise DropeLensInputError(f"{where}device_map is an empty dict; map module names to devices.")
        check_placement(device_map.values(), what=f"{where}device_map")
    else:
        raise DropeLensInputError(f"{where}device_map must be a string or a dict, got {type(device_map).__name__}.")
    if max_memory is not None:
        if not isinstance(max_memory, dict) or not max_memory:
            raise DropeLensInputError(
                f"{where}max_memory must be a non-empty {{device: size}} dict, e.g. {{0: '20GiB'}}."
            )
        if any(_kind(k) in ("disk", "meta") for k in max_memory):
            raise DropeLensInputError(
                f"{where}max_memory: disk offload is not supported by the bridge; give GPU (and CPU) budgets."
            )


def check_placement(values: Any, *, what: str = "device_map") -> None:
    kinds = {_kind(v) for v in values}
    if kinds & {"disk", "meta"}:
        raise DropeLensInputError(
            f"{what} places modules on {sorted(kinds & {'disk', 'meta'})}: accelerate's disk/meta offload "
            "materialises weights only around the HF module's own forward, which TransformerBridge's components "
            "bypass. Load on GPUs (several: a map over them), on the CPU, or use a pair's offload='cpu'."
        )
    if {"cpu", "gpu"} <= kinds:
        raise DropeLensInputError(
            f"{what} mixes CPU and GPU entries, which accelerate runs as CPU offload (bypassed by TransformerBridge's "
            "components). The model does not fit the GPUs given: use quantize='nf4', more GPUs or a larger max_memory, "
            "or a pair's offload='cpu' to keep one model on the GPUs at a time."
        )


def check_realised(hf_model: Any) -> None:
    """The same checks on the map HF computed (an ``"auto"`` map spills to CPU/disk when the GPUs are full)."""
    realised = getattr(hf_model, "hf_device_map", None)
    if realised:
        check_placement(realised.values(), what="the device map HF computed")


def input_device(hf_model: Any) -> torch.device:
    """Where token ids go: the input embedding's device (its hook's execution device when dispatched)."""
    embed = hf_model.get_input_embeddings()
    return execution_device(embed)


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on: accelerate's execution device if it has a hook, else its parameters'."""
    hook = module.__dict__.get("_hf_hook") or getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _hooked(hf_model: Any) -> list[torch.nn.Module]:
    """Modules that carry an accelerate hook themselves (TransformerLens's wrappers only forward the attribute)."""
    return [m for m in hf_model.modules() if "_hf_hook" in m.__dict__]


def is_dispatched(hf_model: Any) -> bool:
    """Whether accelerate's hooks place this model's modules (a device map over several devices)."""
    return bool(_hooked(hf_model))


def place_bridge(model: Any, device: Union[str, torch.device]) -> Any:
    """Move a bridge onto ``device``; :data:`ON_ITS_MAP` puts it back on the devices of the map it loaded with.

    A dispatched model leaves its map for one device with accelerate's hooks taken off its HF modules
    (they would move inputs to the old devices) and kept; back on its map, the same hooks go back on the
    same modules, and each hook moves its module's weights onto its device again. (TransformerLens wraps
    the HF modules in place, so a fresh ``accelerate.dispatch_model`` would hook its wrappers instead.)
    """
    hf = model.original_model
    saved: Optional[dict] = getattr(hf, "drope_lens_device_map", None)
    if str(device) == ON_ITS_MAP:
        if not saved:
            raise DropeLensInputError("this model was not loaded with a device_map; give a device to place it on.")
        parked = hf.__dict__.pop("drope_lens_parked_hooks", None)
        model.cfg.n_devices = 1
        if parked:
            from accelerate.hooks import add_hook_to_module  # type: ignore[import-untyped]

            for module, hook in parked:
                add_hook_to_module(module, hook)
            model.cfg.n_devices = len(set(saved.values()))
        elif not is_dispatched(hf):
            model.to(torch.device(_as_device(next(iter(set(saved.values()))))), print_details=False)
        model.cfg.device = str(input_device(hf))
        return model
    if is_dispatched(hf):
        from accelerate.hooks import remove_hook_from_module

        parked = [(module, module.__dict__["_hf_hook"]) for module in _hooked(hf)]
        for module, _ in parked:
            remove_hook_from_module(module)
        hf.drope_lens_parked_hooks = parked
    model.cfg.n_devices = 1  # TransformerBridge.to ignores device moves of a model it counts as split
    model.to(torch.device(device), print_details=False)
    model.cfg.device = str(torch.device(device))
    return model


def _as_device(value: Any) -> str:
    return f"cuda:{value}" if isinstance(value, int) else str(value)
