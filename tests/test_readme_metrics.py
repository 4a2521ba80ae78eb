"""Every function the metric table (docs/metrics.md, "What each metric means", linked from the README) names
exists where it says."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "docs" / "metrics.md"


def _section() -> str:
    text = METRICS.read_text(encoding="utf-8")
    start = text.index("# What each metric means")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_the_readme_links_the_metric_table():
    assert "](docs/metrics.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


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
