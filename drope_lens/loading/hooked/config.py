"""The HookedTransformer config of a drope_lens model: TransformerLens's config plus drope_lens's facts.

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

from drope_lens.loading.facts import ZERO_SHOT_NOPE, PositionFacts, check_position_encoding
from drope_lens.loading.source import check_no_bias, check_supported, config_get, rope_scaling_of, rope_theta_of


@dataclass
class DropeLensConfig(PositionFacts, HookedTransformerConfig):
    """HookedTransformerConfig plus the positional-encoding facts drope_lens needs (:mod:`drope_lens.loading.facts`).

    ``position_encoding="nope"`` forces ``rotary_dim=0``; ``softmax_scale`` is mapped onto
    TransformerLens's divisor ``attn_scale = 1/softmax_scale``. The fields and their defaults are
    :data:`drope_lens.loading.facts.FACT_DEFAULTS` (tested).
    """

    position_encoding: str = "rope"
    nope_origin: Optional[str] = None
    drope_attention_type: Optional[str] = None
    softmax_scale: Optional[float] = None
    fp32_attention: bool = True
    check_finite: bool = True
    source: Optional[str] = None
    fast_attention: bool = True
    quantization: Optional[str] = None  # always None here: the hooked backend loads no quantized weights

    def __post_init__(self) -> None:
        check_position_encoding(self.position_encoding)
        if self.position_encoding == "nope":
            self.positional_embedding_type = "rotary"
            self.rotary_dim = 0
        if self.softmax_scale is not None:
            self.use_attn_scale = True
            self.attn_scale = 1.0 / float(self.softmax_scale)
        super().__post_init__()

    def as_nope(self, origin: str = ZERO_SHOT_NOPE) -> "DropeLensConfig":
        """A copy of this config with RoPE removed (identity rotation)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        fields.update(position_encoding="nope", nope_origin=origin, rotary_dim=0)
        return DropeLensConfig(**fields)


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
    check_no_bias(hf_config)
    n_heads = int(hf_config.num_attention_heads)
    d_model = int(hf_config.hidden_size)
    d_head = int(config_get(hf_config, "head_dim", d_model // n_heads))
    n_kv = int(config_get(hf_config, "num_key_value_heads", n_heads))
    fields: dict[str, Any] = dict(
        model_name=model_name,
        d_model=d_model,
        d_head=d_head,
        n_heads=n_heads,
        d_mlp=int(hf_config.intermediate_size),
        n_layers=int(hf_config.num_hidden_layers),
        n_ctx=int(n_ctx or config_get(hf_config, "max_position_embeddings", 2048)),
        eps=float(config_get(hf_config, "rms_norm_eps", 1e-6)),
        d_vocab=int(hf_config.vocab_size),
        act_fn=str(config_get(hf_config, "hidden_act", "silu")),
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
    scaling = rope_scaling_of(hf_config)
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
