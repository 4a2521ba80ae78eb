"""Statistics for the disruption experiment (scipy, not hand-rolled).

* :func:`percent_increase`: ``(ppl - base) / base * 100``.
* :func:`cohens_d`: ``mean(diff) / std(diff, ddof)`` of paired differences. ``ddof=0`` is the study's
  definition (``np.std``); ``ddof=1`` the usual sample version ("d_z" of paired data).
* :func:`paired_test`: ``scipy.stats.ttest_rel``. In the study's design the massive-zeroing value is
  constant over seeds, so this is a one-sample t-test of ``massive - random_s`` against 0: it only
  measures how far one fixed number sits from the spread of the random control, and its p-value
  shrinks with the number of seeds regardless of texts. Reported for comparison with the study.
* :func:`independent_test`: ``scipy.stats.ttest_ind`` (Student by default, like the study).
* :func:`bootstrap_ci`: ``scipy.stats.bootstrap`` with a seeded generator (BCa; percentile when the
  data are constant or BCa is undefined).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from numpy.typing import ArrayLike


def percent_increase(ppl, base: float):
    """Percentage change of ``ppl`` (scalar or array) relative to ``base``."""
    return (np.asarray(ppl, dtype=float) - base) / base * 100.0


def cohens_d(diff: ArrayLike, *, ddof: int = 0) -> float:
    """``mean(diff) / std(diff, ddof)``; NaN when the std is 0 or undefined."""
    d = np.asarray(diff, dtype=float)
    if d.size <= ddof:
        return float("nan")
    sd = float(np.std(d, ddof=ddof))
    return float(np.mean(d) / sd) if sd > 0 else float("nan")


def paired_test(a: ArrayLike, b: ArrayLike) -> dict:
    """Paired t-test (``scipy.stats.ttest_rel(a, b)``): ``{"t", "p", "df"}``; NaN if degenerate."""
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"paired_test needs two equal-length arrays of >= 2 values, got {x.shape}, {y.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(x, y)
    return {"t": float(res.statistic), "p": float(res.pvalue), "df": int(x.size - 1)}


def independent_test(a: ArrayLike, b: ArrayLike, *, equal_var: bool = True) -> dict:
    """Two-sample t-test (``scipy.stats.ttest_ind``; Student if ``equal_var``, else Welch)."""
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.size < 2 or y.size < 2:
        raise ValueError("independent_test needs at least 2 values per group.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(x, y, equal_var=equal_var)
    return {"t": float(res.statistic), "p": float(res.pvalue), "equal_var": equal_var}


def bootstrap_ci(
    values: ArrayLike,
    statistic: Callable = np.mean,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float]:
    """Seeded bootstrap confidence interval of ``statistic(values)`` (``scipy.stats.bootstrap``)."""
    from scipy import stats

    arr = np.asarray(values, dtype=float)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if arr.size == 0:
        raise ValueError("bootstrap_ci needs at least one value.")
    if arr.size == 1 or np.all(arr == arr[0]):
        v = float(statistic(arr))
        return (v, v)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # SciPy >= 1.15 takes ``rng``; older versions call it ``random_state``
            seed_kw = {"rng" if _has_rng_arg() else "random_state": np.random.default_rng(seed)}
            res = stats.bootstrap(
                (arr,), statistic, confidence_level=confidence, n_resamples=n_resamples, method=method, **seed_kw
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(lo) and np.isfinite(hi):
            return (lo, hi)
    return (float("nan"), float("nan"))


def _has_rng_arg() -> bool:
    import inspect

    from scipy import stats

    return "rng" in inspect.signature(stats.bootstrap).parameters
