"""The one layout of per-cell result tables (``to_dataframe``): one row per cell of ``[a, b]`` arrays."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def cell_frame(model: str, axes: tuple[str, str], columns: Mapping[str, np.ndarray]):
    """A DataFrame with one row per cell ``(i, j)`` of the ``[a, b]`` columns, ``i`` outer: ``model``, the two
    indices (named by ``axes``) and each column's value at the cell. A ``[text, a, b]`` column gives its
    mean over texts at the cell (``x[:, i, j].mean()``)."""
    import pandas as pd

    n_a, n_b = next(iter(columns.values())).shape[-2:]

    def cell(x: np.ndarray, i: int, j: int):
        return x[:, i, j].mean() if x.ndim == 3 else x[i, j]

    return pd.DataFrame(
        [
            {"model": model, axes[0]: i, axes[1]: j, **{k: cell(v, i, j) for k, v in columns.items()}}
            for i in range(n_a)
            for j in range(n_b)
        ]
    )
