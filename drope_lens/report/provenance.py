"""What produced a set of numbers: package versions, models, configs, numerics, seeds, options."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

PACKAGES = ("drope_lens", "torch", "transformer-lens", "transformers", "numpy", "scipy", "circuitsvis")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def config_hash(cfg: Any) -> str:
    """sha256 (first 16 hex) of a HookedTransformerConfig's dict, dtype/device excluded."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("device", "dtype", "n_devices")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_provenance(model: Any, label: str) -> dict:
    cfg = model.cfg
    return {
        "label": label,
        "model_name": cfg.model_name,
        "source": getattr(cfg, "source", None),
        "position_encoding": getattr(cfg, "position_encoding", "rope"),
        "nope_origin": getattr(cfg, "nope_origin", None),
        "drope_attention_type": getattr(cfg, "drope_attention_type", None),
        "softmax_scale": getattr(cfg, "softmax_scale", None),
        "config_hash": config_hash(cfg),
        "dtype": str(cfg.dtype),
        "device": str(cfg.device),
        "fp32_attention": getattr(cfg, "fp32_attention", None),
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_key_value_heads": cfg.n_key_value_heads or cfg.n_heads,
        "d_head": cfg.d_head,
        "n_ctx": cfg.n_ctx,
    }


def provenance(pair: Any, options: dict) -> dict:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "models": {role: model_provenance(m, pair.labels[role]) for role, m in pair.items(move=False)},
        "options": options,
    }
