"""Binding drope_lens's replacements for TransformerLens methods onto module instances."""

from __future__ import annotations

import types
from typing import Callable

from torch import nn


def patch_method(module: nn.Module, method: str, fn: Callable, flag: str, *, keep_existing: bool = False) -> None:
    """Bind ``fn`` as ``module.<method>`` once (``flag`` marks the modules already done: idempotent).

    ``keep_existing`` leaves an instance-level override that another installer put there.
    """
    if getattr(module, flag, False):
        return
    if not (keep_existing and method in module.__dict__):
        setattr(module, method, types.MethodType(fn, module))
    object.__setattr__(module, flag, True)
