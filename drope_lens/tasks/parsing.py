"""Answer parsing: the study's rules (study-compatible mode) and the passkey exact match."""

from __future__ import annotations

import re
from typing import Optional

YES_WORDS = ("yes", "true", "correct", "right")
NO_WORDS = ("no", "false", "incorrect", "wrong")


def check_yes_no(response: str) -> Optional[str]:
    """The study's ``check_yes_no`` (§6.2): ``"Yes"``, ``"No"`` or ``None`` (unparseable).

    Lower-cased and stripped; a first word starting with "yes"/"no" decides (so "not", "none" →
    No). Otherwise the number of YES_WORDS vs NO_WORDS occurring as substrings of the first 100
    characters (each word counted once; "no" also matches "know", "incorrect" also "correct"),
    larger wins, a tie is unparseable. Quirks kept on purpose.
    """
    text = response.lower().strip()
    words = text.split()
    if words and words[0].startswith("yes"):
        return "Yes"
    if words and words[0].startswith("no"):
        return "No"
    head = text[:100]
    yes = sum(w in head for w in YES_WORDS)
    no = sum(w in head for w in NO_WORDS)
    if yes > no:
        return "Yes"
    if no > yes:
        return "No"
    return None


def parse_sentiment(response: str) -> Optional[str]:
    """The study's IMDB parse (§6.4): only one word present → it; both → the first; neither → None."""
    text = response.lower()
    p, n = text.find("positive"), text.find("negative")
    if p < 0 and n < 0:
        return None
    if n < 0 or (0 <= p < n):
        return "Positive"
    return "Negative"


def first_number(response: str) -> Optional[str]:
    """The first maximal run of digits in ``response`` (``None`` if there is none)."""
    m = re.search(r"\d+", response)
    return m.group(0) if m else None


def passkey_exact(response: str, key: str) -> bool:
    """drope_lens's passkey rule: the first run of digits in the continuation equals the key."""
    return first_number(response) == key


def passkey_substring(response: str, key: str) -> bool:
    """The study's passkey rule (§6.5): the key occurs anywhere in the continuation."""
    return key in response


def passkey_done(response: str, key_len: int) -> bool:
    """True once the first digit run is closed (a non-digit follows) or longer than the key."""
    m = re.search(r"\d+", response)
    return m is not None and (m.end() < len(response) or len(m.group(0)) > key_len)
