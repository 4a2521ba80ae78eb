"""Every function the README's "What each metric means" names exists where it says."""

import importlib
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## What each metric means")
    return text[start : text.index("\n## ", start + 1)]


def test_each_metric_names_its_function():
    bullets = [b for b in re.split(r"\n\* ", _section())[1:]]
    assert len(bullets) >= 8
    for b in bullets:
        assert "*Computed by* `drope_lens." in " ".join(b.split()), b[:60]


def test_every_named_function_exists():
    names = re.findall(r"`(drope_lens\.[\w.]+)`", _section())
    assert len(names) >= 30
    for name in names:
        module, _, attr = name.rpartition(".")
        obj = getattr(importlib.import_module(module), attr)
        assert callable(obj), name
        assert obj.__module__ == module or module == "drope_lens.options", (
            f"{name} is defined in {obj.__module__}; name that module"
        )
