"""Results saved step by step, atomically, so an interrupted report resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from drope_lens.jsonio import atomic_write_json


def fingerprint(options: dict) -> str:
    """A short stable hash of the options a step ran with (changing them reruns the step)."""
    blob = json.dumps(options, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class PartStore:
    """One JSON file per finished step under ``<out>/parts/``, keyed by a fingerprint of the step's
    options *and* the identity of both models and the drope_lens version (see
    :func:`drope_lens.runs.provenance.pair_identity`)."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir) / "parts"

    def path(self, step: str) -> Path:
        return self.dir / f"{step}.json"

    def check(self, step: str, options: dict, identity: Optional[dict] = None) -> tuple[Optional[dict], str]:
        """``(result, "")`` if ``step`` finished with these options on these models, else
        ``(None, why)``; ``why`` is '' when there is no saved part at all."""
        from drope_lens.runs.provenance import describe_difference

        path = self.path(step)
        if not path.exists():
            return None, ""
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(saved, dict) or "result" not in saved or "fingerprint" not in saved:
                raise ValueError("missing 'result' or 'fingerprint'")
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            return None, f"saved part {path} is corrupt or truncated ({exc}); rerunning"
        if identity is not None and saved.get("identity") != identity:
            why = describe_difference(saved.get("identity") or {}, identity) or "no identity recorded"
            return None, f"models differ from the saved part: {why}"
        if saved.get("options") is not None and saved["options"] != json.loads(json.dumps(options, default=str)):
            return None, "options differ from the saved part"
        if saved.get("fingerprint") != fingerprint({"options": options, "identity": identity}):
            return None, "fingerprint differs from the saved part"
        return saved["result"], ""

    def load(self, step: str, options: dict, identity: Optional[dict] = None) -> Optional[dict]:
        """The saved result of ``step`` if it finished with the same options and models, else None."""
        return self.check(step, options, identity)[0]

    def save(self, step: str, options: dict, result: Any, seconds: float, identity: Optional[dict] = None) -> None:
        atomic_write_json(
            self.path(step),
            {
                "step": step,
                "fingerprint": fingerprint({"options": options, "identity": identity}),
                "options": options,
                "identity": identity,
                "seconds": round(seconds, 3),
                "result": result,
            },
        )

    def seconds(self, step: str) -> Optional[float]:
        try:
            return json.loads(self.path(step).read_text()).get("seconds")
        except (OSError, ValueError, AttributeError):
            return None


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultsLock:
    """One writer per results folder: ``<out>/.lock`` holds the writer's pid and start time.

    A lock left by a dead process is taken over with a message; a live holder makes
    :class:`~drope_lens.errors.ReportLockedError` be raised."""

    def __init__(self, out_dir: Path, say=None):
        self.path = Path(out_dir) / ".lock"
        self._say = say or (lambda m: None)
        self._held = False

    def acquire(self) -> None:
        import os
        import time as _time

        from drope_lens.errors import ReportLockedError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    info = json.loads(self.path.read_text())
                    pid, started = int(info["pid"]), info.get("started")
                except (OSError, ValueError, KeyError, TypeError):
                    pid, started = -1, None
                if pid > 0 and pid != os.getpid() and _pid_alive(pid):
                    raise ReportLockedError(
                        f"{self.path.parent} is being written by another drope-lens report (pid {pid}, "
                        f"started {started}); wait for it to finish or choose another --out"
                    ) from None
                self._say(f"taking over stale lock {self.path} (pid {pid}, started {started}, not running)")
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"pid": os.getpid(), "started": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime())}, fh)
            self._held = True
            return
        raise ReportLockedError(f"could not take the lock {self.path}; another report raced for it")

    def release(self) -> None:
        if self._held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self._held = False

    def __enter__(self) -> "ResultsLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
