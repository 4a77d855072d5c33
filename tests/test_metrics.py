"""Metric invariants: hand-known values, hypothesis properties (rotation, scale, order, bounds), shard merging."""

import doctest
import functools
import math
import re

import pytest
import scipy.linalg
import torch
from conftest import close, spectra
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.functional import cosine_similarity

from lensing.metrics import (
    MomentStats,
    effective_rank,
    frechet_distance,
    geometry,
    latent_distance,
    linear_cka,
    mean_pairwise_cosine,
    mmd_rbf,
    nearest_token_cosine,
    norm_ratio,
    participation_ratio,
    probe_accuracy,
    probing,
    rankme,
    stable_rank,
    stats,
    step_cosines,
    vocab_distance,
)

SHAPES = {"seed": st.integers(0, 2**31 - 1), "n": st.integers(3, 12), "d": st.integers(2, 6)}
FEW = settings(max_examples=25, deadline=None)


def cloud(seed: int, n: int, d: int) -> torch.Tensor:
    """Correlated Gaussian rows around a random offset (so cosines and centring both matter), float64."""
    g = torch.Generator().manual_seed(seed)
    mix, offset = torch.randn(d, d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + 2 * offset


def rotation(seed: int, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q


@pytest.mark.parametrize("module", [geometry, stats, probing])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


# Hand-known values.


@pytest.mark.parametrize("d", [1, 2, 5])
def test_identity_has_full_rank(d):
    x = torch.eye(d)
    for metric in (effective_rank, participation_ratio, stable_rank):
        close(metric(x, center=False), d, 1e-12)
    close(rankme(x), d, 1e-5)


def test_rank_one_has_rank_one():
    x = torch.outer(torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([0.3, 1.0, -1.0]))
    for value in spectra(x):
        close(value, 1, 1e-5)


def test_collapsed_cloud_has_centred_rank_zero():
    x = torch.tensor([0.1, 0.7, -0.3]).repeat(7, 1)
    one_pass = MomentStats.empty(3).update(x)
    for value in (effective_rank(x), participation_ratio(x), one_pass.effective_rank(), one_pass.participation_ratio()):
        assert value == 0
    close(effective_rank(x, center=False), 1, 1e-12)
    close(mean_pairwise_cosine(x), 1, 1e-12)
    close(one_pass.mean_pairwise_cosine(), 1, 1e-12)
    assert latent_distance(x) == 0


def test_orthonormal_vectors_have_mean_cosine_zero():
    close(mean_pairwise_cosine(torch.eye(4)), 0, 1e-12)
    close(mean_pairwise_cosine(rotation(0, 5)), 0, 1e-12)


def test_simplex_reaches_the_cosine_lower_bound():
    n = 5
    close(mean_pairwise_cosine(torch.eye(n) - 1 / n), -1 / (n - 1), 1e-12)


def test_latent_distance():
    close(latent_distance(torch.tensor([[0.0, 0.0], [0.0, 2.0]])), 2, 1e-12)
    x = cloud(0, 9, 3)
    brute = torch.pdist(x).mean()
    close(latent_distance(x, chunk=2), brute, 1e-12)


def test_vocab_distance_and_norm_ratio():
    embeddings = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])  # centroid 0, mean norm 1.5
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    close(vocab_distance(x, embeddings), 3, 1e-12)
    close(vocab_distance(x, embeddings + 1), math.dist([3, 4], [1, 1]) / 2 + math.dist([0, 1], [1, 1]) / 2, 1e-12)
    close(norm_ratio(x, embeddings), 3 / 1.5, 1e-12)


def test_nearest_token_cosine_matches_brute_force():
    x, embeddings = cloud(1, 7, 4), cloud(2, 11, 4)
    best = nearest_token_cosine(x, embeddings, chunk=3)
    sims = cosine_similarity(x[:, None], embeddings[None], dim=-1)
    torch.testing.assert_close(best.cosine, sims.max(-1).values)
    assert torch.equal(best.token_id, sims.argmax(-1))


def test_step_cosines_match_per_step_metrics():
    latents = torch.stack([cloud(seed, 6, 4) for seed in range(3)], dim=1)  # [n=6, steps=3, d=4]
    result = step_cosines(latents)
    assert result.cross_sample.shape == (3,) and result.consecutive.shape == (2,)
    for t in range(3):
        close(result.cross_sample[t], mean_pairwise_cosine(latents[:, t]), 1e-12)
    for t in range(2):
        close(result.consecutive[t], cosine_similarity(latents[:, t], latents[:, t + 1]).mean(), 1e-12)


def test_frechet_of_a_shifted_cloud_is_the_squared_shift():
    x, v = cloud(3, 40, 4), torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    close(frechet_distance(x, x), 0, 1e-9)
    close(frechet_distance(x, x + v), v.square().sum(), 1e-9)


def test_frechet_matches_scipy_sqrtm():
    x, y = cloud(4, 30, 5).numpy(), cloud(5, 20, 5).numpy()
    cx, cy = torch.cov(torch.from_numpy(x).T).numpy(), torch.cov(torch.from_numpy(y).T).numpy()
    cross = scipy.linalg.sqrtm(cx @ cy).real.trace()
    expected = ((x.mean(0) - y.mean(0)) ** 2).sum() + cx.trace() + cy.trace() - 2 * cross
    close(frechet_distance(torch.from_numpy(x), torch.from_numpy(y)), expected, 1e-8)


def test_mmd_separates_far_clouds_from_one_distribution():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(150, 3, generator=g), torch.randn(150, 3, generator=g)
    assert abs(mmd_rbf(a, b)) < 0.02
    assert mmd_rbf(a, b + 4) > 0.5
    assert mmd_rbf(a, a) < 0.02
    close(mmd_rbf(1e-3 * a, 1e-3 * b + 100, bandwidth=1.0), 2, 1e-4)  # tight far clouds: within kernels 1, cross 0
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(torch.zeros(20, 2), torch.ones(3, 2))


def test_cka_of_permuted_feature_copies_is_one():
    x = cloud(6, 10, 4)
    close(linear_cka(x, x[:, torch.randperm(4)]), 1, 1e-12)
    close(linear_cka(x, torch.cat([x, 5 * x[:, [2, 0, 3, 1]]], dim=1)), 1, 1e-12)  # wider copy
    close(linear_cka(x, cloud(7, 10, 4) @ rotation(8, 4)), linear_cka(x, cloud(7, 10, 4)), 1e-12)


def test_cka_feature_and_sample_space_paths_agree():
    x, y = cloud(9, 8, 3), cloud(10, 8, 4)
    wide = torch.cat([y, torch.zeros(8, 20, dtype=torch.float64)], dim=1)  # n < width takes the n x n path
    close(linear_cka(x, wide), linear_cka(x, y), 1e-10)


def test_zero_rows_have_no_direction_and_are_left_out():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # nonzero pairs: cos 1, 0, 0
    close(mean_pairwise_cosine(x), 1 / 3, 1e-12)  # was 1/12: the zero row counted in n
    merged = MomentStats.empty(2).update(x[:2]).merge(MomentStats.empty(2).update(x[2:]))
    assert merged.unit_count == 3
    close(merged.mean_pairwise_cosine(), 1 / 3, 1e-12)
    latents = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 0.0]]])
    cos = step_cosines(latents)  # step 0: (1,0), (2,0); step 1: (1,1), (0,1); only chain 0 is nonzero at both
    torch.testing.assert_close(cos.cross_sample, torch.tensor([1.0, 0.5**0.5], dtype=torch.float64))
    torch.testing.assert_close(cos.consecutive, torch.tensor([0.5**0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="needs at least 2 nonzero rows; x has 1"):
        mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="needs at least 2 nonzero rows; MomentStats has seen 1"):
        MomentStats.empty(2).update(torch.tensor([[0.0, 0.0], [0.0, 5.0]])).mean_pairwise_cosine()
    with pytest.raises(ValueError, match="nonzero latents at both steps"):
        step_cosines(torch.tensor([[[1.0, 0], [0, 0]], [[2.0, 1], [0, 0]], [[0.0, 0], [1, 0]], [[0.0, 0], [0, 1]]]))


def _bad() -> torch.Tensor:
    x = cloud(11, 6, 3)
    x[0, 0], x[2, 1], x[5, 2] = float("nan"), float("inf"), -float("inf")
    return x


GOOD = cloud(12, 6, 3)
NON_FINITE = {
    "effective_rank": (effective_rank, "x"),
    "rankme": (rankme, "x"),
    "participation_ratio": (participation_ratio, "x"),
    "stable_rank": (stable_rank, "x"),
    "mean_pairwise_cosine": (mean_pairwise_cosine, "x"),
    "step_cosines": (lambda bad: step_cosines(torch.stack([GOOD, bad], dim=1)), "latents"),
    "latent_distance": (latent_distance, "x"),
    "vocab_distance": (lambda bad: vocab_distance(GOOD, bad), "embeddings"),
    "norm_ratio": (lambda bad: norm_ratio(bad, GOOD), "x"),
    "nearest_token_cosine": (lambda bad: nearest_token_cosine(GOOD, bad), "embeddings"),
    "frechet_distance": (lambda bad: frechet_distance(GOOD, bad), "y"),
    "mmd_rbf": (lambda bad: mmd_rbf(bad, GOOD, bandwidth=1.0), "x"),
    "linear_cka": (lambda bad: linear_cka(GOOD, bad), "y"),
    "MomentStats.update": (lambda bad: MomentStats.empty(3).update(bad), "x"),
}


@pytest.mark.parametrize("metric", NON_FINITE)
def test_non_finite_inputs_raise_naming_the_input(metric):
    """An inf gave effective rank 0.0 silently and a NaN a LinAlgError; now every metric says which input is bad."""
    fn, name = NON_FINITE[metric]
    with pytest.raises(ValueError, match=rf"^{name} contains 3 non-finite values \(NaN or inf\)$"):
        fn(_bad())


def test_too_few_rows_and_constant_inputs():
    x, one = cloud(13, 5, 3), cloud(14, 1, 3)
    # defined: one point spans no direction once centred; uncentred it spans one
    assert effective_rank(one) == 0 and participation_ratio(one) == 0
    close(effective_rank(one, center=False), 1, 1e-12)
    # defined: constant clouds have zero covariance, so only the means differ (|(1, 1) - (0, 0)|^2 = 2)
    close(frechet_distance(torch.ones(4, 2), torch.zeros(3, 2)), 2, 1e-12)
    ones, zeros = MomentStats.empty(2).update(torch.ones(4, 2)), MomentStats.empty(2).update(torch.zeros(3, 2))
    close(ones.frechet_distance(zeros), 2, 1e-12)
    # defined: within-sample kernels are all 1, across exp(-1/2)
    close(mmd_rbf(torch.zeros(3, 1), torch.ones(2, 1), bandwidth=1.0), 2 - 2 * math.exp(-0.5), 1e-12)
    cases = [
        (lambda: frechet_distance(one, x), "a covariance needs at least 2 rows; x has 1"),
        (lambda: frechet_distance(x, one), "a covariance needs at least 2 rows; y has 1"),
        (lambda: mmd_rbf(one, x, bandwidth=1.0), "needs at least 2 rows; x has 1"),
        (lambda: mmd_rbf(x, one, bandwidth=1.0), "needs at least 2 rows; y has 1"),
        (lambda: mmd_rbf(x, x, bandwidth=0.0), "bandwidth must be positive"),
        (lambda: latent_distance(one), "pairs needs at least 2 rows; x has 1"),
        (lambda: mean_pairwise_cosine(one), "needs at least 2 nonzero rows; x has 1"),
        (lambda: effective_rank(x[:0]), "needs at least 1 rows; x has 0"),
        (lambda: linear_cka(one, one), "x is constant"),
        (lambda: linear_cka(x, torch.ones(5, 2)), "y is constant"),
        (lambda: linear_cka(x, x[:4]), "same samples"),
        (lambda: norm_ratio(x, torch.zeros(3, 3)), "embeddings are all zero"),
        (lambda: MomentStats.empty(3).update(one).frechet_distance(MomentStats.empty(3).update(x)), "seen 1"),
        (lambda: MomentStats.empty(3).effective_rank(), "MomentStats has seen 0"),
        (lambda: MomentStats.empty(3).mean_norm(), "MomentStats has seen 0"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            fn()


def test_probe_decodes_linearly_separable_labels():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (150,), generator=g)
    centres = 3 * torch.randn(3, 6, generator=g)
    result = probe_accuracy(centres[labels] + 0.3 * torch.randn(150, 6, generator=g), labels)
    assert result.accuracy > 0.95 and result.baseline < 0.5


def test_probe_is_near_chance_on_random_labels():
    g = torch.Generator().manual_seed(1)
    result = probe_accuracy(torch.randn(150, 6, generator=g), torch.randint(0, 3, (150,), generator=g))
    assert abs(result.accuracy - 1 / 3) < 0.15 and abs(result.baseline - 1 / 3) < 0.15


def test_probe_with_rare_or_single_classes():
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(2))
    rare = probe_accuracy(x, torch.tensor([0] * 18 + [1] * 2))  # k-fold; some training folds have one class
    assert 0 <= rare.accuracy <= 1 and rare.baseline == 0.9
    assert probe_accuracy(x, torch.zeros(20, dtype=torch.long)) == (1.0, 1.0)


# Properties.


@FEW
@given(**SHAPES)
def test_rotation_invariance(seed, n, d):
    x, y, q = cloud(seed, n, d), cloud(seed + 7, n, d), rotation(seed, d)
    for before, after in zip(spectra(x), spectra(x @ q), strict=False):
        close(after, before)
    for metric in (mean_pairwise_cosine, latent_distance):
        close(metric(x @ q), metric(x))
    close(linear_cka(x @ q, y), linear_cka(x, y))
    close(frechet_distance(x @ q, y @ q), frechet_distance(x, y))
    close(mmd_rbf(x @ q, y @ q), mmd_rbf(x, y))


@FEW
@given(**SHAPES, scale=st.floats(1e-3, 1e3))
def test_scale_invariance(seed, n, d, scale):
    x, y = cloud(seed, n, d), cloud(seed + 7, n, d)
    for before, after in zip(spectra(x), spectra(scale * x), strict=False):
        close(after, before)
    close(mean_pairwise_cosine(scale * x), mean_pairwise_cosine(x))
    close(linear_cka(scale * x, y), linear_cka(x, y))


@FEW
@given(**SHAPES)
def test_sample_order_invariance(seed, n, d):
    x, y, vocab = cloud(seed, n, d), cloud(seed + 7, n, d), cloud(seed + 8, 5, d)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for before, after in zip(spectra(x), spectra(x[perm]), strict=False):
        close(after, before)
    for metric in (mean_pairwise_cosine, latent_distance):
        close(metric(x[perm]), metric(x))
    for metric in (frechet_distance, mmd_rbf):
        close(metric(x[perm], y), metric(x, y))
    for metric in (vocab_distance, norm_ratio):
        close(metric(x[perm], vocab), metric(x, vocab))
    close(linear_cka(x[perm], y[perm]), linear_cka(x, y))
    best, best_perm = nearest_token_cosine(x, vocab), nearest_token_cosine(x[perm], vocab)
    assert torch.equal(best_perm.token_id, best.token_id[perm])
    latents = torch.stack([x, y], dim=1)
    for before, after in zip(step_cosines(latents), step_cosines(latents[perm]), strict=False):
        torch.testing.assert_close(after, before)


@FEW
@given(**SHAPES)
def test_bounds(seed, n, d):
    x, y = cloud(seed, n, d), cloud(seed + 7, n, d)
    slack = 1e-9
    for value in (effective_rank(x), participation_ratio(x), stable_rank(x), effective_rank(x, center=False)):
        assert 1 - slack <= value <= min(n, d) + slack
    assert -1 / (n - 1) - slack <= mean_pairwise_cosine(x) <= 1 + slack
    assert 0 <= linear_cka(x, y) <= 1 + slack


@FEW
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(10, 30), classes=st.integers(2, 4))
def test_probe_accuracy_is_a_fraction(seed, n, classes):
    g = torch.Generator().manual_seed(seed)
    result = probe_accuracy(torch.randn(n, 3, generator=g), torch.randint(0, classes, (n,), generator=g))
    assert 0 <= result.accuracy <= 1 and 0 <= result.baseline <= 1


@FEW
@given(**SHAPES, cuts=st.lists(st.floats(0, 1), max_size=4))
def test_merged_shards_equal_one_pass(seed, n, d, cuts):
    x = cloud(seed, 3 * n, d)
    bounds = [0, *sorted(round(c * len(x)) for c in cuts), len(x)]
    shards = [MomentStats.empty(d).update(x[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    one_pass = MomentStats.empty(d).update(x)
    for merged in (functools.reduce(MomentStats.merge, shards), functools.reduce(MomentStats.merge, shards[::-1])):
        assert merged.count == one_pass.count
        for field in ("mean", "scatter", "gram", "sum", "norm_sum", "unit_sum"):
            torch.testing.assert_close(getattr(merged, field), getattr(one_pass, field), rtol=1e-6, atol=1e-6)
        close(merged.effective_rank(), one_pass.effective_rank())
        close(merged.mean_pairwise_cosine(), one_pass.mean_pairwise_cosine())


@FEW
@given(**SHAPES)
def test_moment_stats_agree_with_geometry(seed, n, d):
    x, y = cloud(seed, n, d), cloud(seed + 7, n + 2, d)
    sx, sy = MomentStats.empty(d).update(x), MomentStats.empty(d).update(y)
    for center in (True, False):
        close(sx.effective_rank(center), effective_rank(x, center))
        close(sx.participation_ratio(center), participation_ratio(x, center))
        close(sx.stable_rank(center), stable_rank(x, center))
    close(sx.rankme(), rankme(x))
    close(sx.mean_pairwise_cosine(), mean_pairwise_cosine(x))
    close(sx.mean_norm(), x.norm(dim=-1).mean())
    close(sx.frechet_distance(sy), frechet_distance(x, y))
    torch.testing.assert_close(sx.covariance, torch.cov(x.T, correction=0))
    torch.testing.assert_close(sx.gram, x.T @ x)


def test_closest_pair_finds_parallel_rows_and_refuses_zero_rows():
    import pytest
    import torch

    from lensing.metrics import closest_pair

    x = torch.eye(4)
    x[3] = torch.tensor([0.0, 5.0, 0.0, 0.0])
    assert closest_pair(x) == (pytest.approx(1.0), (1, 3))
    assert closest_pair(torch.eye(3))[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="row 1 is zero"):
        closest_pair(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2 rows"):
        closest_pair(torch.ones(1, 3))
