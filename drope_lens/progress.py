"""Progress bars with short labels: ``"tasks · rope"``, never a model label cut mid-word.

A bar is labelled with what runs and for which model. The model part is the *role* the caller set
with :func:`progress_role` (the report sets ``"rope"`` / ``"drope"`` around each model's work), else
the model's position encoding (``"rope"`` / ``"nope"``). Bars are transient (``leave=False``): when
the work ends the line is cleared, so a terminal shows one line per finished step, not every bar.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Optional

_ROLE: ContextVar[Optional[str]] = ContextVar("drope_lens_progress_role", default=None)

__all__ = ["progress_role", "bar_label", "progress_bar"]


@contextmanager
def progress_role(role: Optional[str]) -> Iterator[None]:
    """Label the bars opened inside the block with ``role`` (e.g. ``"rope"``, ``"drope"``)."""
    token = _ROLE.set(role)
    try:
        yield
    finally:
        _ROLE.reset(token)


def bar_label(what: str, model: Any = None) -> str:
    """``"<what> · <role>"``: the role set by :func:`progress_role`, else ``model.cfg.position_encoding``."""
    who = _ROLE.get()
    if who is None and model is not None:
        who = getattr(getattr(model, "cfg", None), "position_encoding", None)
    return f"{what} · {who}" if who else what


def progress_bar(
    iterable: Optional[Iterable] = None,
    *,
    what: str,
    model: Any = None,
    total: Optional[int] = None,
    enabled: bool = True,
) -> Any:
    """A transient tqdm bar labelled by :func:`bar_label` (a pass-through when ``enabled`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=bar_label(what, model), disable=not enabled, leave=False)
