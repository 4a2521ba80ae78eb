"""TransformerLens architecture adapters whose attention is drope_lens's (:mod:`.attention`).

TransformerLens picks a bridge's adapter from the HF architecture name in its own table. drope_lens
boots through :func:`drope_lens_adapters`, which puts its subclasses there for the duration of the
boot only and restores TransformerLens's afterwards, so bridges booted elsewhere keep the stock ones.

Each adapter is TransformerLens's own for the architecture (its component mapping, norms, MLP and
config defaults) with the attention built here: the q/k/v/o projections (Qwen2's q/k/v biases live in
the HF ``Linear`` modules, so they are kept as they are) and, for Qwen3, the architecture's own
per-head ``q_norm``/``k_norm``, which :class:`~.attention.DropeLensAttention` applies after the head
split. TransformerLens 3.9 and 4.x build these attentions through different seams (a class
attribute, a helper, or a hard-coded class), so :meth:`_DropeLensAttentionSeam._build_attention_bridge`
builds it itself for both.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
from transformer_lens.model_bridge.generalized_components import LinearBridge, RMSNormalizationBridge
from transformer_lens.model_bridge.supported_architectures.llama import LlamaArchitectureAdapter
from transformer_lens.model_bridge.supported_architectures.qwen2 import Qwen2ArchitectureAdapter
from transformer_lens.model_bridge.supported_architectures.qwen3 import Qwen3ArchitectureAdapter

from drope_lens.loading.bridge.attention import DropeLensAttention


class _DropeLensAttentionSeam:
    """Builds the ``self_attn`` bridge as :class:`DropeLensAttention` (per-head q/k norms where declared)."""

    _attention_bridge_cls = DropeLensAttention
    #: the architecture's own per-head ``q_norm``/``k_norm`` modules (Qwen3), applied after the head split
    _per_head_qk_norm = False
    cfg: Any

    def _build_attention_bridge(self, optional: bool = False) -> DropeLensAttention:
        submodules: dict[str, Any] = {name: LinearBridge(name=f"{name}_proj") for name in ("q", "k", "v", "o")}
        if self._per_head_qk_norm:
            submodules["q_norm"] = RMSNormalizationBridge(name="q_norm", config=self.cfg)
            submodules["k_norm"] = RMSNormalizationBridge(name="k_norm", config=self.cfg)
        return DropeLensAttention(
            name="self_attn",
            config=self.cfg,
            optional=optional,
            submodules=submodules,
            requires_attention_mask=True,
            requires_position_embeddings=True,
        )


class DropeLensLlamaAdapter(_DropeLensAttentionSeam, LlamaArchitectureAdapter):
    """TransformerLens's Llama adapter with drope_lens's attention bridge."""


class DropeLensQwen2Adapter(_DropeLensAttentionSeam, Qwen2ArchitectureAdapter):
    """TransformerLens's Qwen2 adapter with drope_lens's attention bridge (q/k/v biases in the HF projections)."""


class DropeLensQwen3Adapter(_DropeLensAttentionSeam, Qwen3ArchitectureAdapter):
    """TransformerLens's Qwen3 adapter with drope_lens's attention bridge and Qwen3's per-head q/k norms."""

    _per_head_qk_norm = True


#: HF architecture -> drope_lens adapter.
ADAPTERS: dict[str, type[Any]] = {
    "LlamaForCausalLM": DropeLensLlamaAdapter,
    "Qwen2ForCausalLM": DropeLensQwen2Adapter,
    "Qwen3ForCausalLM": DropeLensQwen3Adapter,
}


@contextlib.contextmanager
def drope_lens_adapters() -> Iterator[None]:
    """drope_lens's adapters in TransformerLens's table inside the block (restored after, also on errors)."""
    table = ArchitectureAdapterFactory._adapters
    saved = {arch: table.get(arch) for arch in ADAPTERS}
    table.update(ADAPTERS)
    try:
        yield
    finally:
        for arch, adapter in saved.items():
            if adapter is None:
                table.pop(arch, None)
            else:
                table[arch] = adapter
