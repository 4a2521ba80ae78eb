"""Sentiment (contextual): is a movie review Positive or Negative?

Default data: 104 short reviews of invented films written for this project
(``drope_lens/data/reviews.jsonl``, 52 positive / 52 negative). :func:`load_imdb` reads the real
IMDB set (Maas et al. 2011) from a local CSV/JSONL/JSON file or, for users who are online, from the
Hugging Face hub (``datasets`` is imported lazily). Reviews are cut to ``max_chars`` (the study: 1500).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from drope_lens.errors import DropeLensInputError
from drope_lens.tasks.base import TaskDataset, TaskItem, read_rows, sample_balanced, unused_items

OPTIONS = ("Positive", "Negative")
PROMPT = (
    "Read this movie review and answer: Is it Positive or Negative?\n\nReview: {text}\n\nSentiment (Positive/Negative):"
)
REVIEWS_FILE = Path(__file__).resolve().parent.parent / "data" / "reviews.jsonl"
_LABELS = {
    "1": "Positive",
    "pos": "Positive",
    "positive": "Positive",
    "true": "Positive",
    "0": "Negative",
    "neg": "Negative",
    "negative": "Negative",
    "false": "Negative",
}


def _label(value: Any, where: str) -> str:
    key = str(value).strip().lower()
    if key not in _LABELS:
        raise DropeLensInputError(f"{where}: label {value!r} is not positive/negative, pos/neg or 1/0.")
    return _LABELS[key]


def review_item(text: str, answer: str, max_chars: Optional[int] = 1500) -> TaskItem:
    body = text if max_chars is None else text[:max_chars]
    return TaskItem(PROMPT.format(text=body), answer, {"review": body, "chars": len(text)})


def read_review_file(path: Union[str, Path]) -> list[tuple[str, str]]:
    """``(text, "Positive"|"Negative")`` rows from CSV/TSV (header ``text,label``), JSONL or JSON list."""
    path = Path(path)
    rows = read_rows(path, "columns/keys text, label")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            raise DropeLensInputError(f"{path}, row {i}: needs 'text' and 'label'.")
        out.append((str(row["text"]), _label(row["label"], f"{path}, row {i}")))
    if not out:
        raise DropeLensInputError(f"{path} holds no reviews.")
    return out


def _dataset(
    rows: list[tuple[str, str]], n: Optional[int], seed: int, max_chars: Optional[int], source: str
) -> TaskDataset:
    pool = [review_item(text, label, max_chars) for text, label in rows]
    items = sample_balanced(pool, n, seed, what=source, options=OPTIONS)
    demos = unused_items(pool, items, "review")
    return TaskDataset(
        "sentiment",
        "contextual",
        "choice",
        items,
        OPTIONS,
        source=source,
        template=PROMPT,
        slot="text",
        content_key="review",
        demo_pool=demos,
    )


def load_sentiment(
    n: Optional[int] = 100, seed: int = 0, *, path: Union[str, Path, None] = None, max_chars: Optional[int] = 1500
) -> TaskDataset:
    """Balanced sample of the project's reviews (or of your own file, same format as :func:`load_imdb`)."""
    source = str(path) if path is not None else "drope_lens/data/reviews.jsonl (project)"
    return _dataset(read_review_file(path or REVIEWS_FILE), n, seed, max_chars, source)


def load_imdb(
    path: Union[str, Path, None] = None,
    split: str = "test",
    n: Optional[int] = 100,
    seed: int = 0,
    *,
    max_chars: Optional[int] = 1500,
) -> TaskDataset:
    """Balanced sample of IMDB: from ``path`` (CSV/JSONL/JSON with text,label) or the HF hub.

    Without ``path`` it calls ``datasets.load_dataset("imdb", split=split)``, which needs the
    ``datasets`` package and a network connection (or a warm HF cache).
    """
    if path is not None:
        return _dataset(read_review_file(path), n, seed, max_chars, f"IMDB from {path}")
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise ImportError(
            "load_imdb without a path needs the 'datasets' package "
            "(pip install datasets), or pass path= to a local CSV/JSONL."
        ) from exc
    try:
        ds = load_dataset("imdb", split=split)
    except Exception as exc:  # network, hub or cache errors all mean the same thing here
        raise RuntimeError(
            f"Could not load IMDB ({split}) from the Hugging Face hub: {exc}. "
            "If you are offline, pass path= to a local CSV/JSONL with text,label."
        ) from exc
    rows = [(r["text"], _label(r["label"], "imdb")) for r in ds]
    return _dataset(rows, n, seed, max_chars, f"IMDB {split} (Hugging Face hub)")
