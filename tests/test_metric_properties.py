"""Property tests of the geometry metrics on arbitrary small float arrays (hypothesis).

Invariances (row order, positive scale), scaling laws, rank bounds, symmetry, and the streaming
`MomentStats` agreeing with the direct functions. Inputs are bounded floats whose entries are 0
or at least 1e-3 in size, so scaling never underflows a row to zero; inputs for which a metric
is undefined or ill-conditioned (constant sides for CKA, fewer than two nonzero rows for
cosines) are filtered with `assume`.
"""

import numpy as np
import torch
from conftest import close, spectra
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lensing.metrics import (
    MomentStats,
    effective_rank,
    frechet_distance,
    latent_distance,
    linear_cka,
    mean_pairwise_cosine,
    mmd_rbf,
    participation_ratio,
    rankme,
    stable_rank,
    step_cosines,
)

SETTINGS = settings(max_examples=40, deadline=None)
ENTRY = st.floats(-10, 10, allow_subnormal=False).filter(lambda v: v == 0 or abs(v) >= 1e-3)
SCALE = st.floats(1e-2, 1e2)


@st.composite
def matrices(draw, n: int | None = None, d: int | None = None) -> torch.Tensor:
    """A float64 n x d tensor of bounded entries, 2 <= n <= 7 and 1 <= d <= 5 unless given."""
    shape = (draw(st.integers(2, 7)) if n is None else n, draw(st.integers(1, 5)) if d is None else d)
    return torch.from_numpy(draw(hnp.arrays(np.float64, shape, elements=ENTRY)))


@st.composite
def pairs(draw, same_rows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two matrices of the same width (and the same number of rows if `same_rows`)."""
    x = draw(matrices())
    return x, draw(matrices(n=x.shape[0] if same_rows else None, d=x.shape[1]))


def permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def nonzero_rows(x: torch.Tensor) -> int:
    return int((x.norm(dim=-1) > 0).sum())


def varies(x: torch.Tensor) -> bool:
    """Not constant, with a spread well above rounding (CKA is undefined for a constant side)."""
    return bool((x - x.mean(0)).norm() > 1e-3 * x.norm())


def mean_square(*xs: torch.Tensor) -> float:
    """Scale of squared-distance metrics, the floor of their absolute tolerance."""
    return 1.0 + sum(float(x.square().mean()) for x in xs)


@SETTINGS
@given(pair=pairs(), seed=st.integers(0, 2**16))
def test_row_order_invariance(pair, seed):
    x, y = pair
    px, py = permutation(len(x), seed), permutation(len(y), seed + 1)
    for before, after in zip(spectra(x), spectra(x[px]), strict=True):
        close(after, before)
    close(latent_distance(x[px]), latent_distance(x))
    close(frechet_distance(x[px], y[py]), frechet_distance(x, y), scale=mean_square(x, y))
    close(mmd_rbf(x[px], y[py], bandwidth=3.0), mmd_rbf(x, y, bandwidth=3.0))
    if nonzero_rows(x) >= 2:
        close(mean_pairwise_cosine(x[px]), mean_pairwise_cosine(x))


@SETTINGS
@given(pair=pairs(same_rows=True), seed=st.integers(0, 2**16))
def test_cka_and_step_cosines_follow_the_samples(pair, seed):
    x, y = pair
    perm = permutation(len(x), seed)
    if varies(x) and varies(y):
        close(linear_cka(x[perm], y[perm]), linear_cka(x, y))
    latents = torch.stack([x, y], dim=1)
    nonzero = latents.norm(dim=-1) > 0
    assume(nonzero.sum(0).min() >= 2 and (nonzero[:, 0] & nonzero[:, 1]).any())
    for before, after in zip(step_cosines(latents), step_cosines(latents[perm]), strict=True):
        torch.testing.assert_close(after, before)


@SETTINGS
@given(pair=pairs(same_rows=True), c=SCALE)
def test_positive_scaling(pair, c):
    """Ranks, cosines and CKA do not see the scale; latent distance grows like c, Fréchet like c^2."""
    x, y = pair
    for before, after in zip(spectra(x), spectra(c * x), strict=True):
        close(after, before)
    close(latent_distance(c * x), c * latent_distance(x))
    close(frechet_distance(c * x, c * y), c**2 * frechet_distance(x, y), scale=c**2 * mean_square(x, y))
    close(mmd_rbf(c * x, c * y, bandwidth=3.0 * c), mmd_rbf(x, y, bandwidth=3.0))  # the kernel sees |a - b| / bw
    if varies(x) and varies(y):
        close(linear_cka(c * x, y), linear_cka(x, y))
        close(linear_cka(x, c * y), linear_cka(x, y))
    if nonzero_rows(x) >= 2:
        close(mean_pairwise_cosine(c * x), mean_pairwise_cosine(x))


@SETTINGS
@given(x=matrices())
def test_rank_bounds(x):
    """Uncentred: 1 <= every rank <= rank(x) <= min(n, d); participation and stable rank never exceed rank(x)."""
    assume(x.abs().max() > 0)
    rank = int(torch.linalg.matrix_rank(x))
    slack = 1e-9
    for value in (effective_rank(x, center=False), participation_ratio(x, center=False), stable_rank(x)):
        assert 1 - slack <= value <= rank + slack <= min(x.shape) + slack
    assert 1 - 1e-5 <= rankme(x) <= min(x.shape) + 1e-5  # its eps smoothing moves it by about eps * log(1 / eps)
    if nonzero_rows(x) >= 2:
        n = nonzero_rows(x)
        assert -1 / (n - 1) - slack <= mean_pairwise_cosine(x) <= 1 + slack


@SETTINGS
@given(pair=pairs())
def test_two_sample_metrics_are_symmetric_and_nonnegative(pair):
    x, y = pair
    close(frechet_distance(x, y), frechet_distance(y, x), scale=mean_square(x, y))
    assert frechet_distance(x, y) >= 0
    close(mmd_rbf(x, y, bandwidth=3.0), mmd_rbf(y, x, bandwidth=3.0))
    assert latent_distance(x) >= 0


@SETTINGS
@given(pair=pairs(same_rows=True))
def test_cka_is_symmetric_and_in_unit_interval(pair):
    x, y = pair
    assume(varies(x) and varies(y))
    close(linear_cka(x, y), linear_cka(y, x))
    assert -1e-9 <= linear_cka(x, y) <= 1 + 1e-9
    close(linear_cka(x, x), 1)


@SETTINGS
@given(pair=pairs(), cut=st.floats(0, 1))
def test_moment_stats_equal_the_direct_functions(pair, cut):
    """Streaming statistics of the rows, in one batch or merged from two halves, give the direct values."""
    x, y = pair
    k = round(cut * len(x))
    whole = MomentStats.empty(x.shape[1]).update(x)
    halves = MomentStats.empty(x.shape[1]).update(x[:k]).merge(MomentStats.empty(x.shape[1]).update(x[k:]))
    sy = MomentStats.empty(y.shape[1]).update(y)
    for stats in (whole, halves):
        assert stats.count == len(x) and stats.unit_count == nonzero_rows(x)
        for center in (True, False):
            close(stats.effective_rank(center), effective_rank(x, center))
            close(stats.participation_ratio(center), participation_ratio(x, center))
            close(stats.stable_rank(center), stable_rank(x, center))
        close(stats.rankme(), rankme(x))
        close(stats.mean_norm(), x.norm(dim=-1).mean())
        close(stats.frechet_distance(sy), frechet_distance(x, y), scale=mean_square(x, y))
        if nonzero_rows(x) >= 2:
            close(stats.mean_pairwise_cosine(), mean_pairwise_cosine(x))
    for field in ("mean", "scatter", "unit_sum", "norm_sum"):
        torch.testing.assert_close(getattr(halves, field), getattr(whole, field), rtol=1e-9, atol=1e-9)
