"""Geometry of sets of latent vectors: rank, anisotropy, distances and distribution shifts.

Every function is pure, takes row-stacked vectors (one sample per row) and computes in float64,
returning 0-dim float64 tensors for scalar metrics. "Feature collapse" (latents of different
samples converging to one point) shows as effective rank and participation ratio falling to 0
(centred) or 1 (uncentred), mean pairwise cosine rising to 1 and latent distance falling to 0.

Spectral metrics count squared singular values below floating point resolution as exactly zero,
so a numerically zero matrix (e.g. identical rows, centred) has rank 0 rather than the rank of
its rounding noise; the threshold is ``k * max(s_max^2, k * ||x||_F^2)`` with
``k = max(n, d) * eps`` and ``||x||_F`` taken before centring.

Inputs are checked rather than let through to a silent 0 or NaN: any NaN or inf raises a
ValueError naming the input, and so does a set too small for the metric (no rows; fewer than
two rows for pairs or a covariance). Zero rows have no direction, so the cosine metrics leave
them out of their pairs and means.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.nn.functional import normalize

_EXACT = "donot_use_mm_for_euclid_dist"  # the matmul shortcut loses the distances between near-identical points


def _check(name: str, x: Tensor, need: int = 1, what: str = "the metric") -> None:
    """Raises a ValueError naming input `name` if it holds NaN or inf or fewer than `need` rows."""
    bad = x.numel() - int(torch.isfinite(x).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf)")
    _need_rows(f"{name} has", x.shape[0], need, what)


def _need_rows(have: str, n: int, need: int, what: str, rows: str = "rows") -> None:
    """Raises a ValueError saying that `what` needs `need` rows where "`have` `n`"."""
    if n < need:
        raise ValueError(f"{what} needs at least {need} {rows}; {have} {n}")


def _resolution(n: int, d: int) -> float:
    """Relative floating point resolution of sums over an n x d float64 matrix: max(n, d) * eps."""
    return max(n, d) * torch.finfo(torch.float64).eps


def _directions(x: Float[Tensor, "... d"]) -> tuple[Float[Tensor, "... d"], Bool[Tensor, "..."]]:
    """Unit vectors along the rows of `x` (float64), zero for zero rows, and which rows are nonzero."""
    x = x.double()
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.where(norms > 0, x / norms, 0.0), norms[..., 0] > 0


def _pairwise_cosine(unit_sum: Float[Tensor, "... d"], count: Int[Tensor, "..."], have: str) -> Float[Tensor, "..."]:
    """Mean cosine over distinct pairs of `count` unit vectors summing to `unit_sum`: (||sum||^2 - n) / (n (n - 1))."""
    count = torch.as_tensor(count, device=unit_sum.device)
    what = "a mean pairwise cosine (zero rows have no direction)"
    _need_rows(have, int(count.min()), 2, what, rows="nonzero rows")
    return (unit_sum.square().sum(-1) - count) / (count * (count - 1))


def _power_spectrum(x: Float[Tensor, "n d"], center: bool) -> tuple[Float[Tensor, " k"], Float[Tensor, ""]]:
    """Squared singular values of (optionally row-centred) `x` and the uncentred squared Frobenius norm."""
    x = x.double()
    total = x.square().sum()
    if center:
        x = x - x.mean(0)
    return torch.linalg.svdvals(x).square(), total


def _clean(power: Float[Tensor, " k"], total: Float[Tensor, ""], n: int, d: int) -> Float[Tensor, " k"]:
    """Zeroes squared singular values that are rounding noise (see the module docstring)."""
    k = _resolution(n, d)
    tol = k * torch.maximum(power.max(), k * total)
    return torch.where(power > tol, power, torch.zeros_like(power))


def _entropy_rank(p: Float[Tensor, " k"]) -> Float[Tensor, ""]:
    """exp of the Shannon entropy of a (possibly eps-smoothed) distribution, 0 <= p; zero terms contribute 0."""
    return torch.special.entr(p).sum().exp()


def _effective_rank(power: Float[Tensor, " k"]) -> Float[Tensor, ""]:
    s = power.sqrt()
    return _entropy_rank(s / s.sum()) if s.sum() > 0 else s.sum()


def _rankme(power: Float[Tensor, " k"], eps: float) -> Float[Tensor, ""]:
    s = power.sqrt()
    return _entropy_rank(s / s.sum() + eps) if s.sum() > 0 else s.sum()


def _participation_ratio(power: Float[Tensor, " k"]) -> Float[Tensor, ""]:
    return power.sum() ** 2 / power.square().sum() if power.sum() > 0 else power.sum()


def _stable_rank(power: Float[Tensor, " k"]) -> Float[Tensor, ""]:
    return power.sum() / power.max() if power.sum() > 0 else power.sum()


def _unbiased_cov(x: Float[Tensor, "n d"]) -> Float[Tensor, "d d"]:
    centred = x - x.mean(0)
    return centred.T @ centred / (x.shape[0] - 1)


def _frechet(
    mu_x: Float[Tensor, " d"], cov_x: Float[Tensor, "d d"], mu_y: Float[Tensor, " d"], cov_y: Float[Tensor, "d d"]
) -> Float[Tensor, ""]:
    """||mu_x - mu_y||^2 + tr(Cx + Cy - 2 (Cx^1/2 Cy Cx^1/2)^1/2), every square root from a symmetric eigh."""
    w, v = torch.linalg.eigh(cov_x)
    root_x = (v * w.clamp(min=0).sqrt()) @ v.T
    inner = root_x @ cov_y @ root_x
    cross = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu_x - mu_y).square().sum() + cov_x.trace() + cov_y.trace() - 2 * cross).clamp(min=0)


def effective_rank(x: Float[Tensor, "n d"], center: bool = True) -> Float[Tensor, ""]:
    """Effective rank (Roy & Vetterli 2007): exp of the entropy of the L1-normalised singular values.

    A smooth count of the directions the vectors spread along: d for an isotropic cloud, 1 when
    they all lie on one line. With `center` the rows are mean-centred first, so a shared offset
    does not count as a direction and a fully collapsed set has effective rank 0.

    >>> print(f"{effective_rank(torch.eye(3), center=False):.4f}")
    3.0000
    >>> print(f"{effective_rank(torch.outer(torch.arange(1.0, 5.0), torch.ones(3)), center=False):.4f}")
    1.0000
    """
    _check("x", x)
    power, total = _power_spectrum(x, center)
    return _effective_rank(_clean(power, total, *x.shape))


def rankme(x: Float[Tensor, "n d"], eps: float = 1e-7) -> Float[Tensor, ""]:
    """RankMe (Garrido et al. 2023): exp(-sum p_k log p_k) with p_k = s_k / ||s||_1 + eps, uncentred.

    The paper's smoothed effective rank of raw embeddings, used to detect dimensional collapse
    without labels; it differs from `effective_rank(x, center=False)` only by the eps smoothing.

    >>> print(f"{rankme(torch.eye(4)):.4f}")
    4.0000
    """
    _check("x", x)
    power, total = _power_spectrum(x, center=False)
    return _rankme(_clean(power, total, *x.shape), eps)


def participation_ratio(x: Float[Tensor, "n d"], center: bool = True) -> Float[Tensor, ""]:
    """Participation ratio (sum lambda)^2 / sum lambda^2 of the covariance eigenvalues lambda.

    Like effective rank a dimensionality count, but weighted by variance (squared singular
    values), so it is dominated by the leading directions; without `center` it uses the
    second-moment matrix instead of the covariance.

    >>> print(f"{participation_ratio(torch.diag(torch.tensor([1.0, 1.0, 0.0])), center=False):.4f}")
    2.0000
    """
    _check("x", x)
    power, total = _power_spectrum(x, center)
    return _participation_ratio(_clean(power, total, *x.shape))


def stable_rank(x: Float[Tensor, "n d"], center: bool = False) -> Float[Tensor, ""]:
    """Stable rank ||x||_F^2 / ||x||_2^2: total energy over the energy of the top direction.

    A lower bound on the rank that is insensitive to tiny singular values; 1 for a rank-1 matrix.

    >>> print(f"{stable_rank(torch.diag(torch.tensor([2.0, 1.0, 1.0]))):.4f}")
    1.5000
    """
    _check("x", x)
    power, total = _power_spectrum(x, center)
    return _stable_rank(_clean(power, total, *x.shape))


def mean_pairwise_cosine(x: Float[Tensor, "n d"]) -> Float[Tensor, ""]:
    """Mean cosine similarity over distinct pairs of nonzero rows: the anisotropy of the set.

    1 when all vectors point the same way (collapse), about 0 for isotropic directions and at
    least -1/(n-1). Zero rows have no direction and are left out (n counts the nonzero rows);
    fewer than two nonzero rows raise a ValueError. Computed in O(n d) from the sum of unit
    vectors u_i, since ||sum u_i||^2 = n + sum_{i != j} cos(x_i, x_j).

    >>> print(f"{mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])):.4f}")
    0.3333
    >>> print(f"{mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])):.4f}")
    1.0000
    """
    _check("x", x)
    units, nonzero = _directions(x)
    return _pairwise_cosine(units.sum(0), nonzero.sum(), "x has")


def closest_pair(x: Float[Tensor, "n d"]) -> tuple[float, tuple[int, int]]:
    """The largest cosine between two different rows, and those rows' indices.

    Rows that point the same way cannot be told apart by a dot product: for an unembedding,
    the model cannot write one of those tokens without the other (a symmetry a training run can
    get stuck in). Needs at least two rows, none of them zero.

    >>> value, pair = closest_pair(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.1]]))
    >>> round(value, 3), pair
    (0.999, (0, 2))
    """
    _check("x", x, need=2, what="closest_pair")
    units, nonzero = _directions(x)
    if not bool(nonzero.all()):
        raise ValueError(f"closest_pair: row {int((~nonzero).nonzero()[0])} is zero and has no direction")
    cosines = units @ units.T
    cosines.fill_diagonal_(-2.0)
    index = int(cosines.argmax())
    i, j = divmod(index, x.shape[0])
    return float(cosines[i, j]), (min(i, j), max(i, j))


class StepCosines(NamedTuple):
    """Cosine statistics of latent chains, see `step_cosines`."""

    cross_sample: Float[Tensor, " steps"]
    consecutive: Float[Tensor, " steps_minus_1"]


def step_cosines(latents: Float[Tensor, "n steps d"]) -> StepCosines:
    """Per latent step, how alike different samples are, and how much each chain moves per step.

    `cross_sample[t]` is the mean pairwise cosine across samples at step t (rising to 1 under
    feature collapse); `consecutive[t]` is the mean over samples of cos(latent_t, latent_{t+1})
    (near 1 when a chain stalls and repeats itself). Zero latents have no direction and are left
    out, as in `mean_pairwise_cosine`; a step with fewer than two nonzero latents, or a pair of
    steps no chain has nonzero latents at, raises a ValueError.

    >>> z = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 1.0]]])
    >>> cos = step_cosines(z)
    >>> print([f"{c:.4f}" for c in cos.cross_sample], [f"{c:.4f}" for c in cos.consecutive])
    ['1.0000', '0.7071'] ['0.3536']
    """
    _check("latents", latents)
    units, nonzero = _directions(latents)
    cross = _pairwise_cosine(units.sum(0), nonzero.sum(0), "latents have, at their sparsest step,")
    both = (nonzero[:, :-1] & nonzero[:, 1:]).sum(0)
    if (both == 0).any():
        raise ValueError("a consecutive cosine needs a chain with nonzero latents at both steps; some pair has none")
    consecutive = (units[:, :-1] * units[:, 1:]).sum((0, -1)) / both
    return StepCosines(cross, consecutive)


def latent_distance(x: Float[Tensor, "n d"], chunk: int = 4096) -> Float[Tensor, ""]:
    """Mean Euclidean distance over distinct pairs of rows (SIM-CoT's "latent distance").

    Low values mean the latents of different samples sit close together (collapse). Exact
    pairwise distances in blocks of `chunk` rows, so memory is O(chunk * n).

    >>> print(f"{latent_distance(torch.tensor([[0.0, 0.0], [0.0, 2.0]])):.4f}")
    2.0000
    """
    _check("x", x, 2, "a mean distance over pairs")
    x = x.double()
    n = x.shape[0]
    total = sum(torch.cdist(block, x, compute_mode=_EXACT).sum() for block in x.split(chunk))
    return total / (n * (n - 1))


def vocab_distance(x: Float[Tensor, "n d"], embeddings: Float[Tensor, "vocab d"]) -> Float[Tensor, ""]:
    """Mean Euclidean distance from each row of `x` to the centroid of the token embeddings.

    SIM-CoT's distance to the vocabulary centre: how far latents drift from the region that
    ordinary input tokens occupy.

    >>> print(f"{vocab_distance(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [-1.0, 0.0]])):.4f}")
    5.0000
    """
    _check("x", x)
    _check("embeddings", embeddings)
    centroid = embeddings.sum(0, dtype=torch.float64) / embeddings.shape[0]
    return (x.double() - centroid).norm(dim=-1).mean()


def norm_ratio(x: Float[Tensor, "n d"], embeddings: Float[Tensor, "vocab d"]) -> Float[Tensor, ""]:
    """Mean norm of the rows of `x` over the mean norm of the token embeddings.

    Computed latents are fed where token embeddings go; a ratio far from 1 means they live on a
    different scale than the inputs the model was trained on.

    >>> print(f"{norm_ratio(torch.tensor([[0.0, 2.0], [4.0, 0.0]]), torch.eye(2)):.4f}")
    3.0000
    """
    _check("x", x)
    _check("embeddings", embeddings)
    token_norm = torch.linalg.vector_norm(embeddings, dim=-1, dtype=torch.float64).mean()
    if token_norm == 0:
        raise ValueError("embeddings are all zero: the norm ratio is undefined")
    return x.double().norm(dim=-1).mean() / token_norm


class NearestToken(NamedTuple):
    """Best cosine match of each row in the token embedding table, see `nearest_token_cosine`."""

    cosine: Float[Tensor, " n"]
    token_id: Int[Tensor, " n"]


def nearest_token_cosine(
    x: Float[Tensor, "n d"], embeddings: Float[Tensor, "vocab d"], chunk: int = 1024
) -> NearestToken:
    """For each row, the highest cosine to any token embedding and that token's id.

    Says whether a latent is close to some discrete token (near 1) or lies off the vocabulary
    (low); a zero row, which has no direction, gets cosine 0. Computed in the promoted input
    dtype (at least float32), `chunk` rows at a time, so memory is O(chunk * vocab).

    >>> best = nearest_token_cosine(torch.tensor([[2.0, 1.0], [-1.0, -3.0]]), torch.eye(2))
    >>> best.token_id.tolist(), [f"{c:.4f}" for c in best.cosine]
    ([0, 0], ['0.8944', '-0.3162'])
    """
    _check("x", x)
    _check("embeddings", embeddings)
    dtype = torch.promote_types(torch.promote_types(x.dtype, embeddings.dtype), torch.float32)
    table = normalize(embeddings.to(dtype), dim=-1)
    best = [(normalize(block.to(dtype), dim=-1) @ table.T).max(-1) for block in x.split(chunk)]
    return NearestToken(torch.cat([b.values for b in best]), torch.cat([b.indices for b in best]))


def frechet_distance(x: Float[Tensor, "n d"], y: Float[Tensor, "m d"]) -> Float[Tensor, ""]:
    """Fréchet distance between Gaussians fitted to two point clouds (the FID formula).

    ||mu_x - mu_y||^2 + tr(Cx + Cy - 2 (Cx Cy)^1/2) with unbiased (n - 1) covariances, as in
    FID implementations; the matrix square root is taken of the symmetric Cx^1/2 Cy Cx^1/2,
    which is stable where Cx Cy is not. Compares, e.g., latents against token embeddings.

    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> print(f"{frechet_distance(x, x + torch.tensor([3.0, 4.0])):.4f}")
    25.0000
    """
    _check("x", x, 2, "a covariance")
    _check("y", y, 2, "a covariance")
    x, y = x.double(), y.double()
    return _frechet(x.mean(0), _unbiased_cov(x), y.mean(0), _unbiased_cov(y))


def mmd_rbf(x: Float[Tensor, "n d"], y: Float[Tensor, "m d"], bandwidth: float | None = None) -> Float[Tensor, ""]:
    """Unbiased squared maximum mean discrepancy with the Gaussian kernel exp(-|a-b|^2 / (2 bw^2)).

    A two-sample statistic that, unlike the Fréchet distance, sees differences beyond the first
    two moments; about 0 (and possibly slightly negative) for samples from one distribution.
    Without `bandwidth`, bw is the median distance over distinct pairs of the pooled samples.
    It approaches 2 for far apart clouds each narrower than the bandwidth. Memory is O((n + m)^2).

    >>> x = torch.tensor([[0.0], [1.0], [2.0]])
    >>> print(f"{mmd_rbf(x, x + 100.0, bandwidth=10.0):.4f}")
    1.9801
    """
    _check("x", x, 2, "the unbiased MMD (pairs within each sample)")
    _check("y", y, 2, "the unbiased MMD (pairs within each sample)")
    if bandwidth is not None and not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    z = torch.cat([x, y]).double()
    n = x.shape[0]
    sq = torch.cdist(z, z, compute_mode=_EXACT).square()
    if bandwidth is None:
        bandwidth = sq[torch.triu_indices(*sq.shape, offset=1).unbind()].median().sqrt()
        if bandwidth == 0:
            raise ValueError("median heuristic bandwidth is 0 (most pooled pairs coincide); pass bandwidth")
    k = torch.exp(-sq / (2 * bandwidth**2))
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    m = kyy.shape[0]
    return (kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean()


def linear_cka(x: Float[Tensor, "n dx"], y: Float[Tensor, "n dy"]) -> Float[Tensor, ""]:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two representations of the same samples.

    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) for column-centred Xc, Yc: in [0, 1],
    invariant to rotations and isotropic scaling of either side, so it compares, e.g., latents
    of one step with those of another, or across layers and models of different width. Uses the
    n x n Gram matrices when n is below the widths. Undefined (a ValueError) when either side is
    constant, all rows equal up to rounding, which includes n = 1: it has no variance to align.

    >>> x = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 5.0], [2.0, 2.0]])
    >>> print(f"{linear_cka(x, 3 * x.flip(-1)):.4f}")
    1.0000
    """
    _check("x", x)
    _check("y", y)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x and y must hold the same samples, got {x.shape[0]} and {y.shape[0]} rows")
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    for name, raw, centred in (("x", x, xc), ("y", y, yc)):
        if centred.square().sum() <= _resolution(*raw.shape) ** 2 * raw.square().sum():
            raise ValueError(f"linear CKA is undefined: {name} is constant (all its rows are equal up to rounding)")
    x, y = xc, yc
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        kx, ky = x @ x.T, y @ y.T
        return (kx * ky).sum() / (kx.norm() * ky.norm())
    return (y.T @ x).square().sum() / ((x.T @ x).norm() * (y.T @ y).norm())
