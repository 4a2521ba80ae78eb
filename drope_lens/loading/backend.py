"""Which TransformerLens class a model lives in: ``hooked`` (HookedTransformer, TransformerLens < 4) or
``bridge`` (TransformerBridge, TransformerLens 3.9 and 4.x).

Both backends give the same hook names and shapes, the same numbers (tested) and the same drope_lens
config facts (``cfg.position_encoding``, ``cfg.describe()`` …), so every analysis runs on either. The
default is ``hooked`` where TransformerLens < 4 is installed (the design's HookedTransformer, and what
SAELens needs) and ``bridge`` on TransformerLens >= 4, where HookedTransformer no longer exists;
``$DROPE_LENS_BACKEND`` overrides the default (``backend=`` / ``--backend`` override both).
"""

from __future__ import annotations

import functools
import os
from importlib import metadata
from typing import Any, Literal, Optional

from drope_lens.errors import DropeLensInputError

Backend = Literal["hooked", "bridge"]
BACKENDS: tuple[str, ...] = ("hooked", "bridge")
ENV_VAR = "DROPE_LENS_BACKEND"


@functools.lru_cache(maxsize=None)
def tl_version() -> tuple[int, ...]:
    """The installed TransformerLens version as a tuple (``transformer_lens`` 4.x has no ``__version__``)."""
    raw = metadata.version("transformer-lens")
    parts = []
    for piece in raw.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def hooked_available() -> bool:
    """HookedTransformer exists in TransformerLens < 4 only."""
    return tl_version() < (4,)


def default_backend() -> str:
    """``$DROPE_LENS_BACKEND`` if set, else ``hooked`` on TransformerLens < 4 and ``bridge`` on 4.x."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return check_backend(env, what=f"${ENV_VAR}")
    return "hooked" if hooked_available() else "bridge"


def check_backend(backend: Optional[str], *, what: str = "backend") -> str:
    """``backend`` (None: the default), checked: a known name, and ``hooked`` only where it exists."""
    if backend is None:
        return default_backend()
    if backend not in BACKENDS:
        raise DropeLensInputError(f"{what} must be one of {BACKENDS}, got {backend!r}.")
    if backend == "hooked" and not hooked_available():
        version = ".".join(map(str, tl_version()))
        raise DropeLensInputError(
            f"{what}='hooked' needs HookedTransformer, which TransformerLens {version} no longer has (removed in "
            "4.0). Use backend='bridge' (TransformerBridge; the default on TransformerLens 4), or install "
            "'transformer-lens>=3.9,<4' for HookedTransformer (and SAELens)."
        )
    return backend


def backend_of(model: Any) -> str:
    """``"bridge"`` for a TransformerBridge, ``"hooked"`` for a HookedTransformer."""
    return "bridge" if hasattr(model, "original_model") and hasattr(model, "adapter") else "hooked"


def is_bridge(model: Any) -> bool:
    return backend_of(model) == "bridge"


#: A drope_lens model: a HookedTransformer or a TransformerBridge (the analyses use only the surface both share).
Model = Any
