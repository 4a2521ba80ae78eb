"""What each report step runs on: the built-in texts of each step, and the pair's models one by one (a leaf
module: the step modules import it, it imports none of them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional


def text_sets(options) -> dict[str, list[str]]:
    """The built-in texts each step uses.

    ``massive``: every built-in text (quick: the 5 identification texts); ``identify``: one text per
    genre, where the channels to zero are found; ``eval``: the held-out texts of the phase profile
    and its perplexities (quick: one per genre); ``disruption``: one held-out text per genre (a
    subset of ``eval``: 2 + ``n_seeds`` perplexity passes are the report's largest cost).
    """
    from drope_lens.data.texts import builtin_split, builtin_texts

    split = builtin_split()
    return {
        "massive": split["identify"] if options.quick else builtin_texts(),
        "identify": split["identify"],
        "eval": split["eval"][::2] if options.quick else split["eval"],
        "disruption": split["eval"][::2],
    }


def positions(sub: list[str], full: list[str]) -> Optional[list[int]]:
    """Where each text of ``sub`` sits in ``full`` (None if one is missing)."""
    try:
        return [full.index(t) for t in sub]
    except ValueError:
        return None


def each_model(pair) -> Iterator[tuple[str, Any]]:
    """``pair.items()`` with each model's progress bars labelled by its role (``"tasks · rope"``)."""
    from drope_lens.progress import progress_role

    for role, model in pair.items():
        with progress_role(role):
            yield role, model
