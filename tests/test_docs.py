"""The README is a landing page and every relative link in it and in docs/*.md resolves (file and #anchor)."""

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (duplicates numbered)."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        slug = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
    return [a or b for a, b in LINK.findall(text)]


def test_pages_exist_and_the_readme_is_short():
    assert len(PAGES) > 12
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
    assert (ROOT / "docs" / "backends.md").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    links = _links(page)
    for link in links:
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:, file:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link} -> {target} does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page.name}: {link}: no heading #{anchor} in {target.name}"


def test_every_docs_page_is_reachable_from_the_readme_or_the_docs_index():
    linked = set()
    for page in (ROOT / "README.md", ROOT / "docs" / "README.md"):
        linked |= {(page.parent / link.partition("#")[0]).resolve() for link in _links(page)}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert orphans == []


def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("# Title\n\n[ok](x.md#title) [gone](nowhere.md) [bad anchor](x.md#nope)\n")
    with pytest.raises(AssertionError, match="nowhere.md"):
        test_every_relative_link_resolves(page)
    page.write_text("# Title\n\n[ok](x.md#title) [bad anchor](x.md#nope)\n")
    with pytest.raises(AssertionError, match="no heading #nope"):
        test_every_relative_link_resolves(page)


@pytest.mark.slow
def test_the_readme_example_runs(capsys):
    """The README's "Ten lines of Python", run as written on the embedded pair."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = text.split("## Ten lines of Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 10
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'tensor': 'q'" in out and "bos_mlp" in out and "tensor([[" in out
