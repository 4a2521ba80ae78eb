"""A quiet command line: the bitsandbytes kernel message, transformers' load bars and TransformerLens's
deprecation warning are hidden by ``drope-lens`` (and shown with ``--verbose``); the report prints one
line per finished step and the page's file:// address."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import drope_lens
from drope_lens.cli import quiet
from drope_lens.loading.backend import default_backend

ROOT = Path(drope_lens.__file__).resolve().parents[1]
BNB_TEXT = "Failed to load CPU gemm_4bit_forward from kernels-community"
TL_TEXT = "HookedTransformer is deprecated"
LOAD_BAR = "Loading weights"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    from drope_lens.testing import tiny_llama

    folder = tmp_path_factory.mktemp("tiny_rope")
    tiny_llama(seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _run(*argv: str, warnings: str = "") -> subprocess.CompletedProcess:
    """``python -m drope_lens ARGV`` from this checkout; ``warnings``: a PYTHONWARNINGS value (e.g. to show
    DeprecationWarnings, which Python hides by default outside ``__main__``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    env.pop("PYTHONWARNINGS", None)
    if warnings:
        env["PYTHONWARNINGS"] = warnings
    return subprocess.run(
        [sys.executable, "-m", "drope_lens", *argv], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )


def _bnb_speaks() -> bool:
    """Whether importing TransformerLens makes bitsandbytes log its kernel message on this machine."""
    r = subprocess.run(
        [sys.executable, "-c", "import transformer_lens"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    return BNB_TEXT in r.stderr


def test_the_filter_drops_exactly_the_kernel_message(caplog):
    log = logging.getLogger(quiet.BNB_LOGGER)
    quiet.uninstall()
    try:
        quiet.install(verbose=True)  # verbose: nothing installed
        with caplog.at_level(logging.WARNING, logger=quiet.BNB_LOGGER):
            log.warning(BNB_TEXT + ": %s. Please make sure you already `pip install kernels`", "untrusted")
        assert BNB_TEXT in caplog.text
        caplog.clear()
        quiet.install()
        with caplog.at_level(logging.WARNING, logger=quiet.BNB_LOGGER):
            log.warning(BNB_TEXT + ": %s. Please make sure you already `pip install kernels`", "untrusted")
            log.warning("another bitsandbytes warning")
        assert BNB_TEXT not in caplog.text and "another bitsandbytes warning" in caplog.text
        assert logging.getLogger("somebody.else").filters == []  # nothing global
    finally:
        quiet.uninstall()


def test_summary_is_quiet_and_verbose_brings_the_noise_back(tiny_dir):
    args = ("summary", "--rope", str(tiny_dir))
    shown = "default::DeprecationWarning"  # TL's warning would be hidden by Python's defaults anyway
    q, v = _run(*args, warnings=shown), _run(*args, "--verbose", warnings=shown)
    assert q.returncode == 0 and v.returncode == 0, (q.stderr[-2000:], v.stderr[-2000:])
    assert "vs Hugging Face" in q.stdout  # the command did its work
    for noise in (BNB_TEXT, TL_TEXT, LOAD_BAR, "trust_remote_code"):
        assert noise not in q.stderr, noise
    assert LOAD_BAR in v.stderr
    if default_backend() == "hooked":  # the bridge raises no deprecation warning
        assert TL_TEXT in v.stderr
    if _bnb_speaks():
        assert BNB_TEXT in v.stderr


def test_report_prints_one_line_per_step_and_the_page_address(tiny_dir, tmp_path):
    out = tmp_path / "r"
    r = _run("report", "--rope", str(tiny_dir), "--out", str(out), "--quick", "--steps", "massive,phase")
    assert r.returncode == 0, r.stderr[-3000:]
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert err[0].startswith("rope:") and err[1].startswith("drope:")
    steps = [ln for ln in err if ln.startswith("✓ ")]
    assert [s.split()[1] for s in steps] == ["massive", "phase", "pages"]
    assert len(err) == 2 + len(steps), r.stderr  # nothing else: no bars in a log, no third-party noise
    for noise in (BNB_TEXT, TL_TEXT, LOAD_BAR, "it/s"):
        assert noise not in r.stderr
    page = (out / "report.html").resolve()
    assert r.stdout.strip().splitlines()[-1] == page.as_uri()
    assert "findings:" in r.stdout and "not testable here" in r.stdout
    # resumed: the steps say so
    again = _run("report", "--rope", str(tiny_dir), "--out", str(out), "--quick", "--steps", "massive,phase")
    assert "✓ massive     reused (parts/massive.json)" in again.stderr


def test_open_uses_the_web_browser_or_says_there_is_none(monkeypatch, tmp_path, capsys):
    import webbrowser

    from drope_lens.cli.report import open_page

    page = tmp_path / "report.html"
    page.write_text("<html></html>")
    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    assert open_page(page) and opened == [page.as_uri()]
    monkeypatch.setattr(webbrowser, "open", lambda url: False)
    assert not open_page(page)
    assert f"no web browser found to open the page; open {page.as_uri()} yourself" in capsys.readouterr().err


def test_progress_labels_are_short_and_name_the_role():
    from drope_lens.progress import bar_label, progress_role
    from drope_lens.testing import tiny_hooked

    model = tiny_hooked(position_encoding="nope")
    assert bar_label("tasks", model) == "tasks · nope"
    with progress_role("drope"):
        assert bar_label("tasks", model) == "tasks · drope"
    assert bar_label("massive values") == "massive values"
