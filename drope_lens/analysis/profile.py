"""The phase profile of one model on one set of texts: :class:`PhaseProfile` and its options.

Per-text arrays (sink scores and Gu importance per head, BOS norm/ratio, entropy, anisotropy per
layer) with per-layer curves, headline numbers and exports. Sink and Gu rates are
:func:`drope_lens.analysis.sinks.sink_rate` / :func:`~drope_lens.analysis.sinks.gu_sink_rate` of the
per-head scores. It is computed by :func:`drope_lens.analysis.profile_pass.phase_profile`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from jaxtyping import Float

from drope_lens.analysis import bos_metrics, sinks
from drope_lens.options import LAST_LAYER_MODES, SINK_SOURCES, PhaseOptions  # noqa: E402,F401  (re-exported)

#: ``phase_profile``'s options and their defaults (:class:`~drope_lens.options.PhaseOptions`).
PROFILE_DEFAULTS = PhaseOptions().profile_kwargs()


def _mean_std(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return a.mean(0), a.std(0)  # population std over texts, as the study; NaN propagates


@dataclass
class PhaseProfile:
    """Per-layer phase metrics of one model on one set of texts (means/std over texts).

    Per-text arrays have shape ``[text, layer]`` (``[text, layer, head]`` for heads); the
    aggregated ones drop the first axis.
    """

    sink_scores_per_text: Float[np.ndarray, "text layer head"]
    gu_importance_per_text: Float[np.ndarray, "text layer head"]
    bos_norm_per_text: Float[np.ndarray, "text layer"]
    bos_ratio_per_text: Float[np.ndarray, "text layer"]
    entropy_sq_per_text: Float[np.ndarray, "text layer"]
    entropy_norm_per_text: Float[np.ndarray, "text layer"]
    anisotropy_per_text: Float[np.ndarray, "text layer"]
    lengths: list[int]
    # the profile options used (defaults: PhaseOptions's)
    tau: float = PhaseOptions.tau
    gu_eps: float = PhaseOptions.gu_eps
    include_bos_row: bool = PhaseOptions.include_bos_row
    last_layer: str = PhaseOptions.last_layer
    attention: str = PhaseOptions.attention
    spike_threshold: float = PhaseOptions.spike_threshold
    sinks_from: str = PhaseOptions.sinks_from
    model: str = ""
    position_encoding: str = ""
    wall_s: float = 0.0

    # ---- per layer ------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.bos_norm_per_text.shape[1]

    @property
    def sink_score(self) -> Float[np.ndarray, "layer head"]:
        """Per-head sink score map (mean over texts) — for views."""
        return self.sink_scores_per_text.mean(0)

    @property
    def gu_importance(self) -> Float[np.ndarray, "layer head"]:
        return self.gu_importance_per_text.mean(0)

    @property
    def sink_rate_per_text(self) -> Float[np.ndarray, "text layer"]:
        return sinks.sink_rate(torch.as_tensor(self.sink_scores_per_text), self.tau).numpy()

    @property
    def gu_rate_per_text(self) -> Float[np.ndarray, "text layer"]:
        return sinks.gu_sink_rate(torch.as_tensor(self.gu_importance_per_text), self.gu_eps).numpy()

    def layer_stats(self) -> dict[str, np.ndarray]:
        """Every per-layer curve, ``name`` (mean over texts) and ``name_std`` (population std)."""
        out: dict[str, np.ndarray] = {}
        for name, arr in (
            ("sink_rate", self.sink_rate_per_text),
            ("gu_rate", self.gu_rate_per_text),
            ("bos_norm", self.bos_norm_per_text),
            ("bos_ratio", self.bos_ratio_per_text),
            ("entropy_sq", self.entropy_sq_per_text),
            ("entropy_norm", self.entropy_norm_per_text),
            ("anisotropy", self.anisotropy_per_text),
        ):
            out[name], out[name + "_std"] = _mean_std(arr)
        return out

    # ---- scalars ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Headline numbers: mean sink rate, Gu's Sink^ε, both spike layers, peak BOS, valleys."""
        st = self.layer_stats()
        peak_norm, peak_layer = bos_metrics.peak(st["bos_norm"], mode="max")
        h_sq, h_sq_layer = bos_metrics.peak(st["entropy_sq"], mode="min")
        h_n, h_n_layer = bos_metrics.peak(st["entropy_norm"], mode="min")
        return {
            "mean_sink_rate": float(np.mean(st["sink_rate"])),
            "gu_sink": float(np.mean(st["gu_rate"])),
            "spike_layer_argmax": bos_metrics.spike_layer(st["bos_ratio"], rule="argmax"),
            "spike_layer_first_above": bos_metrics.spike_layer(
                st["bos_ratio"], rule="first_above", threshold=self.spike_threshold
            ),
            "spike_threshold": self.spike_threshold,
            "max_bos_ratio": float(np.nanmax(st["bos_ratio"])) if not np.isnan(st["bos_ratio"]).all() else float("nan"),
            "peak_bos_norm": peak_norm,
            "peak_bos_layer": peak_layer,
            "min_entropy_sq": h_sq,
            "min_entropy_sq_layer": h_sq_layer,
            "min_entropy_norm": h_n,
            "min_entropy_norm_layer": h_n_layer,
            "uniform_sink_score": float(
                np.mean([sinks.uniform_sink_score(n, include_bos_row=self.include_bos_row) for n in self.lengths])
            ),
        }

    def spike_layer(self, rule: str = "argmax") -> Optional[int]:
        return bos_metrics.spike_layer(self.layer_stats()["bos_ratio"], rule=rule, threshold=self.spike_threshold)

    # ---- export ----------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("tau", "gu_eps", "include_bos_row", "last_layer", "attention", "spike_threshold", "sinks_from")
        }

    def to_dict(self, *, per_text: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "position_encoding": self.position_encoding,
            "options": self.options(),
            "n_texts": len(self.lengths),
            "lengths": list(self.lengths),
            "wall_s": round(self.wall_s, 3),
            "summary": self.summary(),
            "layers": {k: v.tolist() for k, v in self.layer_stats().items()},
            "sink_score": self.sink_score.tolist(),
            "gu_importance": self.gu_importance.tolist(),
        }
        if per_text:
            d["per_text"] = {
                f.name[: -len("_per_text")]: getattr(self, f.name).tolist()
                for f in dataclasses.fields(self)
                if f.name.endswith("_per_text")
            }
        return d

    def to_dataframe(self):
        """One row per layer with every per-layer curve."""
        import pandas as pd

        df = pd.DataFrame(self.layer_stats())
        df.insert(0, "layer", np.arange(self.n_layers))
        return df

    def head_dataframe(self):
        """Long format ``layer, head, sink_score, gu_importance`` (per-head maps)."""
        import pandas as pd

        n_l, n_h = self.sink_score.shape
        return pd.DataFrame(
            {
                "layer": np.repeat(np.arange(n_l), n_h),
                "head": np.tile(np.arange(n_h), n_l),
                "sink_score": self.sink_score.ravel(),
                "gu_importance": self.gu_importance.ravel(),
            }
        )
