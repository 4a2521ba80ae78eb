"""Plain prose from a MediaWiki XML dump: one document per article, wikitext markup stripped.

:func:`strip_wikitext` keeps the article's sentences and its headings (one line each) and drops
what is not prose: comments, ``<ref>`` footnotes, templates ``{{...}}`` (nested), tables
``{|...|}`` (nested), ``[[File:...]]`` / ``[[Image:...]]`` / ``[[Category:...]]`` and interlanguage
links, the bodies of ``<math>``/``<gallery>``-like tags, bare external links, and the trailing
reference sections (References, See also, External links, Notes, ...). Links become their
displayed text (``[[a|b]]`` -> ``b``), ``[url label]`` becomes ``label``, bold/italic quotes and list
markers go, HTML entities are decoded.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from typing import IO, Iterator

#: Sections dropped with everything under them (compared case-insensitively).
DROPPED_SECTIONS = frozenset(
    {
        "references",
        "see also",
        "external links",
        "further reading",
        "notes",
        "bibliography",
        "sources",
        "citations",
        "footnotes",
        "notes and references",
        "references and notes",
        "works cited",
        "external sources",
        "links",
    }
)
_DROPPED_LINK_PREFIXES = ("file", "image", "media", "category")
_DROPPED_TAGS = (
    "math",
    "gallery",
    "timeline",
    "score",
    "imagemap",
    "syntaxhighlight",
    "source",
    "chem",
    "hiero",
    "graph",
    "mapframe",
    "templatedata",
)

_COMMENT = re.compile(r"<!--.*?(-->|$)", re.S)
_REF_SELF = re.compile(r"<ref\b[^>]*/>", re.I)
_REF = re.compile(r"<ref\b[^>]*>.*?</ref\s*>", re.I | re.S)
_BODY_TAGS = re.compile(r"<(%s)\b[^>]*>.*?</\1\s*>" % "|".join(_DROPPED_TAGS), re.I | re.S)
_TAG = re.compile(r"</?[a-zA-Z][^<>]*?/?>")
_UNCLOSED_FILE = re.compile(r"\[\[(?:%s):[^\n]*" % "|".join(_DROPPED_LINK_PREFIXES), re.I)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXT_LABELLED = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+\s+([^\]]*)\]")
_EXT_BARE = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\]")
_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$")
_MAGIC = re.compile(r"__[A-Z]+__")
_LANG_PREFIX = re.compile(r"^:?[a-z]{2,3}(-[a-z]+)*:")


def _strip_nested(text: str, open_: str, close: str) -> str:
    """Remove every ``open_ ... close`` span, nesting respected (an unclosed span runs to the end)."""
    out, depth, last = [], 0, 0
    for m in re.finditer(re.escape(open_) + "|" + re.escape(close), text):
        if m.group() == open_:
            if not depth:
                out.append(text[last : m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if not depth:
                last = m.end()
    if not depth:
        out.append(text[last:])
    return "".join(out)


def _strip_tables(text: str) -> str:
    """Drop table lines: from a line starting ``{|`` to the matching line starting ``|}``."""
    out, depth = [], 0
    for line in text.split("\n"):
        s = line.lstrip()
        if s.startswith("{|"):
            depth += 1
        elif depth and s.startswith("|}"):
            depth -= 1
        elif not depth:
            out.append(line)
    return "\n".join(out)


def _link(m: re.Match) -> str:
    target, _, label = m.group(1).partition("|")
    t = target.strip()
    prefix = t.lstrip(":").split(":", 1)[0].strip().lower() if ":" in t else ""
    if prefix in _DROPPED_LINK_PREFIXES and not t.startswith(":"):
        return ""
    if not label and _LANG_PREFIX.match(t) and prefix not in ("wikt", "w"):
        return ""  # interlanguage link
    if label:
        return label.split("|")[-1] if prefix in _DROPPED_LINK_PREFIXES else label
    return t.split(":", 1)[1] if prefix in ("wikt", "w", "wiktionary", "wikipedia") else t.lstrip(":")


def _links(text: str) -> str:
    """Resolve links innermost first, so a caption's links are text before its File link goes."""
    while True:
        new = _LINK.sub(_link, text)
        if new == text:
            return new
        text = new


def _drop_sections(lines: list[str]) -> list[str]:
    out, skip_level = [], 0
    for line in lines:
        m = _HEADING.match(line)
        if m:
            level = len(m.group(1))
            if skip_level and level > skip_level:
                continue
            skip_level = 0
            if m.group(2).strip().lower() in DROPPED_SECTIONS:
                skip_level = level
                continue
            out.append(m.group(2).strip())
        elif not skip_level:
            out.append(line)
    return out


def strip_wikitext(text: str) -> str:
    """Wikitext -> plain prose (see the module docstring); paragraphs separated by blank lines."""
    text = text.replace("\r\n", "\n")
    text = _COMMENT.sub("", text)
    text = _REF_SELF.sub("", text)
    text = _REF.sub("", text)
    text = _BODY_TAGS.sub("", text)
    text = _strip_nested(text, "{{", "}}")
    text = _strip_tables(text)
    text = _links(text)
    text = _UNCLOSED_FILE.sub("", text)
    text = _EXT_LABELLED.sub(r"\1", text)
    text = _EXT_BARE.sub("", text)
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = _TAG.sub("", text)
    text = _MAGIC.sub("", text)
    text = re.sub(r"'{2,}", "", text)
    lines = []
    for line in _drop_sections(text.split("\n")):
        line = re.sub(r"^[*#:;]+\s*", "", line)
        line = html.unescape(line).replace("\xa0", " ")
        line = re.sub(r"[ \t]{2,}", " ", line).strip()
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line).replace(" ,", ",").replace(" .", ".").strip()
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def iter_pages(stream: IO[bytes]) -> Iterator[tuple[str, str]]:
    """``(title, wikitext)`` of each main-namespace, non-redirect page of a MediaWiki XML dump."""
    title = ns = None
    text = None
    redirect = False
    for _, elem in ET.iterparse(stream, events=("end",)):
        tag = elem.tag.rsplit("}", 1)[-1]
        if tag == "title":
            title = elem.text or ""
        elif tag == "ns":
            ns = (elem.text or "").strip()
        elif tag == "redirect":
            redirect = True
        elif tag == "text":
            text = elem.text or ""
        elif tag == "page":
            if ns == "0" and not redirect and text and not text.lstrip().lower().startswith("#redirect"):
                yield title, text  # type: ignore[misc]  # <title> precedes <text> in a <page>
            title = ns = text = None
            redirect = False
            elem.clear()
