"""Atomic file writes (a temp file in the target folder, then ``os.replace``; never a half-written
file) and the real writability probe used before any long run."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from drope_lens.errors import DropeLensError, OutputWriteError


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


@contextmanager
def atomic_path(path: Union[str, os.PathLike], suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` (mode 0644), else it is removed.

    An ``OSError`` while writing (full disk, read-only folder) becomes :class:`OutputWriteError`;
    ``path`` itself is then untouched."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=str(path.parent))
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, DropeLensError):
            raise
        raise OutputWriteError(
            f"could not write {path}: {_reason(exc)}; free disk space or choose a writable location "
            f"(any previous {path.name} is unchanged)"
        ) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return Path(path)


def unwritable_reason(folder: Union[str, os.PathLike]) -> Optional[str]:
    """Why files cannot be created in ``folder`` (None if they can).

    A real probe, not ``os.access`` (always True for root): the nearest existing ancestor must be
    a folder in which a temp file can be created and deleted."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, so the folder cannot be created"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".drope-lens-probe.", dir=str(probe))
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"cannot create files in {probe} ({_reason(exc)})"
    return None
