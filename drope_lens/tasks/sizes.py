"""Items per knowledge task (passkey: per length): the library default, the report's, the quick and benchmark
sizes. Defined in :mod:`drope_lens.options` (importable without torch, for the CLI's help) and re-exported here."""

from __future__ import annotations

from drope_lens.options import DEFAULT_N, QUICK_N, REPORT_N, scaled_n

__all__ = ["DEFAULT_N", "QUICK_N", "REPORT_N", "scaled_n"]
