"""Analyses: each takes a model and texts (or a TokenBatch) and returns a dataclass with to_dict()."""

from drope_lens.analysis.bos_write import BosWrite, bos_v_ablation_hooks, bos_write, bos_write_experiment
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
from drope_lens.analysis.extended import Extended, run_extended
from drope_lens.analysis.head_classes import HeadClasses, classify_heads, head_classes, pattern_metrics
from drope_lens.analysis.interventions import PhaseExperiment, phase_experiment
from drope_lens.analysis.layer_ablation import LayerAblation, layer_ablation, layer_ablation_hooks
from drope_lens.analysis.layer_norms import LayerNorms, layer_norms
from drope_lens.analysis.massive import MassiveValues, detect_massive
from drope_lens.analysis.peers import (
    KeyImportance,
    MassiveSimilarity,
    key_importance,
    massive_similarity,
)
from drope_lens.analysis.perplexity import PerplexityResult, perplexity
from drope_lens.analysis.profile import PhaseProfile
from drope_lens.analysis.profile_pass import phase_profile
from drope_lens.analysis.residual import (
    ResidualComparison,
    ResidualIntervention,
    ResidualMassive,
    compare_residual_massive,
    massive_activation_hooks,
    residual_intervention,
    residual_massive_activations,
)
from drope_lens.hooks.conditions import condition_hooks

__all__ = [
    "ContextComparison",
    "ContextExperiment",
    "context_experiment",
    "pair_context_experiment",
    "DisruptionComparison",
    "DisruptionResult",
    "compare_disruption",
    "run_disruption",
    "MassiveValues",
    "detect_massive",
    "PerplexityResult",
    "perplexity",
    "PhaseExperiment",
    "PhaseProfile",
    "condition_hooks",
    "phase_experiment",
    "phase_profile",
    "BosWrite",
    "bos_v_ablation_hooks",
    "bos_write",
    "bos_write_experiment",
    "Extended",
    "run_extended",
    "HeadClasses",
    "classify_heads",
    "head_classes",
    "pattern_metrics",
    "LayerAblation",
    "layer_ablation",
    "layer_ablation_hooks",
    "LayerNorms",
    "layer_norms",
    "ResidualComparison",
    "ResidualIntervention",
    "ResidualMassive",
    "compare_residual_massive",
    "massive_activation_hooks",
    "residual_intervention",
    "residual_massive_activations",
    "KeyImportance",
    "MassiveSimilarity",
    "key_importance",
    "massive_similarity",
]
