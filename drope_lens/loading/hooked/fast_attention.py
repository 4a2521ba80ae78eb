"""Fast attention: ``scaled_dot_product_attention`` for layers whose pattern nobody reads.

TransformerLens materialises fp32 scores and a ``[batch, head, T, T]`` pattern in every layer so
``hook_attn_scores``/``hook_pattern`` can fire. When neither hook point of a layer has a hook
attached *at call time* (hooks added by the user, by ``run_with_cache``/``names_filter`` or by a
drope_lens analysis all count) and no module has been spliced in place of either (an SAE attached by
SAELens's ``HookedSAETransformer``), drope_lens computes that layer with
:func:`torch.nn.functional.scaled_dot_product_attention` instead (flash / memory-efficient kernels
where the device has them). Everything else is unchanged: ``hook_q/k/v``, ``hook_rot_q/k``,
``hook_z`` and ``hook_attn_out`` fire with the same values; GQA, right/left padding
(``attention_mask``), KV-cache decoding, NoPE's identity rotation, DroPE's q/k norms and
``softmax_scale`` (``attn_scale``) are honoured; with ``cfg.fp32_attention`` q/k/v are upcast to
float32 for the kernel and ``z`` is cast back to the value dtype (as the explicit path casts the
pattern). Non-finite q/k/z raise :class:`~drope_lens.errors.NonFiniteError` naming the layer.

Switch it off with ``model.cfg.fast_attention = False`` or, temporarily, with
:func:`~drope_lens.loading.surface.explicit_attention`. The explicit path is TransformerLens's own
sequence of steps (scores, causal/padding mask, ``hook_attn_scores``, softmax, ``hook_pattern``, ``z``),
run by :class:`FastAttention` so that both paths project the output with ``W_O`` as it is, never copied
(:mod:`drope_lens.loading.hooked.weights`). Configurations
drope_lens does not cover (ALiBi, soft-capping, attention sinks, local attention, 4-bit weights,
``use_attn_result``, additive masks …) go to TransformerLens's own forward.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer
from transformer_lens.components.abstract_attention import AbstractAttention
from transformer_lens.utilities.activation_functions import softcap_enabled

from drope_lens.loading.hooked.patching import Patched, patch_class
from drope_lens.loading.hooked.weights import linear_view
from drope_lens.loading.hooked.zero_bias import bias_or_none
from drope_lens.loading.numerics import causal_mask, check_finite, sdpa_attention
from drope_lens.loading.surface import observed


def explicit_path_covered(attn: AbstractAttention) -> bool:
    """Whether drope_lens computes ``attn`` itself (fast or explicit path) rather than TransformerLens's forward."""
    cfg = attn.cfg
    if getattr(attn, "_attention_dir_override", None) or cfg.attention_dir != "causal":
        return False
    return not (
        cfg.positional_embedding_type != "rotary"
        or cfg.load_in_4bit
        or cfg.use_attn_result
        or cfg.use_attention_sinks
        or cfg.use_logn_attn
        or cfg.clip_qkv is not None
        or softcap_enabled(cfg.attn_scores_soft_cap)
        or getattr(attn, "attn_type", "global") != "global"
        or cfg.original_architecture in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
    )


def fast_path_applies(attn: AbstractAttention) -> bool:
    """Whether ``attn`` would use the fast path on its next call (flag, config and hooks).

    A hook on ``hook_attn_scores``/``hook_pattern``, or any module spliced in place of either (e.g. an
    SAE attached by SAELens's ``HookedSAETransformer``), sends the layer down the explicit path.
    """
    return _nobody_reads_the_pattern(attn) and explicit_path_covered(attn)


def _nobody_reads_the_pattern(attn: AbstractAttention) -> bool:
    """The flag is on and neither ``hook_attn_scores`` nor ``hook_pattern`` is observed or replaced."""
    if not getattr(attn.cfg, "fast_attention", True):
        return False
    return not (observed(attn.hook_attn_scores) or observed(attn.hook_pattern))


def _sdpa_z(
    attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int, attention_mask: Optional[torch.Tensor]
) -> torch.Tensor:
    """``z [batch, q_pos, head, d_head]`` = softmax(q·k / attn_scale + causal/pad mask) · v."""
    cfg = attn.cfg
    out_dtype = v.dtype
    if cfg.fp32_attention:
        q, k, v = q.float(), k.float(), v.float()
    else:  # the explicit path's pattern is cast to v's dtype; give the kernel one dtype
        q, k = q.to(v.dtype), k.to(v.dtype)
    q_len, k_len = q.shape[1], k.shape[1]
    if q_len + offset != k_len:
        raise ValueError(f"query length {q_len} + cache offset {offset} != key length {k_len}")
    allowed = None
    if attention_mask is not None or offset:
        allowed = causal_mask(q_len, k_len, q.device)[None, None]  # [1, 1, q, k]
        if attention_mask is not None:
            allowed = allowed & attention_mask.to(q.device).bool()[:, None, None, :]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
    z = sdpa_attention(qh, kh, vh, scale=1.0 / float(attn.attn_scale), allowed=allowed).transpose(1, 2)
    if cfg.check_finite:
        check_finite(attn.layer_id, "attention output", z, q, k, dtype=cfg.dtype, fp32=cfg.fp32_attention)
    return z.to(out_dtype)


class FastAttention(Patched):
    """The sdpa fast path when nobody reads scores or pattern; otherwise TransformerLens's explicit steps.

    Both paths project the output with ``W_O`` as it is (:func:`~drope_lens.loading.hooked.weights.linear_view`:
    no per-call copy). Configurations drope_lens does not cover
    (:func:`explicit_path_covered`), ``additive_attention_mask`` and ``position_bias`` go to
    TransformerLens's own forward.
    """

    ORDER = 50
    __slots__ = ()

    def forward(
        self,
        query_input: torch.Tensor,
        key_input: torch.Tensor,
        value_input: torch.Tensor,
        past_kv_cache_entry=None,
        additive_attention_mask: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        attn: Any = self
        if additive_attention_mask is not None or position_bias is not None or not explicit_path_covered(attn):
            return super().forward(  # type: ignore[misc]
                query_input,
                key_input,
                value_input,
                past_kv_cache_entry,
                additive_attention_mask,
                attention_mask,
                position_bias,
            )
        fast = _nobody_reads_the_pattern(attn)  # the configuration is covered (checked above)
        q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
        if past_kv_cache_entry is not None:
            offset = past_kv_cache_entry.past_keys.size(1)
            k, v = past_kv_cache_entry.append(k, v)
        else:
            offset = 0
        q = attn.hook_rot_q(attn.apply_rotary(q, offset, attention_mask))
        k = attn.hook_rot_k(attn.apply_rotary(k, 0, attention_mask))  # keys are cached so no offset
        if fast:
            z = attn.hook_z(_sdpa_z(attn, q, k, v, offset, attention_mask))
        else:  # TransformerLens's explicit steps, in its order
            scores = attn.apply_causal_mask(attn.calculate_attention_scores(q, k), offset, attention_mask)
            scores = attn.hook_attn_scores(scores)
            pattern = F.softmax(scores, dim=-1)
            pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
            pattern = attn.hook_pattern(pattern).to(device=v.device, dtype=v.dtype)
            z = attn.calculate_z_scores(v, pattern)  # fires hook_z
        return _project_out(attn, z)


def _project_out(attn: Any, z: torch.Tensor) -> torch.Tensor:
    """The output projection as TransformerLens's (``use_attn_result`` off), on a view of ``W_O``."""
    w = linear_view(attn, "W_O")  # rearrange(W_O, "head d_head d_model -> d_model (head d_head)"), not copied
    b_O = bias_or_none(attn.b_O)
    if w.device != z.device:
        w, b_O = w.to(z.device), (None if b_O is None else b_O.to(z.device))
    if z.dtype != w.dtype:
        z = z.to(w.dtype)
    z = z.reshape(z.shape[0], z.shape[1], attn.cfg.d_head * attn.cfg.n_heads)
    if z.device.type == "mps":
        return torch.matmul(z, w.T) if b_O is None else torch.matmul(z, w.T) + b_O
    return F.linear(z, w, b_O)


def install_fast_attention(model: HookedTransformer) -> HookedTransformer:
    """Give every attention module the fast path (idempotent; obeys ``cfg.fast_attention``)."""
    if not hasattr(model.cfg, "fast_attention"):
        model.cfg.fast_attention = True  # type: ignore[attr-defined]  # drope_lens's flag, added here
    for block in model.blocks:
        patch_class(block.attn, FastAttention)
    return model


def fast_path_installed(model: HookedTransformer) -> bool:
    """Whether every attention module of ``model`` has the fast path installed."""
    return all(isinstance(b.attn, FastAttention) for b in model.blocks)
