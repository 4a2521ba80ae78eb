"""What drope_lens knows about a model beyond TransformerLens's config: its positional encoding and numerics.

Both backends' configs carry these facts as attributes (:class:`~drope_lens.loading.hooked.config.DropeLensConfig`
on HookedTransformer, :class:`~drope_lens.loading.bridge.config.DropeLensBridgeConfig` on
TransformerBridge) and share the methods of :class:`PositionFacts`:

* ``position_encoding``: ``"rope"`` or ``"nope"`` (the identity rotation, for DroPE and zero-shot twins);
* ``nope_origin``: where the NoPE-ness comes from (:data:`ZERO_SHOT_NOPE`, :data:`DROPE_CHECKPOINT`, or
  a recalibration label);
* ``drope_attention_type`` / ``softmax_scale``: the DroPE checkpoint's variant and logit multiplier;
* ``fp32_attention``: attention scores and softmax in float32 whatever the model dtype;
* ``check_finite``: raise :class:`~drope_lens.errors.NonFiniteError` on NaN/inf attention, never zero it;
* ``fast_attention``: the sdpa kernel in layers whose scores/pattern nobody hooks;
* ``source``: where the weights came from; ``rope_theta``: the RoPE base, for labels;
* ``quantization``: ``None`` (weights in the model dtype) or the bitsandbytes format of the linear
  weights (``"nf4"``, ``"fp4"``, ``"int8"``; :data:`QUANTIZATIONS`), shown by :meth:`PositionFacts.describe`.

The flags are read at run time, so ``model.cfg.fast_attention = False`` takes effect at once.
"""

from __future__ import annotations

from typing import Any, Optional

ZERO_SHOT_NOPE = "zero-shot NoPE (RoPE removed, not recalibrated)"
DROPE_CHECKPOINT = "DroPE checkpoint (RoPE removed, recalibrated)"

#: Every fact and its default.
FACT_DEFAULTS: dict[str, Any] = {
    "position_encoding": "rope",
    "nope_origin": None,
    "drope_attention_type": None,
    "softmax_scale": None,
    "fp32_attention": True,
    "check_finite": True,
    "source": None,
    "fast_attention": True,
    "quantization": None,
}

#: ``quantize=`` values: bitsandbytes 4-bit NF4 (double quantization, as the study's NF4 runs), 4-bit FP4
#: (bitsandbytes' default 4-bit type, the study's later runs), LLM.int8().
QUANTIZATIONS = ("nf4", "fp4", "int8")


def check_quantization(value: Optional[str], *, what: str = "quantize") -> Optional[str]:
    """``value`` if it is None or one of :data:`QUANTIZATIONS` (``"none"`` means None), else a clear error."""
    from drope_lens.errors import DropeLensInputError

    if value is None or value == "none":
        return None
    if value not in QUANTIZATIONS:
        raise DropeLensInputError(f"{what} must be one of {QUANTIZATIONS} or None, got {value!r}.")
    return value


def check_position_encoding(value: str) -> None:
    if value not in ("rope", "nope"):
        raise ValueError(f"position_encoding must be 'rope' or 'nope', got {value!r}")


class PositionFacts:
    """Methods shared by both backends' configs (the attributes are listed in the module docstring)."""

    position_encoding: str
    nope_origin: Optional[str]
    fast_attention: bool
    quantization: Optional[str]
    model_name: str

    @property
    def is_nope(self) -> bool:
        return self.position_encoding == "nope"

    def theta(self) -> Optional[float]:
        """The RoPE base (``rope_theta``) of a RoPE model, None for NoPE."""
        if self.is_nope:
            return None
        value = getattr(self, "rope_theta", None) or getattr(self, "rotary_base", None)
        return float(value) if value is not None else None

    def describe(self, attention: bool = False) -> str:
        """One line saying what this model is, e.g. for labels and reports: the model name (with its
        quantization, e.g. ``"… nf4"``), then RoPE and its base, or where the NoPE-ness comes from.

        ``attention=True`` appends the attention path (fast sdpa or explicit).
        """
        quantization = getattr(self, "quantization", None)
        name = f"{self.model_name} {quantization}" if quantization else str(self.model_name)
        if self.is_nope:
            what = f"{name} ({self.nope_origin or 'NoPE'})"
        else:
            theta = self.theta()
            what = f"{name} (RoPE, theta={theta:g})" if theta else f"{name} (RoPE)"
        if attention:
            what += f"; attention: {'fast (sdpa when no pattern hook)' if self.fast_attention else 'explicit'}"
        return what
