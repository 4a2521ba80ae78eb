"""Validation of results.json against the documented schema (``results.schema.json``)."""

from __future__ import annotations

import json
from importlib import resources


def results_schema() -> dict:
    return json.loads((resources.files("drope_lens") / "report" / "results.schema.json").read_text())


def validate_results(results: dict) -> None:
    """Raise ``jsonschema.ValidationError`` if ``results`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(results, results_schema())
