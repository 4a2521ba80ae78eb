"""The TransformerBridge config of a drope_lens model: TransformerLens's config plus drope_lens's facts."""

from __future__ import annotations

from typing import Any

from transformer_lens.config import TransformerBridgeConfig

from drope_lens.loading.facts import FACT_DEFAULTS, PositionFacts, check_position_encoding


class DropeLensBridgeConfig(PositionFacts, TransformerBridgeConfig):
    """``TransformerBridgeConfig`` with drope_lens's facts (:mod:`drope_lens.loading.facts`) as attributes."""

    def __repr__(self) -> str:
        facts = ", ".join(f"{name}={getattr(self, name, None)!r}" for name in FACT_DEFAULTS)
        return f"DropeLensBridgeConfig({facts})\n" + super().__repr__()


def adopt_config(cfg: TransformerBridgeConfig, **facts: Any) -> DropeLensBridgeConfig:
    """Give the config a booted bridge made (in place) drope_lens's facts: their defaults, then ``facts``.

    The bridge builds its config inside ``boot_transformers``; its class is widened here to the
    subclass, which adds methods only (no state), so the object and every reference to it stay.
    """
    unknown = set(facts) - set(FACT_DEFAULTS) - {"rope_theta"}
    if unknown:
        raise TypeError(f"unknown drope_lens config facts: {sorted(unknown)}")
    check_position_encoding(facts.get("position_encoding", "rope"))
    cfg.__class__ = DropeLensBridgeConfig
    for name, value in {**FACT_DEFAULTS, **facts}.items():
        setattr(cfg, name, value)
    return cfg  # type: ignore[return-value]  # its class is DropeLensBridgeConfig now
