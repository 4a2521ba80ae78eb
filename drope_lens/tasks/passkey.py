"""Passkey retrieval (contextual): a 5-digit key hidden in filler text at a requested length and depth.

Each prompt is ``INTRO + filler_before + NEEDLE + filler_after + QUESTION``. The filler is a seeded
sequence of sentences written for this project (``drope_lens/data/passkey_filler.txt``, no digits),
cut at a word boundary so that the whole prompt, as the model sees it (BOS included, chat template
included when used), has the requested number of tokens (within 2%; in practice within a token or
two). ``depth`` is the fraction of filler tokens placed before the needle; the needle goes at the
sentence boundary nearest to it. The achieved length and depth are stored in each item's ``meta``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Optional, Sequence

from drope_lens.errors import DropeLensInputError
from drope_lens.tasks.base import TaskDataset, TaskItem

FILLER_FILE = Path(__file__).resolve().parent.parent / "data" / "passkey_filler.txt"
INTRO = "A secret passkey is hidden somewhere in the text below. Find it and remember it.\n\n"
NEEDLE = "The secret passkey is {key}. Remember this number."
QUESTION = "\n\nWhat is the secret passkey mentioned above? Answer with just the number:"
LENGTH_TOLERANCE = 0.02
MIN_FILLER_TOKENS = 8


def filler_sentences() -> list[str]:
    return [s.strip() for s in FILLER_FILE.read_text(encoding="utf-8").splitlines() if s.strip()]


def make_keys(n: int, seed: int) -> list[str]:
    """``n`` distinct 5-digit keys from ``random.Random(seed)``."""
    return [str(k) for k in random.Random(seed).sample(range(10000, 100000), n)]


class _Counter:
    """Token length of a prompt as drope_lens feeds it: BOS + tokens of ``wrap(text)``."""

    def __init__(self, tokenizer, wrap: Callable[[str], str]):
        self.tokenizer, self.wrap = tokenizer, wrap

    def raw(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, text: str) -> int:
        return 1 + self.raw(self.wrap(text))


def _join(words: Sequence[str]) -> str:
    """Filler words as text, closed with a full stop when cut inside a sentence."""
    text = " ".join(words)
    return text if not text or text.endswith(".") else text + "."


def assemble(before: str, key: str, after: str) -> str:
    middle = " ".join(p for p in (before, NEEDLE.format(key=key), after) if p)
    return INTRO + middle + QUESTION


def build_prompt(
    tokenizer,
    key: str,
    length: int,
    depth: float,
    rng: random.Random,
    *,
    wrap: Callable[[str], str] = lambda s: s,
    n_ctx: Optional[int] = None,
) -> TaskItem:
    """One passkey item of ``length`` tokens (BOS included) with the needle at ``depth``."""
    if not 0.0 <= depth <= 1.0:
        raise DropeLensInputError(f"depth must be in [0, 1], got {depth}")
    if n_ctx is not None and length > n_ctx:
        raise DropeLensInputError(f"length={length} is more than the model's n_ctx={n_ctx}.")
    count = _Counter(tokenizer, wrap)
    overhead = count.prompt(assemble("", key, ""))
    if length < overhead + MIN_FILLER_TOKENS:
        raise DropeLensInputError(
            f"length={length} is too short: the intro, passkey sentence and question "
            f"alone take {overhead} tokens; use at least {overhead + MIN_FILLER_TOKENS}."
        )
    sentences = filler_sentences()
    sizes = {sent: count.raw(" " + sent) for sent in sentences}  # near-additive token counts
    words: list[str] = []
    ends: list[int] = []  # word counts at sentence ends
    approx = 0
    while approx < length:  # enough filler to cut from
        sent = rng.choice(sentences)
        words += sent.split(" ")
        ends.append(len(words))
        approx += sizes[sent]
    lo, hi = 1, len(words)  # largest k with prompt(k words) <= length
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count.prompt(assemble(_join(words[:mid]), key, "")) <= length:
            lo = mid
        else:
            hi = mid - 1
    words = words[:lo]
    total = count.raw(_join(words))
    bounds = [0] + [e for e in ends if e < len(words)] + [len(words)]
    offs = [0]
    for a, b in zip(bounds[:-2], bounds[1:-1], strict=True):
        offs.append(offs[-1] + sizes[" ".join(words[a:b])])
    offs.append(total)
    best = min(range(len(bounds)), key=lambda i: (abs(offs[i] - depth * total), i))
    split = bounds[best]
    before, after = _join(words[:split]), _join(words[split:])
    text = assemble(before, key, after)
    n_tokens = count.prompt(text)
    if abs(n_tokens - length) > LENGTH_TOLERANCE * length:
        raise RuntimeError(f"Could not build a {length}-token passkey prompt (got {n_tokens}).")
    return TaskItem(
        text,
        key,
        {
            "key": key,
            "length": length,
            "n_tokens": n_tokens,
            "depth": depth,
            "depth_actual": offs[best] / total if total else 0.0,
            "filler_tokens": total,
        },
    )


def load_passkey(
    tokenizer,
    *,
    lengths: Sequence[int] = (256, 512),
    n: int = 20,
    depth: float = 0.5,
    seed: int = 0,
    wrap: Callable[[str], str] = lambda s: s,
    n_ctx: Optional[int] = None,
) -> TaskDataset:
    """``n`` passkey prompts per length (distinct keys per length, ``random.Random`` seeded).

    Args:
        tokenizer: the models' tokenizer (lengths are measured with it).
        wrap: turns a plain prompt into what the model sees (e.g. a chat template); the length
            includes what it adds.
        n_ctx: the model's context window; longer ``lengths`` are refused.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DropeLensInputError(f"n must be a positive int, got {n!r}")
    if not lengths:
        raise DropeLensInputError("lengths is empty.")
    items: list[TaskItem] = []
    for length in lengths:
        keys = make_keys(n, seed * 1_000_003 + int(length))
        for i, key in enumerate(keys):
            rng = random.Random(f"passkey-{seed}-{length}-{i}")
            items.append(build_prompt(tokenizer, key, int(length), depth, rng, wrap=wrap, n_ctx=n_ctx))
    return TaskDataset("passkey", "contextual", "passkey", items, source="generated (project filler, seeded keys)")
