"""Analyses: each takes a model and texts (or a TokenBatch) and returns a dataclass with to_dict()."""

from drope_lens.analysis.context import (
    ContextComparison,
    ContextExperiment,
    context_experiment,
    pair_context_experiment,
)
from drope_lens.analysis.disruption import (
    DisruptionComparison,
    DisruptionResult,
    compare_disruption,
    run_disruption,
)
from drope_lens.analysis.massive import MassiveValues, detect_massive
from drope_lens.analysis.perplexity import PerplexityResult, perplexity
from drope_lens.analysis.phase import (
    PhaseExperiment,
    PhaseProfile,
    condition_hooks,
    phase_experiment,
    phase_profile,
)

__all__ = [
    "ContextComparison", "ContextExperiment", "context_experiment", "pair_context_experiment",
    "DisruptionComparison", "DisruptionResult", "compare_disruption", "run_disruption",
    "MassiveValues", "detect_massive", "PerplexityResult", "perplexity",
    "PhaseExperiment", "PhaseProfile", "condition_hooks", "phase_experiment", "phase_profile",
]
