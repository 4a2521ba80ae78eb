"""Your own yes/no questions: CSV/TSV, JSONL or JSON (Jin et al.'s ``*_qa.json`` included).

Each row needs ``question`` and ``answer`` (or ``label``): true/false, yes/no or 1/0. A JSON file
may be a list of rows or an object whose ``data`` key holds them (``sports_qa.json`` format).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from drope_lens.errors import DropeLensInputError
from drope_lens.tasks.base import YES_NO_PROMPT, TaskDataset, TaskItem, read_rows, sample_balanced, unused_items

OPTIONS = ("Yes", "No")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


def load_yes_no_file(
    path: Union[str, Path],
    *,
    name: str = "custom",
    category: str = "parametric",
    n: Optional[int] = None,
    seed: int = 0,
) -> TaskDataset:
    """Yes/no questions from a file; with ``n``, a balanced sample (``random.Random(seed)``)."""
    path = Path(path)
    items = []
    for i, row in enumerate(read_rows(path, "question, answer")):
        if not isinstance(row, dict) or "question" not in row:
            raise DropeLensInputError(f"{path}, row {i}: needs a 'question'.")
        raw = row.get("answer", row.get("label"))
        key = str(raw).strip().lower()
        if key not in _TRUE | _FALSE:
            raise DropeLensInputError(f"{path}, row {i}: answer {raw!r} is not true/false, yes/no or 1/0.")
        q = str(row["question"]).strip()
        items.append(TaskItem(YES_NO_PROMPT.format(question=q), "Yes" if key in _TRUE else "No", {"question": q}))
    if not items:
        raise DropeLensInputError(f"{path} holds no questions.")
    pool = items
    if n is not None:
        items = sample_balanced(items, n, seed, what=str(path), options=OPTIONS)
    return TaskDataset(
        name,
        category,
        "choice",
        items,
        OPTIONS,
        source=str(path),
        template=YES_NO_PROMPT,
        slot="question",
        content_key="question",
        demo_pool=unused_items(pool, items, "question"),
    )
