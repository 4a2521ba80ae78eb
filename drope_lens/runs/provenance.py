"""What produced a set of numbers: package versions, models, configs, numerics, seeds, options."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

PACKAGES = (
    "drope_lens",
    "torch",
    "transformer-lens",
    "transformers",
    "numpy",
    "scipy",
    "circuitsvis",
    "bitsandbytes",
    "accelerate",
)


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
    from drope_lens.loading.backend import backend_of

    cfg = model.cfg
    return {
        "label": label,
        "backend": backend_of(model),
        "model_name": cfg.model_name,
        "source": getattr(cfg, "source", None),
        "position_encoding": getattr(cfg, "position_encoding", "rope"),
        "nope_origin": getattr(cfg, "nope_origin", None),
        "drope_attention_type": getattr(cfg, "drope_attention_type", None),
        "softmax_scale": getattr(cfg, "softmax_scale", None),
        "config_hash": config_hash(cfg),
        "dtype": str(cfg.dtype),
        "quantization": getattr(cfg, "quantization", None),
        "device": str(cfg.device),
        "device_map": _device_map(model),
        "fp32_attention": getattr(cfg, "fp32_attention", None),
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_key_value_heads": cfg.n_key_value_heads or cfg.n_heads,
        "d_head": cfg.d_head,
        "n_ctx": cfg.n_ctx,
    }


def _device_map(model: Any) -> Any:
    """The accelerate device map a bridge's HF model was placed by (``{module: device}``), None if none."""
    hf = getattr(model, "original_model", None)
    placed = getattr(hf, "drope_lens_device_map", None) or getattr(hf, "hf_device_map", None)
    return {str(k): str(v) for k, v in placed.items()} if placed else None


def provenance(pair: Any, options: dict) -> dict:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "models": {role: model_provenance(m, pair.labels[role]) for role, m in pair.items(move=False)},
        "options": options,
    }


def sample_index(n: int, k: int):
    """``min(k, n)`` evenly spaced indices ``0 … n-1``, in exact integer arithmetic (a float32
    ``linspace`` rounds past 2**24 elements and can point one past the end)."""
    import torch

    k = min(k, n)
    return torch.arange(k, dtype=torch.long) * (n - 1) // max(k - 1, 1)


def weights_hash(model: Any, sample: int = 64) -> str:
    """sha256 (first 16 hex) of every parameter and buffer's name, shape, dtype and a fixed sample of
    its values (``sample`` evenly spaced elements plus the sum), so changing any weight changes it in
    practice while staying cheap for a 7B model (a few reads per tensor, no full copy). The sum is taken
    in float64 and kept to 10 significant digits: its last bits depend on the summation order, i.e. on
    torch's thread count, and the hash must not."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        for name, t in sorted(tensors, key=lambda kv: kv[0]):
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
            if t.numel() == 0:
                continue
            flat = t.detach().reshape(-1)
            idx = sample_index(flat.numel(), sample).to(flat.device)
            vals = flat[idx].float()
            total = float(flat.double().sum())
            h.update(vals.cpu().numpy().tobytes())
            h.update(f"{total:.10g}".encode())
    return h.hexdigest()[:16]


#: The model fields whose change invalidates a saved report part.
IDENTITY_FIELDS = (
    "backend",
    "model_name",
    "source",
    "config_hash",
    "weights_hash",
    "dtype",
    "quantization",
    "device",
    "position_encoding",
    "nope_origin",
    "drope_attention_type",
    "fp32_attention",
)


def model_identity(model: Any) -> dict:
    """What identifies the numbers a model produces (see :data:`IDENTITY_FIELDS`)."""
    prov = model_provenance(model, "")
    prov["weights_hash"] = weights_hash(model)
    return {k: (None if prov.get(k) is None else str(prov.get(k))) for k in IDENTITY_FIELDS}


def pair_identity(pair: Any) -> dict:
    """The identity of both models of a pair and the drope_lens version."""
    from drope_lens import __version__

    return {"drope_lens": __version__, "models": {role: model_identity(m) for role, m in pair.items(move=False)}}


def describe_difference(saved: dict, current: dict) -> str:
    """A human line such as ``drope dtype torch.float32 → torch.bfloat16``; '' when equal."""
    diffs = []
    if saved.get("drope_lens") != current.get("drope_lens"):
        diffs.append(f"drope_lens version {saved.get('drope_lens')} → {current.get('drope_lens')}")
    sm, cm = saved.get("models") or {}, current.get("models") or {}
    for role in sorted(set(sm) | set(cm)):
        a, b = sm.get(role) or {}, cm.get(role) or {}
        for k in IDENTITY_FIELDS:
            if a.get(k) != b.get(k):
                diffs.append(f"{role} {k} {a.get(k)} → {b.get(k)}")
    return "; ".join(diffs)
