"""drope_lens's attention on the TransformerBridge: RoPE or none, DroPE's q/k norms, fp32, no hidden NaN.

TransformerLens's :class:`PositionEmbeddingsAttentionBridge` re-implements a Llama-family attention
and applies RoPE from whatever cos/sin it is handed; in compatibility mode it computes scores in q's
dtype and replaces NaN in the pattern by 0. :class:`DropeLensAttention` keeps its hook points, their
shapes and TransformerLens's hook conventions, and computes the attention the way the hooked backend
does:

* ``hook_q``/``hook_k``/``hook_v`` fire on the projections (``[batch, pos, head, d_head]`` to hooks);
  DroPE's full-width q/k RMSNorm (``drope_q_norm``/``drope_k_norm``) comes after them, so ``hook_q``
  is pre-norm as on the hooked backend; an architecture's own per-head norm (Qwen3) follows;
* RoPE from the model's rotary module when ``cfg.position_encoding == "rope"``; for NoPE/DroPE the
  rotation is skipped outright, at every position and cache offset (``hook_rot_q == hook_q`` normed);
  ``hook_rot_k`` sees the cached and the new keys, as on the hooked backend (and as
  :class:`~drope_lens.hooks.positions.PositionTracker` expects);
* scores ``q·kᵀ · scaling`` in float32 (``cfg.fp32_attention``), ``scaling`` being the HF module's
  (DroPE's ``softmax_scale`` is written there at load), checked for NaN/inf before masking
  (:class:`~drope_lens.errors.NonFiniteError`, never zeroed); ``hook_attn_scores`` sees the masked
  scores, ``hook_pattern`` the softmax, as in HookedTransformer;
* **fast path**: when neither ``hook_attn_scores`` nor ``hook_pattern`` has a hook at call time (and
  ``cfg.fast_attention``), the layer calls sdpa instead of materialising ``[head, T, T]`` patterns (and
  returns no attention weights to HF's ``output_attentions``, which the bridge sets on every
  ``run_with_cache``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from transformer_lens.model_bridge.generalized_components import PositionEmbeddingsAttentionBridge

from drope_lens.loading.numerics import (
    causal_mask,
    check_finite,
    repeat_kv_heads,
    sdpa_attention,
)
from drope_lens.loading.surface import observed

#: The names HF decoder layers have passed their KV cache under (transformers 5.x: ``cache``).
CACHE_KWARGS = ("cache", "past_key_values", "layer_past")


def _allowed(
    mask: Optional[torch.Tensor], batch: int, q_len: int, k_len: int, device: torch.device
) -> Optional[torch.Tensor]:
    """``[batch, 1, q, k]`` True where a query may attend, from HF's mask (4D additive/bool, or 2D
    keys); None for plain causal attention without cache offset (the kernel's ``is_causal``)."""
    if mask is None:
        return None if q_len == k_len else causal_mask(q_len, k_len, device)[None, None].expand(batch, 1, -1, -1)
    mask = mask.to(device)
    if mask.ndim == 4:
        mask = mask[..., -q_len:, :k_len]
        return mask if mask.dtype == torch.bool else mask >= 0
    keys = mask[:, :k_len].bool()[:, None, None, :]  # [batch, 1, 1, k]
    return causal_mask(q_len, k_len, device)[None, None] & keys


class DropeLensAttention(PositionEmbeddingsAttentionBridge):
    """A Llama-family attention bridge with drope_lens's positional encoding and numerics (module docstring)."""

    def _validate_submodule_declarations(self, hf_attn: torch.nn.Module) -> None:
        super()._validate_submodule_declarations(hf_attn)
        if any(getattr(self.config, f, False) for f in ("use_split_qkv_input", "use_attn_in")):
            raise NotImplementedError(
                "use_split_qkv_input / use_attn_in are not supported by drope_lens's bridge attention; "
                "use the hooked backend (TransformerLens < 4) for split-QKV inputs."
            )

    #: The model's own config (``bridge.cfg``), set at load: TransformerLens gives every component a copy
    #: of the config, so drope_lens's run-time flags (``position_encoding``, ``fast_attention``,
    #: ``fp32_attention``, ``check_finite``) are read from the one object users change.
    model_cfg: Any = None

    @property
    def facts(self) -> Any:
        return self.model_cfg if self.model_cfg is not None else self.config

    def _fast(self, kwargs: dict) -> bool:
        return (
            bool(getattr(self.facts, "fast_attention", True))
            and not observed(self.hook_attn_scores)
            and not observed(self.hook_pattern)
        )  # HF's output_attentions is not a reason: the bridge's run_with_cache always asks for it

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hf_attn: Any = self.original_component
        if hf_attn is None:
            raise RuntimeError(f"Original component not set for {self.name}.")
        hidden = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
        position_embeddings = kwargs.pop("position_embeddings", None)
        attention_mask = kwargs.pop("attention_mask", None)
        cfg = self.facts
        fp32 = bool(getattr(cfg, "fp32_attention", True))
        layer = int(getattr(hf_attn, "layer_idx", -1))

        hidden = self.hook_in(hidden)
        batch, q_len = hidden.shape[:2]
        d_head = int(hf_attn.head_dim)
        q, k, v = self.q(hidden), self.k(hidden), self.v(hidden)  # hook_q/k/v (pre-norm)
        if getattr(hf_attn, "drope_q_norm", None) is not None:
            q = hf_attn.drope_q_norm(q)
        if getattr(hf_attn, "drope_k_norm", None) is not None:
            k = hf_attn.drope_k_norm(k)
        q, k, v = (t.view(batch, q_len, -1, d_head) for t in (q, k, v))
        if "q_norm" in self.submodules:  # the architecture's own per-head norm (Qwen3)
            q = self.hook_q_normed(self.q_norm(q))
        if "k_norm" in self.submodules:
            k = self.hook_k_normed(self.k_norm(k))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
        if not getattr(cfg, "is_nope", False):
            q, k = self._rotate(q, k, position_embeddings)
        q = self.hook_rot_q(q)
        cache = next((kwargs[n] for n in CACHE_KWARGS if kwargs.get(n) is not None), None)
        if cache is not None:  # the cache keeps rotated keys, without hook_rot_k's edits
            k, v = cache.update(k, v, hf_attn.layer_idx)
        k = self.hook_rot_k(k)  # cached + new keys, as on the hooked backend
        k_len = k.shape[2]
        allowed = _allowed(attention_mask, batch, q_len, k_len, q.device)
        out_dtype = v.dtype
        if fp32:
            q, k, v = q.float(), k.float(), v.float()
        scale = float(hf_attn.scaling)
        pattern = None
        if self._fast(kwargs):
            z = sdpa_attention(q, k, v.to(q.dtype), scale=scale, allowed=allowed)
            if getattr(cfg, "check_finite", True):
                check_finite(layer, "attention output", z, q, k, dtype=out_dtype, fp32=fp32)
        else:
            n_heads = q.shape[1]
            scores = torch.matmul(q, repeat_kv_heads(k, n_heads).transpose(-1, -2)) * scale
            if getattr(cfg, "check_finite", True):
                check_finite(layer, "attention scores", scores, q, k, dtype=out_dtype, fp32=fp32)
            if allowed is None:
                allowed = causal_mask(q_len, k_len, q.device)[None, None]
            scores = self.hook_attn_scores(scores.masked_fill(~allowed, float("-inf")))
            pattern = torch.softmax(scores, dim=-1)
            dead = ~allowed.any(-1, keepdim=True)
            if bool(dead.any()):  # rows with no key to see (left-padding pads): zeros, not NaN
                pattern = pattern.masked_fill(dead, 0.0)
            pattern = self.hook_pattern(pattern)
            z = torch.matmul(pattern.to(v.dtype), repeat_kv_heads(v, n_heads).to(v.dtype))
        z = z.transpose(1, 2).reshape(batch, q_len, -1)
        o_weight = getattr(getattr(self.o, "original_component", None), "weight", None)
        target = o_weight.dtype if isinstance(o_weight, torch.Tensor) and o_weight.is_floating_point() else out_dtype
        out = self.hook_out(self.o(z.to(target)))  # hook_z is o.hook_in
        return out, pattern

    def _rotate(self, q: torch.Tensor, k: torch.Tensor, position_embeddings: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if position_embeddings is None:
            raise RuntimeError(
                f"{self.name}: a RoPE model's attention got no position embeddings; RoPE cannot be applied."
            )
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos, sin = self._apply_position_embedding_hooks(position_embeddings)
        rot = cos.shape[-1]
        if rot < q.shape[-1]:  # partial rotary: rotate the first `rot` dims only
            q_r, k_r = apply_rotary_pos_emb(q[..., :rot], k[..., :rot], cos, sin)
            return torch.cat([q_r, q[..., rot:]], -1), torch.cat([k_r, k[..., rot:]], -1)
        return apply_rotary_pos_emb(q, k, cos, sin)
