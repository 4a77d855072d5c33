"""Sample-specific information (linear probes on latents), collapse JSON records, and trails through
latents with the rut test: synthetic cases whose answer is known, then the pipelines end to end."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm

from lensing.studies import LatentSet
from lensing.studies.decoding import decodability, decode_cell, latent_targets, problem_folds
from lensing.studies.latent_trails import (
    RUT_METRICS,
    capture_hits,
    chain_trails,
    latent_rut,
    latent_trails_study,
    pair_means,
    rut_test,
)
from lensing.studies.records import RECORD_KEYS, bundled_variants, collapse_records
from lensing.studies.trails import capture_rate, centred_cosine_matrix, within_between
from lensing.tasks import make_problem


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("tok"))


def _set(states, latents="natural", lines=None, layer_labels=("embed",)):
    d = states[0].shape[-1]
    empty = [torch.zeros(len(s), d) for s in states]
    return LatentSet("synthetic", latents, list(layer_labels), states, empty, empty, "fusion", 0.6, lines or [])


# ------------------------------------------------------------------ decodability
def _encoded(n: int, classes: int, noise: float, seed: int) -> tuple[np.ndarray, list[int]]:
    """``n`` vectors in 16 dimensions whose label is a linear function of the vector (plus noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    codes = rng.normal(size=(classes, 16)) * 3
    return codes[y] + noise * rng.normal(size=(n, 16)), y.tolist()


def test_probe_reads_linearly_encoded_labels_and_the_shuffled_probe_does_not():
    x, y = _encoded(160, 4, 0.5, seed=1)
    cell = decode_cell(x, y, np.arange(160), folds=5, resamples=300, seed=0, permutations=5)
    accuracy, shuffled, majority = cell["accuracy"], cell["shuffled"], cell["majority"]
    assert accuracy[0] > 0.95 and accuracy[1] > 0.9
    assert abs(shuffled[0] - 0.25) < 0.08 and shuffled[2] < 0.4  # chance is 1/4
    assert 0.2 < majority[0] < 0.4
    assert cell["gain"][0] == pytest.approx(accuracy[0] - shuffled[0]) and cell["gain"][1] > 0.4
    for lo_value_hi in cell.values():
        assert lo_value_hi[1] <= lo_value_hi[0] <= lo_value_hi[2]


def test_probe_on_pure_noise_is_at_chance():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 16)), rng.integers(0, 4, 200).tolist()
    cell = decode_cell(x, y, np.arange(200), folds=5, resamples=300, seed=0)
    value, lo, hi = cell["accuracy"]
    assert value < 0.4 and lo < 0.25 < hi + 0.05
    assert cell["gain"][1] < 0 < cell["gain"][2] + 0.05  # no better than the shuffled-label probe


def test_decoding_is_deterministic_with_a_seed():
    x, y = _encoded(60, 3, 3.0, seed=3)  # noisy, so folds and permutations matter
    groups = np.repeat(np.arange(30), 2)  # two rows per problem
    first = decode_cell(x, y, groups, resamples=200, seed=7)
    assert decode_cell(x, y, groups, resamples=200, seed=7) == first
    assert decode_cell(x, y, groups, resamples=200, seed=8) != first


def test_folds_hold_out_whole_problems():
    groups = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 5])
    folds = problem_folds(groups, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(10))
    for test in folds:
        inside = set(groups[test].tolist())
        outside = set(np.delete(groups, test).tolist())
        assert not inside & outside
    with pytest.raises(ValueError, match="cannot fill"):
        problem_folds(np.array([0, 1]), 3, seed=0)


def _problems(n: int, steps: int, seed: int = 0):
    rng = random.Random(seed)
    return [make_problem(steps, rng) for _ in range(n)]


def test_each_latent_is_labelled_with_the_step_it_stands_for():
    problem = _problems(1, 3)[0]
    states = [torch.zeros(4, 1, 2, dtype=torch.float64)]
    natural = _set(states, "natural", lines=[[1, 1, 3, 4]])  # two latents in line 1; one after the last line
    assert latent_targets(natural, [problem], "intermediate")[0] == [
        problem.intermediates[0],
        problem.intermediates[0],
        problem.intermediates[2],
        problem.answer,
    ]
    forced = _set(states, "forced", lines=[[1, 1, 1, 1]])  # forced latent k stands for step k, whatever its line
    assert latent_targets(forced, [problem], "intermediate")[0] == [*problem.intermediates, problem.answer]
    assert latent_targets(forced, [problem], "answer", "last")[0] == [str(problem.answer)[-1]] * 4
    with pytest.raises(ValueError, match="target must be"):
        latent_targets(forced, [problem], "question")


def test_decodability_finds_the_step_values_where_they_were_planted():
    """Latent j of each problem holds the last digit of intermediate j (one-hot plus noise) at
    layer L1 and pure noise at embed: the probe finds it at L1 only, and the answer only at step 3."""
    problems = _problems(80, 3, seed=5)
    gen = torch.Generator().manual_seed(0)
    states = []
    for p in problems:
        noise = 0.3 * torch.randn(3, 2, 10, generator=gen, dtype=torch.float64)
        planted = torch.stack([torch.nn.functional.one_hot(torch.tensor(v % 10), 10).double() for v in p.intermediates])
        noise[:, 1] += 3 * planted
        states.append(noise)
    lset = _set(states, "natural", lines=[[1, 2, 3]] * len(problems), layer_labels=("embed", "L1"))
    report = decodability(lset, problems, labels=("last",), max_step=3, folds=4, resamples=200)
    df = report.to_dataframe()
    acc = df[df.metric == "accuracy"]
    pooled = acc[acc.step.isna() & (acc.target == "intermediate")].set_index("layer").value
    assert pooled["L1"] > 0.95 and pooled["embed"] < 0.3
    answer = acc[(acc.target == "answer") & (acc.layer == "L1")].set_index("step").value
    assert answer[3.0] > 0.95 and answer[1.0] < 0.4
    assert set(df.n[df.step.notna()]) == {80} and set(df.n[df.step.isna()]) == {240}
    assert (df.ci_low <= df.value).all() and (df.value <= df.ci_high).all()
    by_line = decodability(
        lset, problems, labels=("last",), layers=["L1"], by="line", max_step=3, folds=4, resamples=50
    )
    assert set(by_line.to_dataframe().step.dropna()) == {1.0, 2.0, 3.0}
    assert report.plot().data and "L1" in report.compare(label="last").index.get_level_values("layer")
    with pytest.raises(ValueError, match="by='line' needs natural"):
        decodability(_set(states, "forced", layer_labels=("embed", "L1")), problems, by="line")


# ------------------------------------------------------------------ collapse records
def _validate(records: list[dict]) -> None:
    assert records
    for r in records:
        assert tuple(k for k in r if k != "null_reasons") == RECORD_KEYS, r
        assert isinstance(r["task"], str) and isinstance(r["variant"], str)
        assert r["seed"] is None and "seed" in r["null_reasons"] or isinstance(r["seed"], int)
        assert r["latents"] in ("natural", "forced")
        assert r["step"] == "all" or (isinstance(r["step"], int) and r["step"] >= 1)
        assert isinstance(r["layer"], str) and isinstance(r["metric"], str)
        for key in ("value", "ci_low", "ci_high"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), r
        assert r["ci_low"] <= r["value"] <= r["ci_high"], r


def test_collapse_records_of_a_model_validate(lm):
    from lensing._json import dumps

    records = collapse_records({"tiny": lm}, n=12, chain=2, layers=("embed", "last"), folds=2, resamples=20)
    parsed = json.loads(dumps(records))
    _validate(parsed)
    metrics = {r["metric"] for r in parsed}
    assert {"effective_rank", "mean_cosine", "probe_accuracy:intermediate", "probe_baseline:intermediate"} <= metrics
    assert {"probe_majority:answer_last", "probe_gain:intermediate_last"} <= metrics
    assert {r["layer"] for r in parsed} == {"embed", "L1"} and {r["variant"] for r in parsed} == {"tiny"}
    assert {r["step"] for r in parsed if r["latents"] == "forced"} == {"all", 1, 2}
    assert all(r["seed"] is None for r in parsed)  # a model built in memory records no training seed
    with pytest.raises(ValueError, match="latents must be among"):
        collapse_records({"tiny": lm}, latents=("imagined",))


def test_collapse_json_records_of_bundled_models(capsys):
    from lensing.cli import main

    assert bundled_variants() == [
        "arith-tiny:cot",
        "arith-tiny:hidden",
        "arith-tiny:lt",
        "hops-tiny:coconut",
        "hops-tiny:cot",
        "hops-tiny:stepsup",
    ]
    args = ["collapse", "--model", "arith-tiny:lt", "--model", "arith-tiny:cot", "--n", "12", "--chain", "2"]
    main([*args, "--folds", "2", "--json"])
    records = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    _validate(records)
    assert {(r["variant"], r["latents"]) for r in records} == {("lt", "natural"), ("lt", "forced"), ("cot", "forced")}
    assert {r["task"] for r in records} == {"arith"} and {r["seed"] for r in records} == {0}
    assert any(r["metric"] == "probe_accuracy:intermediate" for r in records)


# ------------------------------------------------------------------ the rut test
def test_pair_means_match_within_between_and_skip_self_pairs():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    groups = list("aaabbbccc")
    sim = centred_cosine_matrix(x)
    (w,), (b,) = pair_means(sim, groups)
    assert (w, b) == pytest.approx(within_between(sim, groups))
    twice = np.array([[2, 1, 1, 1, 1, 1, 1, 1, 1]])
    w2, _ = pair_means(sim, groups, twice)  # item 0 counted twice: pairs with items 1 and 2 weigh double
    weights = {(0, 1): 2, (0, 2): 2, (1, 2): 1}
    by_hand = [weights[(i, j)] * float(sim[i, j]) for i, j in weights]
    triples = [float(sim[i, j]) for g in (3, 6) for i in range(g, g + 3) for j in range(i + 1, g + 3)]
    assert w2[0] == pytest.approx((sum(by_hand) + sum(triples)) / (5 + 6))


def test_capture_hits_agree_with_capture_rate():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 6, generator=gen)
    groups = [i % 3 for i in range(30)]
    for seed in (0, 4):
        hits, chance = capture_hits(x, groups, splits=1, seed=seed)
        queried = np.isfinite(hits)
        assert hits[queried].mean() == pytest.approx(capture_rate(x, groups, seed=seed))
        assert queried.sum() == 15 and np.all((chance[queried] > 0.2) & (chance[queried] < 0.5))


def _planted(n_per: int, structures: int, spread: float, seed: int) -> tuple[torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(structures, 12, generator=gen, dtype=torch.float64)
    groups = [f"s{k}" for k in range(structures) for _ in range(n_per)]
    x = torch.cat(
        [centres[k] + spread * torch.randn(n_per, 12, generator=gen, dtype=torch.float64) for k in range(structures)]
    )
    return x, groups


def test_rut_test_finds_planted_structure_and_not_absent_structure():
    x, groups = _planted(15, 4, 1.0, seed=0)
    bag = torch.randn(60, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)  # knows nothing
    found = rut_test(x, groups, bag, resamples=200, splits=20)
    assert found["within"][0] > 0.5 > found["between"][0]
    assert found["ratio"][2] < 0.6 and found["capture_rate"][1] > 0.9
    assert found["bag_capture_rate"][0] < 0.45 and found["capture_gain"][1] > 0.4
    assert 0.2 < found["capture_chance"][0] < 0.3  # four structures of equal size
    for value, lo, hi in found.values():
        assert lo <= value <= hi

    shuffled = groups[:]
    random.Random(0).shuffle(shuffled)  # the same points, structure labels that mean nothing
    none = rut_test(x, shuffled, bag, resamples=200, splits=20)
    assert none["ratio"][1] < 1 < none["ratio"][2] + 0.02 and none["capture_rate"][0] < 0.45
    assert none["capture_gain"][1] < 0 < none["capture_gain"][2]

    same = rut_test(torch.ones(10, 3), ["a", "b"] * 5, resamples=20)
    assert all(math.isnan(v[0]) for v in same.values()) and set(same) == set(RUT_METRICS)


def test_latent_rut_on_synthetic_chains():
    """Chain trails whose step directions depend on the structure (planted) or not (absent)."""
    gen = torch.Generator().manual_seed(3)
    structures = ["+-", "-+", "++"] * 12
    direction = {s: torch.randn(3, 8, generator=gen, dtype=torch.float64) for s in set(structures)}
    planted, absent = [], []
    for s in structures:
        start = torch.randn(8, generator=gen, dtype=torch.float64)
        steps = direction[s] + 0.2 * torch.randn(3, 8, generator=gen, dtype=torch.float64)
        planted.append(torch.cat([start[None], start + steps.cumsum(0)])[:, None])  # [4 latents, 1 layer, 8]
        absent.append(torch.randn(4, 1, 8, generator=gen, dtype=torch.float64))
    rows = latent_rut(_set(planted), structures, length=4, depth_steps=0, resamples=100, splits=10)
    chain = rows[(rows.trail == "chain")].set_index("metric")
    assert chain.loc["ratio", "ci_high"] < 0.7 and chain.loc["capture_rate", "ci_low"] > 0.8
    assert chain.anchor.iloc[0] == "latents 1-4 (trace order)" and chain.positions.iloc[0] == "latent (natural)"
    rows = latent_rut(_set(absent), structures, length=4, depth_steps=2, resamples=100, splits=10)
    chain = rows[(rows.trail == "chain")].set_index("metric")
    assert chain.loc["ratio", "ci_low"] < 1 < chain.loc["ratio", "ci_high"] + 0.02
    assert chain.loc["capture_rate", "value"] < 0.55
    assert set(rows[rows.trail == "depth"].anchor) == {"latent 1", "latent 2"}


def test_chain_trails_align_by_order_or_by_line():
    states = [torch.arange(4 * 2, dtype=torch.float64).reshape(4, 1, 2), torch.zeros(2, 1, 2, dtype=torch.float64)]
    lset = _set(states, lines=[[1, 1, 2, 3], [1, 3]])
    trails, kept = chain_trails(lset, 0, 3, "order")
    assert kept == [0] and torch.equal(trails[0], states[0][:3, 0])
    trails, kept = chain_trails(lset, 0, 2, "line")  # problem 1 has no latent in line 2
    assert kept == [0]
    assert torch.equal(trails[0], torch.stack([states[0][:2, 0].mean(0), states[0][2, 0]]))


def test_latent_trails_study_labels_latent_and_text_positions(lm):
    problems = _problems(16, 2, seed=6)
    report = latent_trails_study(lm, problems, latents=("natural", "forced"), force_latents=3, resamples=30, splits=5)
    df = report.to_dataframe()
    assert set(df.positions) >= {"latent (forced)", "text positions"}
    assert {"prompt end", "latents 1-3 (trace order)"} <= set(df.anchor)
    assert set(df.metric) == set(RUT_METRICS)
    finite = df[df.value.notna()]
    assert (finite.ci_low <= finite.value).all() and (finite.value <= finite.ci_high).all()
    assert len(report.plot().data) > 0 and "capture_rate" in report.summary().columns
