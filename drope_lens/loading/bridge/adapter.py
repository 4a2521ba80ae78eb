"""TransformerLens architecture adapters whose attention is drope_lens's (:mod:`.attention`).

TransformerLens picks a bridge's adapter from the HF architecture name in its own table. drope_lens
boots through :func:`drope_lens_adapters`, which puts its subclasses there for the duration of the
boot only and restores TransformerLens's afterwards, so bridges booted elsewhere keep the stock ones.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
from transformer_lens.model_bridge.supported_architectures.llama import LlamaArchitectureAdapter

from drope_lens.loading.bridge.attention import DropeLensAttention


class DropeLensLlamaAdapter(LlamaArchitectureAdapter):
    """TransformerLens's Llama adapter with drope_lens's attention bridge."""

    _attention_bridge_cls = DropeLensAttention


#: HF architecture -> drope_lens adapter.
ADAPTERS = {"LlamaForCausalLM": DropeLensLlamaAdapter}


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
