"""Task items and datasets shared by every knowledge task.

A :class:`TaskDataset` is a list of :class:`TaskItem` plus how to score it: ``kind="choice"``
(compare the log-probabilities of ``options``; ``item.answer`` is one of them) or
``kind="passkey"`` (generate and match ``item.answer``, a digit string). ``item.text`` is the
plain prompt, exactly as a base model sees it; the runner may wrap it in a chat template.

Completion items (``choices_key`` set): each item carries its own candidate continuations in
``item.meta[choices_key]`` (one string per option label, e.g. ``("A", "B")`` → the true country
and a distractor); the prompt never lists them, so the answer must come from the weights.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from drope_lens.errors import CorruptFileError, DropeLensInputError, MissingFileError

CATEGORIES = {"cities": "parametric", "sports": "parametric", "sentiment": "contextual", "passkey": "contextual"}

YES_NO_PROMPT = "Answer with only 'Yes' or 'No'.\n\nQuestion: {question}\nAnswer:"
#: Option labels of completion items (positions in ``item.meta[choices_key]``).
SLOTS = ("A", "B")


def read_rows(path: Path, what: str = "columns/keys") -> list:
    """Rows of a task file: CSV/TSV (header line), JSONL, or JSON (a list, or ``{"data": [...]}``).

    A missing file raises :class:`MissingFileError`, unparsable contents :class:`CorruptFileError`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
        raise DropeLensInputError(f"{path}: use .csv, .tsv, .jsonl or .json ({what}).")
    if not path.is_file():
        raise MissingFileError(f"{path}: no such task file")
    try:
        if suffix in (".csv", ".tsv"):
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",", strict=True))
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise CorruptFileError(f"{path} is not valid {suffix[1:].upper()} ({exc}); fix the file ({what})") from exc
    data = data.get("data", data) if isinstance(data, dict) else data
    if not isinstance(data, list):
        raise CorruptFileError(
            f'{path}: expected a JSON list of rows (or {{"data": [...]}}), got {type(data).__name__}'
        )
    return data


@dataclass
class TaskItem:
    """One prompt and its correct answer (an option word, or the passkey digits)."""

    text: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def two_way_item(
    text: str, subject_key: str, subject: str, correct_key: str, correct: str, distractor: str, true_first: bool
) -> TaskItem:
    """A completion item with ``correct`` and ``distractor`` as options A / B (``correct`` first if ``true_first``).

    ``meta`` is ``{subject_key: subject, "choices": [...], correct_key: correct}``.
    """
    choices = [correct, distractor] if true_first else [distractor, correct]
    return TaskItem(
        text,
        SLOTS[0] if true_first else SLOTS[1],
        {subject_key: subject, "choices": choices, correct_key: correct},
    )


@dataclass
class TaskDataset:
    """A named, categorised list of items with its scoring kind and answer options."""

    name: str
    category: str
    kind: str
    items: list[TaskItem]
    options: tuple[str, ...] = ()
    source: str = ""
    #: The prompt template (``str.format`` with one field ``slot``) and the item meta key holding
    #: each item's content; used for content-free prompts (calibration) and demonstrations.
    template: str = ""
    slot: str = ""
    content_key: str = ""
    #: Items disjoint from ``items`` (no shared city / athlete / review) to draw demonstrations from.
    demo_pool: list[TaskItem] = field(default_factory=list)
    #: Completion items: the meta key holding each item's continuations (one per option label).
    choices_key: str = ""

    def choices(self, item: TaskItem) -> tuple[str, ...]:
        """The text scored for each option of ``item`` (its own continuations, or the options)."""
        return tuple(item.meta[self.choices_key]) if self.choices_key else tuple(self.options)

    def answer_text(self, item: TaskItem) -> str:
        """The correct continuation of ``item`` (what a demonstration shows after its prompt)."""
        return self.choices(item)[self.options.index(item.answer)]

    def fill(self, content: str) -> str:
        """The task's template with ``content`` in its slot."""
        if not self.template or not self.slot:
            raise DropeLensInputError(
                f"Task {self.name!r} has no template/slot; calibrated and few-shot "
                "scoring need them (set template=, slot=, content_key=)."
            )
        return self.template.format(**{self.slot: content})

    def __post_init__(self) -> None:
        if self.category not in ("parametric", "contextual"):
            raise DropeLensInputError(f"category must be 'parametric' or 'contextual', got {self.category!r}")
        if self.kind not in ("choice", "passkey"):
            raise DropeLensInputError(f"kind must be 'choice' or 'passkey', got {self.kind!r}")
        if self.kind == "choice":
            if len(self.options) < 2:
                raise DropeLensInputError(f"Task {self.name!r}: a choice task needs >= 2 options.")
            bad = [it.answer for it in self.items if it.answer not in self.options]
            if bad:
                raise DropeLensInputError(
                    f"Task {self.name!r}: answers {sorted(set(bad))[:5]} are not in the options {self.options}."
                )
            if self.choices_key:
                for it in [*self.items, *self.demo_pool]:
                    got = it.meta.get(self.choices_key)
                    if not isinstance(got, (list, tuple)) or len(got) != len(self.options) or len(set(got)) != len(got):
                        raise ValueError(
                            f"Task {self.name!r}: item meta[{self.choices_key!r}] must "
                            f"hold {len(self.options)} distinct continuations, got {got!r}."
                        )

    def __len__(self) -> int:
        return len(self.items)

    def label_counts(self) -> dict[str, int]:
        """How many items have each answer (choice tasks) or each prompt length (passkey)."""
        if self.kind == "passkey":
            return dict(Counter(str(it.meta.get("length")) for it in self.items))
        return {opt: sum(it.answer == opt for it in self.items) for opt in self.options}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category,
            "kind": self.kind,
            "options": list(self.options),
            "source": self.source,
            "choices_key": self.choices_key,
            "label_counts": self.label_counts(),
            "items": [it.to_dict() for it in self.items],
        }

    def to_dataframe(self):
        import pandas as pd

        rows = [{"text": it.text, "answer": it.answer, **it.meta} for it in self.items]
        return pd.DataFrame(rows)


def check_n(n: Optional[int], available: int, what: str) -> int:
    """``n`` (default: everything) checked against what the source holds."""
    if n is None:
        return available
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DropeLensInputError(f"n must be a positive int, got {n!r}")
    if n > available:
        raise DropeLensInputError(f"n={n} is more than the {available} items {what} can provide.")
    return n


def sample_balanced(
    items: Sequence[TaskItem], n: Optional[int], seed: int, *, what: str, options: Sequence[str]
) -> list[TaskItem]:
    """``n`` items with the answers as balanced as possible (counts differ by at most 1), shuffled.

    Deterministic in ``seed`` (``random.Random(seed)``; the global RNG is never touched). The
    first ``n mod k`` options get the extra item when ``n`` is not a multiple of ``k = len(options)``.
    """
    by_answer = {opt: [it for it in items if it.answer == opt] for opt in options}
    n = check_n(n, len(items), what)
    k = len(options)
    want = {opt: n // k + (1 if i < n % k else 0) for i, opt in enumerate(options)}
    for opt in options:
        if want[opt] > len(by_answer[opt]):
            raise DropeLensInputError(
                f"n={n} needs {want[opt]} '{opt}' items but {what} has only "
                f"{len(by_answer[opt])}; the largest balanced n is "
                f"{k * min(len(v) for v in by_answer.values())}."
            )
    rng = random.Random(seed)
    out: list[TaskItem] = []
    for opt in options:
        out.extend(rng.sample(by_answer[opt], want[opt]))
    rng.shuffle(out)
    return out


def unused_items(pool: Sequence[TaskItem], items: Sequence[TaskItem], key: str) -> list[TaskItem]:
    """The ``pool`` items whose ``meta[key]`` no chosen item has: the demonstration pool of a task."""
    used = {it.meta[key] for it in items}
    return [it for it in pool if it.meta[key] not in used]


def convert_to_question(statement: str) -> str:
    """The study's statement → question rule: "The city of X is in Y." → "Is the city of X in Y?"."""
    s = statement.strip()
    words = s.split(" ")
    if "is" not in words:
        raise DropeLensInputError(f"Cannot turn {statement!r} into a question: no standalone 'is'.")
    words.remove("is")
    body = " ".join(words)
    body = body[:1].lower() + body[1:]
    if body.endswith("."):
        body = body[:-1] + "?"
    return "Is " + body


def indefinite(noun: str) -> str:
    """``"a tennis"`` / ``"an ice hockey"``."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun
