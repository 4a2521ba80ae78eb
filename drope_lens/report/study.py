"""The study's published numbers (``study_numbers.json``) and whether a pair is the study's own."""

from __future__ import annotations

import functools
import json
from importlib import resources

STUDY_ROPE = "llama-2-7b-hf"
STUDY_DROPE = "llama-2-7b-hf-drope"


@functools.lru_cache(maxsize=1)
def _study_text() -> str:
    return (resources.files("drope_lens") / "report" / "study_numbers.json").read_text(encoding="utf-8")


def study_numbers() -> dict:
    """The study's numbers with provenance flags (a fresh dict each call)."""
    return json.loads(_study_text())


def study_status(key: str) -> str:
    """The provenance flag of one ``study_numbers.json`` entry (committed, hard-coded, untraceable, …)."""
    for entry in study_numbers()["entries"]:
        if entry["key"] == key:
            return str(entry["status"])
    raise KeyError(f"no study number {key!r} in study_numbers.json")


def is_study_pair(pair) -> bool:
    """True when the pair is Llama-2-7B and SakanaAI's DroPE of it (by source id or folder name)."""

    def name(model) -> str:
        src = str(getattr(model.cfg, "source", "") or model.cfg.model_name)
        return src.rstrip("/").split("/")[-1].lower()

    return name(pair.rope) == STUDY_ROPE and name(pair.drope) == STUDY_DROPE
