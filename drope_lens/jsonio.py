"""The one JSON encoding of drope_lens results (tensors, arrays, dataclasses with ``to_dict``) and its atomic write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from drope_lens.atomic import atomic_write_text


def to_jsonable(obj: Any) -> Any:
    """``json.dumps(default=...)`` for results: ``to_dict()``, tensors/arrays as lists, numpy scalars, dtypes,
    devices and paths as strings; anything else is a ``TypeError``."""
    import numpy as np
    import torch

    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def to_jsonable_or_str(obj: Any) -> Any:
    """:func:`to_jsonable`, falling back to ``str(obj)`` (for printing, never for saved results)."""
    try:
        return to_jsonable(obj)
    except TypeError:
        return str(obj)


def plain(obj: Any) -> Any:
    """JSON round trip: what is saved is exactly what later steps and the report read."""
    return json.loads(json.dumps(obj, default=to_jsonable, allow_nan=True))


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(Path(path), json.dumps(payload, indent=2, default=to_jsonable, allow_nan=True))
