"""Skip TransformerLens's all-zero Llama biases, and read the kernels' nn.Linear-layout weights.

TransformerLens gives Llama-family models zero biases (``b_Q/b_K/b_V/b_O``, the MLP's ``b_in`` /
``b_out``, the unembedding's ``b_U``) and adds them on every forward: ``addmm`` first copies the
broadcast bias into its output, and ``b_in`` is a separate add. For the unembedding that is one
extra pass over the logits; together ~4 % of a short perplexity pass on SmolLM2-135M. Installed
by the loaders, the projections here pass no bias while it is exactly zero, checked at call time,
so a bias that is later trained or edited is used as before. They multiply by the parameters as they
are (:mod:`~drope_lens.loading.hooked.weights`: no per-call copy of any matrix). Every hook fires at
the same place; configurations this does not cover (split q/k/v input,
``use_attn_in``, 4-bit weights, TransformerLens's own q/k norm, solu/layer-norm activations) use
TransformerLens's code.

On a ``HookedSAETransformer`` (SAELens) each MLP has a ``hook_in`` point that SAELens adds by storing a
lambda as the MLP's ``forward``; the gated-MLP patch calls ``hook_in`` itself and drops that lambda (which
would neither pickle nor deep-copy correctly), so the skip is installed there too.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from transformer_lens import HookedTransformer
from transformer_lens.components import GroupedQueryAttention
from transformer_lens.components.mlps.gated_mlp import GatedMLP

from drope_lens.loading.hooked.patching import Patched, base_class, patch_class
from drope_lens.loading.hooked.weights import heads_linear, linear_view


def bias_or_none(bias: torch.Tensor) -> Optional[torch.Tensor]:
    """``bias``, or None when every entry is zero (the product is then the same without it)."""
    return bias if bool(bias.any()) else None


def project_qkv(attn: Any, query_input: torch.Tensor, key_input: torch.Tensor, value_input: torch.Tensor):
    """``attn.calculate_qkv_matrices`` (hook_q/k/v included) without adding all-zero biases."""
    cfg = attn.cfg
    if cfg.use_split_qkv_input or cfg.use_attn_in or cfg.load_in_4bit or cfg.use_qk_norm:
        return base_class(attn).calculate_qkv_matrices(attn, query_input, key_input, value_input)
    grouped = isinstance(attn, GroupedQueryAttention)
    if grouped and cfg.ungroup_grouped_query_attention:  # W_K/W_V are repeated views, not parameters
        return base_class(attn).calculate_qkv_matrices(attn, query_input, key_input, value_input)
    w_k, b_k, w_v, b_v = (
        (attn._W_K, attn._b_K, attn._W_V, attn._b_V) if grouped else (attn.W_K, attn.b_K, attn.W_V, attn.b_V)
    )
    q = attn.hook_q(heads_linear(query_input, attn.W_Q, bias_or_none(attn.b_Q)))
    k = attn.hook_k(heads_linear(key_input, w_k, bias_or_none(b_k)))
    v = attn.hook_v(heads_linear(value_input, w_v, bias_or_none(b_v)))
    return q, k, v


class ZeroBiasAttention(Patched):
    """q/k/v projections on the parameters as they are, all-zero biases left out."""

    ORDER = 30
    __slots__ = ()

    def calculate_qkv_matrices(self, query_input, key_input, value_input):
        return project_qkv(self, query_input, key_input, value_input)


class ZeroBiasGatedMLP(Patched):
    """TransformerLens's GatedMLP forward on the parameters as they are, all-zero biases left out."""

    ORDER = 30
    __slots__ = ()

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> torch.Tensor:
        mlp: Any = self
        hook_in = mlp._modules.get("hook_in")  # HookedSAETransformer's (SAELens) input hook
        if hook_in is not None:
            x = hook_in(x)
        if mlp.cfg.is_layer_norm_activation():
            return GatedMLP.forward(mlp, x)
        w_gate = linear_view(mlp, "W_gate")
        if w_gate.device != x.device:
            x = x.to(w_gate.device)
        pre_act = mlp.hook_pre(F.linear(x, w_gate))
        pre_linear = mlp.hook_pre_linear(F.linear(x, linear_view(mlp, "W_in")))
        post = mlp.act_fn(pre_act) * pre_linear
        b_in = bias_or_none(mlp.b_in)
        post_act = mlp.hook_post(post if b_in is None else post + b_in)
        return F.linear(post_act, linear_view(mlp, "W_out"), bias_or_none(mlp.b_out))


class ZeroBiasUnembed(Patched):
    """TransformerLens's Unembed forward on ``W_U`` as it is, an all-zero ``b_U`` left out."""

    ORDER = 30
    __slots__ = ()

    def forward(self, residual: Float[torch.Tensor, "batch pos d_model"]) -> torch.Tensor:
        unembed: Any = self
        residual = unembed.hook_in(residual)
        return unembed.hook_out(F.linear(residual, linear_view(unembed, "W_U"), bias_or_none(unembed.b_U)))


def _is_saelens_hook_in(mlp: Any) -> bool:
    """SAELens's ``add_hook_in_to_mlp`` stored ``forward = lambda x: original_forward(mlp.hook_in(x))``."""
    fn = mlp.__dict__.get("forward")
    return "hook_in" in mlp._modules and getattr(fn, "__qualname__", "").startswith("add_hook_in_to_mlp.")


def install_zero_bias_skip(model: HookedTransformer) -> HookedTransformer:
    """Give the attention projections, gated MLPs and unembedding the zero-bias skip (idempotent).

    An instance-level ``forward`` another library put on an MLP is left in place (it would shadow
    the patch), except SAELens's ``hook_in`` wrapper, whose work the patch does itself.
    """
    for block in model.blocks:
        patch_class(block.attn, ZeroBiasAttention)
        mlp = block.mlp
        if base_class(mlp) is GatedMLP and not isinstance(mlp, ZeroBiasGatedMLP):
            if _is_saelens_hook_in(mlp):
                del mlp.__dict__["forward"]
            if "forward" not in mlp.__dict__:
                patch_class(mlp, ZeroBiasGatedMLP)
    if hasattr(model.unembed, "b_U") and "forward" not in model.unembed.__dict__:
        patch_class(model.unembed, ZeroBiasUnembed)
    return model
