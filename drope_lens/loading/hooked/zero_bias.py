"""Skip TransformerLens's all-zero Llama biases.

TransformerLens gives Llama-family models zero biases (``b_Q/b_K/b_V/b_O``, the MLP's ``b_in`` /
``b_out``, the unembedding's ``b_U``) and adds them on every forward: ``addmm`` first copies the
broadcast bias into its output, and ``b_in`` is a separate add. For the unembedding that is one
extra pass over the logits; together ~4 % of a short perplexity pass on SmolLM2-135M. Installed
by the loaders, the projections here pass no bias while it is exactly zero, checked at call time,
so a bias that is later trained or edited is used as before. Every hook fires with the same
tensor; configurations this does not cover (split q/k/v input, ``use_attn_in``, 4-bit weights,
TransformerLens's own q/k norm, solu/layer-norm activations) use TransformerLens's code.
"""

from __future__ import annotations

from typing import Optional

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from transformer_lens import HookedTransformer
from transformer_lens.components import GroupedQueryAttention
from transformer_lens.components.mlps.gated_mlp import GatedMLP

from drope_lens.loading.hooked.patching import patch_method

_SKIP = "_drope_lens_zero_bias_skip"


def bias_or_none(bias: torch.Tensor) -> Optional[torch.Tensor]:
    """``bias``, or None when every entry is zero (the product is then the same without it)."""
    return bias if bool(bias.any()) else None


def _heads_linear(
    x: Float[torch.Tensor, "batch pos d_model"],
    w: Float[torch.Tensor, "head d_model d_head"],
    b: Float[torch.Tensor, "head d_head"],
) -> Float[torch.Tensor, "batch pos head d_head"]:
    """TransformerLens's ``simple_attn_linear`` (same layout and product), minus a zero bias."""
    if x.device != w.device:
        x = x.to(w.device)
    w2 = einops.rearrange(w, "head d_model d_head -> (head d_head) d_model")
    bias = bias_or_none(b)
    out = F.linear(x, w2, None if bias is None else bias.reshape(-1).to(w.device))
    return out.reshape(x.shape[0], x.shape[1], w.shape[0], w.shape[2])


def project_qkv(attn, query_input: torch.Tensor, key_input: torch.Tensor, value_input: torch.Tensor):
    """``attn.calculate_qkv_matrices`` (hook_q/k/v included) without adding all-zero biases."""
    cfg = attn.cfg
    if cfg.use_split_qkv_input or cfg.use_attn_in or cfg.load_in_4bit or cfg.use_qk_norm:
        return type(attn).calculate_qkv_matrices(attn, query_input, key_input, value_input)
    grouped = isinstance(attn, GroupedQueryAttention) and not cfg.ungroup_grouped_query_attention
    w_k, b_k, w_v, b_v = (
        (attn._W_K, attn._b_K, attn._W_V, attn._b_V) if grouped else (attn.W_K, attn.b_K, attn.W_V, attn.b_V)
    )
    q = attn.hook_q(_heads_linear(query_input, attn.W_Q, attn.b_Q))
    k = attn.hook_k(_heads_linear(key_input, w_k, b_k))
    v = attn.hook_v(_heads_linear(value_input, w_v, b_v))
    return q, k, v


def _gated_mlp_forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> torch.Tensor:
    if self.cfg.is_layer_norm_activation():
        return type(self).forward(self, x)
    if self.W_gate.device != x.device:
        x = x.to(self.W_gate.device)
    pre_act = self.hook_pre(F.linear(x, self.W_gate.T.contiguous()))
    pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T.contiguous()))
    post = self.act_fn(pre_act) * pre_linear
    b_in = bias_or_none(self.b_in)
    post_act = self.hook_post(post if b_in is None else post + b_in)
    return F.linear(post_act, self.W_out.T.contiguous(), bias_or_none(self.b_out))


def _unembed_forward(self, residual: Float[torch.Tensor, "batch pos d_model"]) -> torch.Tensor:
    residual = self.hook_in(residual)
    return self.hook_out(F.linear(residual, self.W_U.T.contiguous(), bias_or_none(self.b_U)))


def install_zero_bias_skip(model: HookedTransformer) -> HookedTransformer:
    """Give the attention projections, gated MLPs and unembedding the zero-bias skip (idempotent)."""
    for block in model.blocks:
        patch_method(block.attn, "calculate_qkv_matrices", project_qkv, _SKIP, keep_existing=True)
        if type(block.mlp) is GatedMLP:
            patch_method(block.mlp, "forward", _gated_mlp_forward, _SKIP, keep_existing=True)
    if hasattr(model.unembed, "b_U"):
        patch_method(model.unembed, "forward", _unembed_forward, _SKIP, keep_existing=True)
    return model
