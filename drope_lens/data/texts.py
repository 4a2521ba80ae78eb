"""Text sources: built-in texts, local text files, and Hugging Face datasets.

The built-in set (``texts.json``) was written for drope_lens: three texts in each of five genres,
about 130-190 words each. It does not reuse the study's texts. ``"repetitive"`` texts repeat one
sentence or one short pattern, like the study's repetitive evaluation set, so their perplexity
mostly measures in-context copying.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Optional

from drope_lens.errors import DropeLensInputError

GENRES = ("literary", "technical", "conversational", "factual", "repetitive")
_FILE = Path(__file__).with_name("texts.json")


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, tuple[str, ...]]:
    data = json.loads(_FILE.read_text(encoding="utf-8"))
    return {g: tuple(data[g]) for g in GENRES}


def builtin_texts(genre: Optional[str] = None) -> list[str]:
    """The built-in texts of one genre, or all of them (genre order) for ``genre=None``."""
    data = _load()
    if genre is None:
        return [t for g in GENRES for t in data[g]]
    if genre not in data:
        raise DropeLensInputError(f"Unknown genre {genre!r}; use one of {GENRES} or None for all.")
    return list(data[genre])


def builtin_split() -> dict[str, list[str]]:
    """Disjoint built-in sets: ``"identify"`` (first text of each genre) and ``"eval"`` (the rest)."""
    data = _load()
    return {
        "identify": [data[g][0] for g in GENRES],
        "eval": [t for g in GENRES for t in data[g][1:]],
    }


def load_text_file(
    path,
    *,
    max_tokens: Optional[int] = None,
    tokenizer=None,
    min_chars: int = 1,
) -> list[str]:
    """Texts from a local UTF-8 file.

    Without ``max_tokens`` the file is split at blank lines (one text per paragraph). With
    ``max_tokens`` and a ``tokenizer``, consecutive paragraphs are packed into chunks of at most
    ``max_tokens`` tokens (a longer paragraph is cut at word boundaries). Texts shorter than
    ``min_chars`` characters are dropped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No text file at {path}. Pass an existing UTF-8 .txt file.")
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))]
    paragraphs = [p for p in paragraphs if p]
    if max_tokens is not None:
        if tokenizer is None:
            raise DropeLensInputError("max_tokens needs a tokenizer (e.g. model.tokenizer) to count tokens.")
        if max_tokens < 2:
            raise DropeLensInputError(f"max_tokens must be >= 2, got {max_tokens}")
        paragraphs = _pack(paragraphs, tokenizer, max_tokens)
    texts = [p for p in paragraphs if len(p) >= min_chars]
    if not texts:
        raise DropeLensInputError(f"{path} contains no text of at least {min_chars} characters.")
    return texts


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _pack(paragraphs: list[str], tokenizer, budget: int) -> list[str]:
    budget -= 1  # room for BOS
    pieces = [
        piece
        for para in paragraphs  # cut a long paragraph at word boundaries
        for piece in (
            _greedy_join(para.split(" "), " ", tokenizer, budget) if _n_tokens(tokenizer, para) > budget else [para]
        )
    ]
    return _greedy_join(pieces, "\n\n", tokenizer, budget)


def _greedy_join(parts: list[str], sep: str, tokenizer, budget: int) -> list[str]:
    """Join consecutive ``parts`` with ``sep`` while the join fits ``budget`` tokens (one part alone may not)."""
    out: list[str] = []
    current = ""
    for part in parts:
        cand = f"{current}{sep}{part}" if current else part
        if current and _n_tokens(tokenizer, cand) > budget:
            out.append(current)
            current = part
        else:
            current = cand
    if current:
        out.append(current)
    return out


def load_hf_texts(
    name: str,
    *,
    config: Optional[str] = None,
    split: str = "test",
    column: str = "text",
    n: int = 20,
    min_chars: int = 200,
) -> list[str]:
    """The first ``n`` rows of ``column`` with at least ``min_chars`` characters from a HF dataset.

    Needs the optional ``datasets`` package and network access (or a local HF cache), e.g.
    ``load_hf_texts("wikitext", config="wikitext-2-raw-v1")``.
    """
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "Loading a Hugging Face dataset needs the `datasets` package: pip install 'drope_lens[data]'. "
            "Offline, use builtin_texts() or load_text_file(path) instead."
        ) from exc
    if n < 1:
        raise DropeLensInputError(f"n must be >= 1, got {n}")
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:  # offline, unknown name, gated
        raise FileNotFoundError(
            f"Could not load dataset {name!r} (config {config!r}, split {split!r}): "
            f"{type(exc).__name__}: {exc}. Check the name and your network, or use "
            "builtin_texts() / load_text_file(path)."
        ) from exc
    texts: list[str] = []
    for row in ds:
        if column not in row:
            raise DropeLensInputError(f"Dataset {name!r} has no column {column!r}; columns: {sorted(row)}")
        text = str(row[column]).strip()
        if len(text) >= min_chars:
            texts.append(text)
        if len(texts) >= n:
            break
    if not texts:
        raise DropeLensInputError(f"No rows of {name!r}/{split} have {column!r} with >= {min_chars} characters.")
    return texts
