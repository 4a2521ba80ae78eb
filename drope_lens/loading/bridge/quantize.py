"""Quantized weights through bitsandbytes' HF integration: NF4 / FP4 (4-bit) and LLM.int8().

The linear layers of the decoder (q/k/v/o and the MLP) are stored quantized by transformers'
``BitsAndBytesConfig`` as the HF model loads; the embedding, the norms and ``lm_head`` stay in the
model dtype (transformers' defaults, as in the study). Each quantized layer dequantizes its weight for
every matmul, so every hook sees ordinary floating-point activations in the compute dtype, and
drope_lens's attention then computes its scores and softmax in float32 as for any other model.

* ``"nf4"``: 4-bit NormalFloat with double quantization (the quantization constants quantized
  again), the study's NF4 setting (``run_llama_comparison.py``, ``run_phase_metrics.py``);
* ``"fp4"``: bitsandbytes' default 4-bit type without double quantization, the study's later "4-bit"
  runs (``BitsAndBytesConfig(load_in_4bit=True)`` with no ``bnb_4bit_quant_type``);
* ``"int8"``: LLM.int8() (outlier features in 16-bit).

The compute dtype is the model's ``dtype`` (float32 by default; the study computed in float16:
``dtype="float16"``). On CPUs with AVX512-BF16, bitsandbytes 0.50 would repack 4-bit weights on the
first forward pass for a fused kernel that computes in bfloat16 whatever the compute dtype (and needs
every output width divisible by 32); drope_lens keeps bitsandbytes' portable path instead
(:func:`honour_compute_dtype`), so a model's numbers do not depend on the CPU's instruction set.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from drope_lens.errors import DropeLensInputError
from drope_lens.loading.facts import QUANTIZATIONS

INSTALL = "pip install 'bitsandbytes>=0.48' accelerate  (the 'quant' extra: pip install 'drope-lens[quant]')"


def check_available() -> None:
    """Raise :class:`DropeLensInputError` saying what to install when bitsandbytes or accelerate is missing."""
    import importlib.util

    missing = [name for name in ("bitsandbytes", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise DropeLensInputError(f"quantized loading needs {' and '.join(missing)}: {INSTALL}")


class _Once(logging.Filter):
    """Let a repeated log message through once (bitsandbytes logs LLM.int8()'s input cast on every matmul)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


_INT8_LOGGER = "bitsandbytes.autograd._functions"


def _log_int8_cast_once() -> None:
    logger = logging.getLogger(_INT8_LOGGER)
    if not any(isinstance(f, _Once) for f in logger.filters):
        logger.addFilter(_Once())


def bnb_config(quantize: str, compute_dtype: torch.dtype) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``quantize`` (one of :data:`QUANTIZATIONS`)."""
    from transformers import BitsAndBytesConfig

    if quantize not in QUANTIZATIONS:
        raise DropeLensInputError(f"quantize must be one of {QUANTIZATIONS} or None, got {quantize!r}.")
    if quantize == "int8":
        _log_int8_cast_once()
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantize,
        bnb_4bit_use_double_quant=quantize == "nf4",
        bnb_4bit_compute_dtype=compute_dtype,
    )


def quantization_of(hf_model: Any) -> Optional[str]:
    """``"nf4"``, ``"fp4"``, ``"int8"`` for an HF model loaded through bitsandbytes, else None."""
    qc = getattr(hf_model.config, "quantization_config", None)
    if qc is None:
        return None
    get = qc.get if isinstance(qc, dict) else lambda name, default=None: getattr(qc, name, default)
    method = get("quant_method", "")
    method = str(getattr(method, "value", method))
    if method != "bitsandbytes":
        raise DropeLensInputError(f"drope_lens loads bitsandbytes quantization only; this model uses {method!r}.")
    if get("load_in_8bit", False):
        return "int8"
    if get("load_in_4bit", False):
        return str(get("bnb_4bit_quant_type", "fp4"))
    return None


def is_quantized_parameter(p: torch.Tensor) -> bool:
    """A bitsandbytes-owned weight (``Params4bit``, ``Int8Params``): packed storage, never to be cast."""
    return type(p).__name__ in ("Params4bit", "Int8Params") or hasattr(p, "quant_state") or hasattr(p, "SCB")


def honour_compute_dtype(hf_model: Any) -> None:
    """Keep every 4-bit layer on bitsandbytes' portable path (dequantize, then a matmul in the compute dtype).

    bitsandbytes 0.50 otherwise repacks a layer's weight in place on its first CPU forward pass, where the
    CPU has AVX512-BF16, for a kernel that computes in bfloat16 (and asserts that the layer's output width
    is a multiple of 32). On CUDA the flag is never consulted.
    """
    for module in hf_model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def release_freed_host_memory() -> None:
    """Hand memory freed while quantizing back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    bitsandbytes quantizes each weight through temporary copies; with transformers' threaded loading, glibc
    keeps what those threads freed in their arenas, which left up to ~1.7 GB of a 0.55B-parameter NF4 CPU load
    resident after loading (measured, ``benchmarks/memory.py``).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
