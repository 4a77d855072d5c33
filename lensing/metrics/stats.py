"""Mergeable moment statistics: geometry metrics over any number of vectors in O(d^2) memory.

Accumulate batches with `update` (or per shard / worker, then `merge`) and read the metrics
at the end; they equal the `lensing.metrics.geometry` functions on all the rows at once, and
raise the same ValueErrors (NaN or inf rows, too few rows for the metric).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from lensing.metrics.geometry import (
    _check,
    _clean,
    _directions,
    _effective_rank,
    _frechet,
    _need_rows,
    _pairwise_cosine,
    _participation_ratio,
    _rankme,
    _stable_rank,
)

_SEEN = "MomentStats has seen"


@dataclass(frozen=True)
class MomentStats:
    """Count, mean, centred scatter matrix, sum of norms, and sum and count of unit vectors of a set of rows (float64).

    The second moment is kept centred (Chan et al.'s pairwise update) rather than as a raw Gram
    sum, so the covariance of a tightly collapsed cloud far from the origin does not drown in
    cancellation; `sum` and `gram` are derived from it. Zero rows have no unit vector, so
    `unit_count` counts the nonzero rows. Merging is exact up to rounding.

    >>> x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    >>> stats = MomentStats.empty(4).update(x[:30]).merge(MomentStats.empty(4).update(x[30:]))
    >>> stats.count, torch.allclose(stats.covariance, torch.cov(x.T.double(), correction=0))
    (100, True)
    """

    count: int
    mean: Float[Tensor, " d"]
    scatter: Float[Tensor, "d d"]
    norm_sum: Float[Tensor, ""]
    unit_sum: Float[Tensor, " d"]
    unit_count: int

    @classmethod
    def empty(cls, d: int, device: torch.device | str | None = None) -> MomentStats:
        """Statistics of no vectors of dimension `d`, the identity of `merge`."""

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return cls(0, zeros(d), zeros(d, d), zeros(), zeros(d), 0)

    def update(self, x: Float[Tensor, "n d"]) -> MomentStats:
        """Statistics of the rows seen so far plus the rows of `x` (a new object)."""
        _check("x", x, need=0)
        x = x.double()
        centred = x - x.mean(0)
        units, nonzero = _directions(x)
        batch = MomentStats(
            x.shape[0], x.mean(0), centred.T @ centred, x.norm(dim=-1).sum(), units.sum(0), int(nonzero.sum())
        )
        return self.merge(batch)

    def merge(self, other: MomentStats) -> MomentStats:
        """Statistics of the union of both sets of rows, as if accumulated in one pass."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        return MomentStats(
            n,
            self.mean + delta * (other.count / n),
            self.scatter + other.scatter + torch.outer(delta, delta) * (self.count * other.count / n),
            self.norm_sum + other.norm_sum,
            self.unit_sum + other.unit_sum,
            self.unit_count + other.unit_count,
        )

    @property
    def sum(self) -> Float[Tensor, " d"]:
        """Sum of the rows."""
        return self.mean * self.count

    @property
    def gram(self) -> Float[Tensor, "d d"]:
        """Uncentred sum of outer products x^T x."""
        return self.scatter + self.count * torch.outer(self.mean, self.mean)

    @property
    def covariance(self) -> Float[Tensor, "d d"]:
        """Population (1/n) covariance."""
        _need_rows(_SEEN, self.count, 1, "a covariance")
        return self.scatter / self.count

    def _power(self, center: bool) -> Float[Tensor, " k"]:
        """Squared singular values of the (centred) data matrix: eigenvalues of its scatter or Gram matrix."""
        _need_rows(_SEEN, self.count, 1, "a spectrum")
        d = self.mean.shape[0]
        gram = self.gram
        power = torch.linalg.eigvalsh(self.scatter if center else gram).flip(0)[: min(self.count, d)]
        return _clean(power.clamp(min=0), gram.trace(), self.count, d)

    def effective_rank(self, center: bool = True) -> Float[Tensor, ""]:
        """`geometry.effective_rank` of all rows seen."""
        return _effective_rank(self._power(center))

    def rankme(self, eps: float = 1e-7) -> Float[Tensor, ""]:
        """`geometry.rankme` of all rows seen."""
        return _rankme(self._power(center=False), eps)

    def participation_ratio(self, center: bool = True) -> Float[Tensor, ""]:
        """`geometry.participation_ratio` of all rows seen."""
        return _participation_ratio(self._power(center))

    def stable_rank(self, center: bool = False) -> Float[Tensor, ""]:
        """`geometry.stable_rank` of all rows seen."""
        return _stable_rank(self._power(center))

    def mean_pairwise_cosine(self) -> Float[Tensor, ""]:
        """`geometry.mean_pairwise_cosine` of all rows seen (zero rows left out)."""
        return _pairwise_cosine(self.unit_sum, self.unit_count, _SEEN)

    def mean_norm(self) -> Float[Tensor, ""]:
        """Mean Euclidean norm of the rows."""
        _need_rows(_SEEN, self.count, 1, "a mean norm")
        return self.norm_sum / self.count

    def frechet_distance(self, other: MomentStats) -> Float[Tensor, ""]:
        """`geometry.frechet_distance` between the rows seen here and those seen by `other`."""
        for stats in (self, other):
            _need_rows(_SEEN, stats.count, 2, "a covariance")
        return _frechet(self.mean, self.scatter / (self.count - 1), other.mean, other.scatter / (other.count - 1))
