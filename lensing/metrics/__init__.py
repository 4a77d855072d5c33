"""Numbers for latent geometry: rank, anisotropy, distances, distribution shifts, similarity and linear probes."""

from lensing.metrics.geometry import (
    NearestToken,
    StepCosines,
    closest_pair,
    effective_rank,
    frechet_distance,
    latent_distance,
    linear_cka,
    mean_pairwise_cosine,
    mmd_rbf,
    nearest_token_cosine,
    norm_ratio,
    participation_ratio,
    rankme,
    stable_rank,
    step_cosines,
    vocab_distance,
)
from lensing.metrics.probing import ProbeResult, probe_accuracy
from lensing.metrics.stats import MomentStats

__all__ = [
    "MomentStats",
    "NearestToken",
    "ProbeResult",
    "StepCosines",
    "closest_pair",
    "effective_rank",
    "frechet_distance",
    "latent_distance",
    "linear_cka",
    "mean_pairwise_cosine",
    "mmd_rbf",
    "nearest_token_cosine",
    "norm_ratio",
    "participation_ratio",
    "probe_accuracy",
    "rankme",
    "stable_rank",
    "step_cosines",
    "vocab_distance",
]
