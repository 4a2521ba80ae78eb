"""Open a local HTML page in headless Chromium with the network off, and report what a person would see.

Test-only glue (no dependency beyond the standard library): Chromium is driven over the DevTools
protocol through ``--remote-debugging-pipe`` (NUL-separated JSON on file descriptors 3 and 4, as
Puppeteer's ``pipe: true``), so no port and no websocket client are needed. The page is loaded with
the network emulated offline and an unreachable proxy, every request the page makes is recorded,
console errors and uncaught exceptions are collected, and a screenshot can be taken.

``python -m tests.browser PAGE.html [--screenshot OUT.png]`` prints the findings as JSON.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

#: Chromium binaries tried in order (Debian's package installs /usr/bin/chromium).
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
REQUIRE_ENV = "DROPE_LENS_REQUIRE_BROWSER"

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--proxy-server=http://127.0.0.1:9",  # nothing listens there: any http(s) request fails
    "--proxy-bypass-list=<-loopback>",
    "--remote-debugging-pipe",
)


def find_chromium() -> Optional[str]:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    """What loading a page produced."""

    url: str
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)  # src head, complete, naturalWidth
    circuitsvis: list[dict[str, Any]] = field(default_factory=list)  # id, children, height
    title: str = ""
    text_head: str = ""
    screenshot: Optional[str] = None

    @property
    def external_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("file:", "data:", "about:", "blob:"))]


class Chromium:
    """One headless Chromium process, driven over ``--remote-debugging-pipe``."""

    def __init__(self, binary: Optional[str] = None, timeout: float = 60.0) -> None:
        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError("no Chromium found (apt-get install -y chromium)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="drope-lens-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # we write commands, Chromium reads fd 3
        self._resp_r, resp_w = os.pipe()  # Chromium writes fd 4, we read

        def child_fds() -> None:
            os.dup2(cmd_r, 3)
            os.dup2(resp_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=child_fds,  # noqa: PLW1509 (single-threaded test helper)
            pass_fds=(3, 4),  # kept open after preexec_fn put the pipe ends there
        )
        os.close(cmd_r)
        os.close(resp_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ protocol
    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._resp_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._resp_r, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                raise RuntimeError(f"Chromium closed the pipe (exit {self.proc.poll()}): {err}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None) -> dict[str, Any]:
        """Send one command and wait for its answer (events that arrive meanwhile are kept in ``events``)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            got = self._read_message(deadline)
            if got.get("id") == self._next_id:
                if "error" in got:
                    raise RuntimeError(f"{method}: {got['error']}")
                return got.get("result", {})
            self.events.append(got)

    def wait_event(self, method: str, deadline: float, *, session: str, since: int = 0) -> dict[str, Any]:
        """The first ``method`` event of ``session`` among the events from index ``since`` on (waits for it)."""
        for ev in self.events[since:]:
            if ev.get("method") == method and ev.get("sessionId") == session:
                return ev
        while True:
            ev = self._read_message(deadline)
            self.events.append(ev)
            if ev.get("method") == method and ev.get("sessionId") == session:
                return ev

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close")
                except Exception:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._cmd_w, self._resp_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.proc.stderr:
                self.proc.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ a page
    def open_page(
        self,
        path: Path,
        *,
        screenshot: Optional[Path] = None,
        width: int = 1400,
        height: int = 1600,
        settle: float = 20.0,
    ) -> PageReport:
        """Load ``path`` offline, wait for the circuitsvis views to render, and collect what happened."""
        url = Path(path).resolve().as_uri()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
            session=session,
        )
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        start = len(self.events)
        self.send("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + self.timeout
        self.wait_event("Page.loadEventFired", deadline, session=session, since=start)
        views_js = (
            "Array.from(document.querySelectorAll('.dl-cv')).map(d => "
            "({id: d.id, children: d.childElementCount, height: d.getBoundingClientRect().height}))"
        )
        end = time.monotonic() + settle
        views: list[dict[str, Any]] = []
        while True:  # circuitsvis renders with React after load
            views = self._eval(views_js, session)
            if all(v["children"] > 0 and v["height"] > 0 for v in views) or time.monotonic() > end:
                break
            time.sleep(0.25)
        images = self._eval(
            "Array.from(document.images).map(i => ({src: i.src.slice(0, 40), complete: i.complete, "
            "naturalWidth: i.naturalWidth}))",
            session,
        )
        report = PageReport(url=url, images=images, circuitsvis=views)
        report.title = self._eval("document.title", session)
        report.text_head = self._eval("document.body.innerText.slice(0, 4000)", session)
        if screenshot is not None:
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            data = self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
            Path(screenshot).write_bytes(base64.b64decode(data))
            report.screenshot = str(screenshot)
        for ev in self.events[start:]:
            if ev.get("sessionId") != session:
                continue
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Network.requestWillBeSent":
                report.requests.append(params["request"]["url"][:200])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                report.console_errors.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                report.exceptions.append(str(d.get("exception", {}).get("description") or d.get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                e = params["entry"]
                report.console_errors.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}")
        self.send("Target.closeTarget", {"targetId": target})
        return report

    def _eval(self, expression: str, session: str) -> Any:
        got = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=session
        )
        if "exceptionDetails" in got:
            raise RuntimeError(f"page script failed: {got['exceptionDetails']}")
        return got["result"].get("value")


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    from dataclasses import asdict

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("page", type=Path)
    p.add_argument("--screenshot", type=Path)
    p.add_argument("--height", type=int, default=1600)
    args = p.parse_args(argv)
    with Chromium() as browser:
        report = browser.open_page(args.page, screenshot=args.screenshot, height=args.height)
    out = asdict(report)
    out["text_head"] = out["text_head"][:600]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
