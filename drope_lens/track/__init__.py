"""Tracking a recalibration: drope_lens's analyses run on every checkpoint of a run (a pipeline over
checkpoints, beside :mod:`drope_lens.report`)."""

from drope_lens.track.pipeline import (
    DEFAULT_METRICS,
    METRIC_GROUPS,
    TrackPoint,
    TrackResult,
    checkpoint_points,
    track,
)

__all__ = ["DEFAULT_METRICS", "METRIC_GROUPS", "TrackPoint", "TrackResult", "checkpoint_points", "track"]
