"""Results saved step by step, atomically, so an interrupted report resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from drope_lens.atomic import atomic_write_text


def fingerprint(options: dict) -> str:
    """A short stable hash of the options a step ran with (changing them reruns the step)."""
    blob = json.dumps(options, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _to_jsonable(obj: Any) -> Any:
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


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(Path(path), json.dumps(payload, indent=2, default=_to_jsonable, allow_nan=True))


class PartStore:
    """One JSON file per finished step under ``<out>/parts/``, keyed by an options fingerprint."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir) / "parts"

    def path(self, step: str) -> Path:
        return self.dir / f"{step}.json"

    def load(self, step: str, options: dict) -> Optional[dict]:
        """The saved result of ``step`` if it finished with the same options, else None."""
        path = self.path(step)
        if not path.exists():
            return None
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        if saved.get("fingerprint") != fingerprint(options):
            return None
        return saved["result"]

    def save(self, step: str, options: dict, result: Any, seconds: float) -> None:
        atomic_write_json(
            self.path(step),
            {"step": step, "fingerprint": fingerprint(options), "options": options,
             "seconds": round(seconds, 3), "result": result},
        )

    def seconds(self, step: str) -> Optional[float]:
        path = self.path(step)
        return json.loads(path.read_text()).get("seconds") if path.exists() else None
