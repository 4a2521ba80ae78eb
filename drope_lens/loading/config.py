"""A HookedTransformer config that knows whether the model uses RoPE or not.

TransformerLens has no "no positional embedding" type. :class:`DropeLensConfig` keeps
``positional_embedding_type="rotary"`` (so ``hook_rot_q``/``hook_rot_k`` exist for every model and
analyses can treat RoPE and NoPE models alike) and, for ``position_encoding="nope"``, sets
``rotary_dim=0``: the rotary code then rotates an empty slice and passes every channel through
unchanged, for every sequence length and KV-cache offset (``hook_rot_q == hook_q``). Overwriting
the sin/cos buffers instead would be unsound: TransformerLens rebuilds them with real RoPE when a
sequence longer than its initial cache (2048) arrives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
from transformer_lens import HookedTransformerConfig

from drope_lens.errors import UnsupportedModelError

#: HF ``architectures`` / ``model_type`` values drope_lens can load.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_MODEL_TYPES = ("llama", "llama_drope", "smollm", "smollm2")
#: DroPE ``attention_type`` values (SakanaAI/DroPE ``custom_models/attention.py``).
DROPE_ATTENTION_TYPES = ("nope", "qk_norm_nope", "q_norm_nope", "k_norm_nope")

ZERO_SHOT_NOPE = "zero-shot NoPE (RoPE removed, not recalibrated)"
DROPE_CHECKPOINT = "DroPE checkpoint (RoPE removed, recalibrated)"


@dataclass
class DropeLensConfig(HookedTransformerConfig):
    """HookedTransformerConfig plus the positional-encoding facts drope_lens needs.

    Attributes:
        position_encoding: ``"rope"`` or ``"nope"``. ``"nope"`` forces ``rotary_dim=0``.
        nope_origin: for NoPE models, where the NoPE-ness comes from (a recalibrated DroPE
            checkpoint, or RoPE dropped zero-shot from a RoPE model).
        drope_attention_type: the DroPE ``attention_type`` (``nope`` or a q/k-norm variant).
        softmax_scale: DroPE's attention logit multiplier, if the checkpoint sets one
            (mapped onto TransformerLens's divisor ``attn_scale = 1/softmax_scale``).
        fp32_attention: compute attention scores and softmax in float32 whatever the model dtype.
        check_finite: raise :class:`~drope_lens.errors.NonFiniteError` when attention scores
            contain NaN/inf (before TransformerLens would silently zero NaN patterns).
        source: where the weights came from (hub id, folder, "in-memory", "embedded").
        fast_attention: compute a layer's attention with ``scaled_dot_product_attention`` when no
            hook reads its ``hook_attn_scores``/``hook_pattern`` (see
            :mod:`drope_lens.loading.fast_attention`); ``False`` = always the explicit path.
    """

    position_encoding: str = "rope"
    nope_origin: Optional[str] = None
    drope_attention_type: Optional[str] = None
    softmax_scale: Optional[float] = None
    fp32_attention: bool = True
    check_finite: bool = True
    source: Optional[str] = None
    fast_attention: bool = True

    def __post_init__(self) -> None:
        if self.position_encoding not in ("rope", "nope"):
            raise ValueError(f"position_encoding must be 'rope' or 'nope', got {self.position_encoding!r}")
        if self.position_encoding == "nope":
            self.positional_embedding_type = "rotary"
            self.rotary_dim = 0
        if self.softmax_scale is not None:
            self.use_attn_scale = True
            self.attn_scale = 1.0 / float(self.softmax_scale)
        super().__post_init__()

    @property
    def is_nope(self) -> bool:
        return self.position_encoding == "nope"

    def describe(self, attention: bool = False) -> str:
        """One line saying what this model is, e.g. for labels and reports.

        ``attention=True`` appends the attention path (fast sdpa or explicit).
        """
        what = (
            f"{self.model_name} (RoPE, theta={self.rotary_base:g})"
            if not self.is_nope
            else f"{self.model_name} ({self.nope_origin or 'NoPE'})"
        )
        if attention:
            what += f"; attention: {'fast (sdpa when no pattern hook)' if self.fast_attention else 'explicit'}"
        return what

    def as_nope(self, origin: str = ZERO_SHOT_NOPE) -> "DropeLensConfig":
        """A copy of this config with RoPE removed (identity rotation)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        fields.update(position_encoding="nope", nope_origin=origin, rotary_dim=0)
        return DropeLensConfig(**fields)


def _get(hf_config: Any, name: str, default: Any = None) -> Any:
    try:
        value = getattr(hf_config, name)
    except Exception:  # transformers 5 per-layer fields raise on global reads
        return default
    return default if value is None else value


def rope_theta_of(hf_config: Any) -> float:
    """``rope_theta`` from a transformers 4.x (top level) or 5.x (``rope_parameters``) config."""
    theta = _get(hf_config, "rope_theta")
    if theta is None:
        params = _get(hf_config, "rope_parameters") or {}
        theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else 10000.0)


def _rope_scaling_of(hf_config: Any) -> dict:
    scaling = _get(hf_config, "rope_scaling") or _get(hf_config, "rope_parameters") or {}
    return scaling if isinstance(scaling, dict) else {}


def check_supported(hf_config: Any) -> None:
    """Raise :class:`UnsupportedModelError` unless ``hf_config`` is a Llama-family causal LM."""
    archs = list(_get(hf_config, "architectures", []) or [])
    model_type = _get(hf_config, "model_type", "")
    if model_type in SUPPORTED_MODEL_TYPES or any(a in SUPPORTED_ARCHITECTURES for a in archs):
        return
    raise UnsupportedModelError(
        f"drope_lens supports Llama-family causal LMs ({', '.join(SUPPORTED_ARCHITECTURES)}; "
        f"model_type in {SUPPORTED_MODEL_TYPES}: Llama-2/3, SmolLM/SmolLM2, SakanaAI DroPE), "
        f"got model_type={model_type!r}, architectures={archs}. Use a Llama-architecture checkpoint."
    )


def config_from_hf(
    hf_config: Any,
    *,
    model_name: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    position_encoding: str = "rope",
    n_ctx: Optional[int] = None,
    **overrides: Any,
) -> DropeLensConfig:
    """Build a :class:`DropeLensConfig` from a Hugging Face Llama-family config.

    Honours GQA (``num_key_value_heads``), an explicit ``head_dim``, ``rope_theta`` in either
    transformers layout, Llama-3 rope scaling, tied embeddings and the RMSNorm epsilon.
    """
    check_supported(hf_config)
    if _get(hf_config, "attention_bias", False) or _get(hf_config, "mlp_bias", False):
        raise UnsupportedModelError(
            "This Llama checkpoint uses attention/MLP biases, which drope_lens does not convert. "
            "Use a bias-free Llama-family model (Llama-2/3, SmolLM2, DroPE)."
        )
    n_heads = int(hf_config.num_attention_heads)
    d_model = int(hf_config.hidden_size)
    d_head = int(_get(hf_config, "head_dim", d_model // n_heads))
    n_kv = int(_get(hf_config, "num_key_value_heads", n_heads))
    fields: dict[str, Any] = dict(
        model_name=model_name,
        d_model=d_model,
        d_head=d_head,
        n_heads=n_heads,
        d_mlp=int(hf_config.intermediate_size),
        n_layers=int(hf_config.num_hidden_layers),
        n_ctx=int(n_ctx or _get(hf_config, "max_position_embeddings", 2048)),
        eps=float(_get(hf_config, "rms_norm_eps", 1e-6)),
        d_vocab=int(hf_config.vocab_size),
        act_fn=str(_get(hf_config, "hidden_act", "silu")),
        n_key_value_heads=n_kv if n_kv != n_heads else None,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        rotary_base=rope_theta_of(hf_config),
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=True,
        default_prepend_bos=True,
        dtype=dtype,
        device=str(device),
        position_encoding=position_encoding,
    )
    scaling = _rope_scaling_of(hf_config)
    if (scaling.get("rope_type") or scaling.get("type") or "").lower() == "llama3":
        fields.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=scaling.get("original_max_position_embeddings", fields["n_ctx"]),
            NTK_by_parts_low_freq_factor=scaling.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=scaling.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=scaling.get("factor", 1.0),
        )
    fields.update(overrides)
    return DropeLensConfig(**fields)
