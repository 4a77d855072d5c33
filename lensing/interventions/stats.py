"""Seeded percentile bootstrap: confidence intervals for means and ratios of means over examples.

Resampling draws the same example indices for every quantity passed in one call, so the
intervals of a clean run and an intervened run over the same problems are *paired*.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

DEFAULT_RESAMPLES = 2000


def bootstrap_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` example indices drawn with replacement from a seeded generator."""
    if n < 1:
        raise ValueError("cannot bootstrap zero examples: give at least one")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Float[np.ndarray, " n"],
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap ``level`` interval: ``(mean, lo, hi)``.

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0, 1.0)
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("values contain NaN or inf; drop those examples first")
    draws = x[bootstrap_indices(len(x), resamples, seed)].mean(1)
    return (float(x.mean()), *_interval(draws, level))


def bootstrap_ratio_ci(
    numerator: Float[np.ndarray, " n"],
    denominator: Float[np.ndarray, " n"],
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``mean(numerator) / mean(denominator)`` with a paired percentile-bootstrap interval.

    A ratio of means (not a mean of per-example ratios) stays finite when single examples
    have denominators near zero, as in the fraction of a logit difference recovered by patching.

    >>> bootstrap_ratio_ci([1.0, 2.0], [2.0, 4.0])
    (0.5, 0.5, 0.5)
    """
    num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"numerator and denominator must be 1-D of one length, got {num.shape} and {den.shape}")
    if den.mean() == 0:
        raise ValueError("the mean denominator is zero: the ratio is undefined")
    idx = bootstrap_indices(len(num), resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = num[idx].mean(1) / den[idx].mean(1)
    draws[~np.isfinite(draws)] = np.nan
    return (float(num.mean() / den.mean()), *_interval(draws, level))
