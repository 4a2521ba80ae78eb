"""A quiet command line: third-party output that tells the user nothing they can act on is dropped.

Installed by the ``drope-lens`` entry point only (never on ``import drope_lens``: a library user's
logging, warnings and progress bars are theirs). ``--verbose`` leaves everything as it is.

What is silenced, each exactly:

* bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community: … Set
  trust_remote_code=True …" — a ``logging`` warning of the logger ``bitsandbytes.backends.cpu.ops``,
  emitted while bitsandbytes is imported (TransformerLens imports it when it is installed). It reads
  like an instruction to enable remote code; drope_lens never uses that kernel. A filter on that
  logger drops this one message; every other record of the logger passes.
* transformers' own progress bars ("Loading weights" on every Hugging Face load, "Writing model
  shards" on every save, e.g. each recalibration checkpoint): transformers' bar switch is turned off
  as soon as ``transformers.utils.logging`` is imported (an import hook; nothing is imported early, so
  ``--help`` stays fast). huggingface_hub's download bars are left on: a download is worth watching.
* TransformerLens 3.9's "HookedTransformer is deprecated …" ``DeprecationWarning``, raised on every
  model built (drope_lens deliberately stays on ``HookedTransformer``; see docs/loading.md).

drope_lens's own progress bars are shown on a terminal only, one short label each ("tasks · rope").
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import warnings
from types import ModuleType
from typing import Any, Optional, Sequence

TRANSFORMERS_LOGGING = "transformers.utils.logging"
BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"
TL_DEPRECATION = r"HookedTransformer is deprecated"

__all__ = ["install", "BNB_LOGGER", "BNB_MESSAGE", "TL_DEPRECATION"]


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with ``prefix`` (the rest of the logger's records pass)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _transformers_bars_off(module: ModuleType) -> None:
    """transformers' own tqdm wrapper checks this flag on every bar (``disable_progress_bar()`` would
    also turn off huggingface_hub's download bars, which stay)."""
    if hasattr(module, "_tqdm_active"):
        module._tqdm_active = False  # type: ignore[attr-defined]


class _BarsOffAfterImport(importlib.abc.MetaPathFinder):
    """Runs :func:`_transformers_bars_off` right after ``transformers.utils.logging`` is imported."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != TRANSFORMERS_LOGGING:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader: Any = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _transformers_bars_off(module)

        loader.exec_module = exec_module
        return spec


_installed: list[Any] = []


def install(verbose: bool = False) -> None:
    """Silence the non-actionable third-party output listed in the module docstring (nothing if ``verbose``).

    Idempotent; call it before the heavy imports (the CLI does, before parsing arguments)."""
    if verbose or _installed:
        return
    drop = _DropMessage(BNB_MESSAGE)
    logging.getLogger(BNB_LOGGER).addFilter(drop)
    _installed.append(drop)
    if TRANSFORMERS_LOGGING in sys.modules:
        _transformers_bars_off(sys.modules[TRANSFORMERS_LOGGING])
    else:
        hook = _BarsOffAfterImport()
        sys.meta_path.insert(0, hook)
        _installed.append(hook)
    warnings.filterwarnings("ignore", message=TL_DEPRECATION, category=DeprecationWarning)


def uninstall() -> None:
    """Undo :func:`install`'s logging filter and import hook (for tests; the warning filter stays)."""
    while _installed:
        item = _installed.pop()
        if isinstance(item, _DropMessage):
            logging.getLogger(BNB_LOGGER).removeFilter(item)
        elif item in sys.meta_path:
            sys.meta_path.remove(item)
