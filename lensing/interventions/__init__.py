"""Causal instruments for latent reasoning: interventions on latent steps during generation,
effects on the answer with paired bootstrap CIs, and latent-aware activation patching."""

from lensing.interventions.generation import (
    DECISION_KINDS,
    KINDS,
    LATENT_KINDS,
    Intervention,
    InterventionResult,
    InterventionSweep,
    LatentHook,
    intervene,
    intervention_sweep,
)
from lensing.interventions.stats import bootstrap_ci, bootstrap_ratio_ci

__all__ = [
    "DECISION_KINDS",
    "KINDS",
    "LATENT_KINDS",
    "Intervention",
    "InterventionResult",
    "InterventionSweep",
    "LatentHook",
    "bootstrap_ci",
    "bootstrap_ratio_ci",
    "intervene",
    "intervention_sweep",
]
