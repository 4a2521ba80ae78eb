"""Your own yes/no questions: CSV/TSV, JSONL or JSON (Jin et al.'s ``*_qa.json`` included).

Each row needs ``question`` and ``answer`` (or ``label``): true/false, yes/no or 1/0. A JSON file
may be a list of rows or an object whose ``data`` key holds them (``sports_qa.json`` format).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Union

from drope_lens.tasks.base import YES_NO_PROMPT, TaskDataset, TaskItem, sample_balanced

OPTIONS = ("Yes", "No")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


def _rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data.get("data", []) if isinstance(data, dict) else data
    raise ValueError(f"{path}: use .csv, .tsv, .jsonl or .json.")


def load_yes_no_file(path: Union[str, Path], *, name: str = "custom", category: str = "parametric",
                     n: Optional[int] = None, seed: int = 0) -> TaskDataset:
    """Yes/no questions from a file; with ``n``, a balanced sample (``random.Random(seed)``)."""
    path = Path(path)
    items = []
    for i, row in enumerate(_rows(path)):
        if not isinstance(row, dict) or "question" not in row:
            raise ValueError(f"{path}, row {i}: needs a 'question'.")
        raw = row.get("answer", row.get("label"))
        key = str(raw).strip().lower()
        if key not in _TRUE | _FALSE:
            raise ValueError(f"{path}, row {i}: answer {raw!r} is not true/false, yes/no or 1/0.")
        q = str(row["question"]).strip()
        items.append(TaskItem(YES_NO_PROMPT.format(question=q), "Yes" if key in _TRUE else "No",
                              {"question": q}))
    if not items:
        raise ValueError(f"{path} holds no questions.")
    pool = items
    if n is not None:
        items = sample_balanced(items, n, seed, what=str(path), options=OPTIONS)
    used = {it.meta["question"] for it in items}
    return TaskDataset(name, category, "choice", items, OPTIONS, source=str(path),
                       template=YES_NO_PROMPT, slot="question", content_key="question",
                       demo_pool=[it for it in pool if it.meta["question"] not in used])
