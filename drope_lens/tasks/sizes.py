"""Items per knowledge task (passkey: per length): the library default, the report's, the quick and benchmark sizes."""

from __future__ import annotations


def scaled_n(n: int) -> dict[str, int]:
    """``n`` cities and sports items, half as many sentiment, a quarter as many passkeys (each >= 1)."""
    return {"cities": n, "sports": n, "sentiment": max(1, n // 2), "passkey": max(1, n // 4)}


#: :func:`~drope_lens.tasks.runner.run_tasks` and ``drope-lens tasks`` without ``n``.
DEFAULT_N = {"cities": 200, "sports": 100, "sentiment": 100, "passkey": 20}
#: The report's tasks step (passkey: per length), sized for the 2-core CPU budget.
REPORT_N = {"cities": 100, "sports": 60, "sentiment": 48, "passkey": 12}
#: ``drope-lens report --quick``.
QUICK_N = scaled_n(8)
