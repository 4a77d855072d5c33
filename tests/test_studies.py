"""Collapse and trails studies: pure trail functions on hand cases, streaming statistics, end to end."""

import random

import pytest
import torch
from conftest import make_tiny_lm

from lensing.metrics import effective_rank, mean_pairwise_cosine
from lensing.studies import CollapseAccumulator, collapse_study, collect, trails_study
from lensing.studies.trails import (
    bag_of_tokens,
    capture_rate,
    centred_cosine_matrix,
    dtw_distance,
    pca_3d,
    step_direction_cosine,
    within_between,
)
from lensing.tasks import make_problem


def test_within_between_by_hand():
    sim = torch.tensor([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]])
    within, between = within_between(sim, ["a", "a", "b"])
    assert within == pytest.approx(0.8) and between == pytest.approx(0.2)


def test_centred_cosine_and_capture():
    x = torch.tensor([[5.0, 0.0], [5.1, 0.1], [-5.0, 0.0], [-5.2, 0.1]] * 3)
    groups = ["right", "right", "left", "left"] * 3
    sim = centred_cosine_matrix(x)
    assert torch.allclose(sim.diagonal(), torch.ones(12))
    assert capture_rate(x, groups) == 1.0
    assert capture_rate(torch.randn(200, 8, generator=torch.Generator().manual_seed(0)), ["a", "b"] * 100) < 0.7


def test_chain_comparisons():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert step_direction_cosine(a, a * 3 + 1) == pytest.approx(1.0)
    assert step_direction_cosine(a, -a) == pytest.approx(-1.0)
    assert dtw_distance(a[1:], a[1:]) == pytest.approx(0.0, abs=1e-6)
    stretched = torch.stack([a[1], a[1], a[2], a[2]])
    assert dtw_distance(a[1:], stretched) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="same number"):
        step_direction_cosine(a, a[:2])


def test_pca_3d_keeps_the_main_directions():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(10, 3, generator=gen))[0].T  # 3 orthonormal directions
    x = (torch.randn(50, 3, generator=gen) * torch.tensor([10.0, 5.0, 2.0])) @ basis
    proj = pca_3d(x)
    torch.testing.assert_close(proj.norm(dim=1), (x - x.mean(0)).norm(dim=1), atol=1e-3, rtol=1e-4)


def test_accumulator_merge_equals_one_pass():
    gen = torch.Generator().manual_seed(0)
    samples = [(torch.randn(3, 2, 4, generator=gen), (i, i + 1)) for i in range(40)]
    one = CollapseAccumulator(["embed", "L0"])
    left, right = CollapseAccumulator(["embed", "L0"]), CollapseAccumulator(["embed", "L0"])
    for i, (s, lab) in enumerate(samples):
        one.add(s, lab)
        (left if i < 17 else right).add(s, lab)
    merged = left.merge(right)
    for key, stats in one.moments.items():
        torch.testing.assert_close(merged.moments[key].mean, stats.mean, atol=1e-6, rtol=0)
        torch.testing.assert_close(merged.moments[key].covariance, stats.covariance, atol=1e-6, rtol=0)
        assert merged.step_cos.get(key, (0, 0))[1] == one.step_cos.get(key, (0, 0))[1]
        assert merged.step_cos.get(key, (0.0, 0))[0] == pytest.approx(one.step_cos.get(key, (0.0, 0))[0], abs=1e-9)
    vectors = torch.stack([s[1, 0] for s, _ in samples])
    table = one.table(torch.randn(30, 4, generator=gen), probe_folds=2)
    row = table[(table.step == 2) & (table.layer == "embed")].iloc[0]
    assert row.n == 40
    assert row.effective_rank == pytest.approx(float(effective_rank(vectors.double())), rel=1e-6)
    assert row.mean_cosine == pytest.approx(float(mean_pairwise_cosine(vectors.double())), rel=1e-6)


def test_accumulator_memory_is_bounded():
    acc = CollapseAccumulator(["embed"], reservoir_size=16)
    for i in range(200):
        acc.add(torch.randn(1, 1, 3), (i,))
    assert len(acc.reservoir[(1, "embed")]) == 16 and acc.moments[(1, "embed")].count == 200


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("tok"))


def test_collect_forced_latent_chains(lm):
    rng = random.Random(0)
    problems = [make_problem(2, rng) for _ in range(12)]
    acc = collect(lm, problems, where="latent", force_latents=3, batch_size=5)
    assert sorted({k[0] for k in acc.moments}) == [1, 2, 3]
    assert all(m.count == 12 for m in acc.moments.values())
    # the "embed" read-out of a latent is exactly the vector generation fed at that position
    trace = lm.generate(problems[0].prompt, force_latents=3)[0]
    fed = trace.input_embeds[trace.latent_positions[0]].double()
    stored = [v for v, lab in acc.reservoir[(1, "embed")] if lab == problems[0].intermediates]
    torch.testing.assert_close(stored[0].double(), fed, atol=1e-5, rtol=0)


def test_collapse_study_table(lm):
    rng = random.Random(1)
    problems = [make_problem(3, rng) for _ in range(20)]
    report = collapse_study({"a": lm, "b": lm}, problems, force_latents=2)
    df = report.to_dataframe()
    assert set(df.model) == {"a", "b"} and set(df.step) == {1, 2}
    for column in (
        "effective_rank",
        "mean_cosine",
        "latent_distance",
        "vocab_distance",
        "norm_ratio",
        "nearest_token_cosine",
        "frechet_to_tokens",
        "mmd_to_tokens",
        "step_cosine",
    ):
        assert column in df.columns
    a, b = report.compare("effective_rank")["a"], report.compare("effective_rank")["b"]
    assert torch.allclose(torch.tensor(a.values), torch.tensor(b.values))  # same model, same numbers
    assert len(report.plot().data) == 8
    with pytest.raises(ValueError, match="where must be"):
        collect(lm, problems, where="middle")


def test_trails_study_runs_on_every_layer(lm):
    rng = random.Random(2)
    problems = [make_problem(2, rng) for _ in range(16)]
    report = trails_study(lm, problems)
    df = report.to_dataframe()
    assert list(df.layer) == ["embed", "L0", "L1"]
    assert df.depth_ratio.iloc[1:].notna().all()  # at "embed" every prompt ends with the same token
    assert df.capture_rate.iloc[1:].between(0, 1).all() and df.capture_rate.iloc[1:].notna().all()


def test_bag_of_tokens_counts(lm):
    trace = lm.generate("a=1;b=a+1;b?\n", max_new_tokens=2)[0]
    bag = bag_of_tokens([trace], lm.model.get_input_embeddings().num_embeddings)
    one = lm.encode("1", add_bos=False)[0]
    assert bag[0, one] == 2 and bag.sum() == trace.prompt_length


def _synthetic_set(states, name="s", latents="natural"):
    from lensing.studies import LatentSet

    return LatentSet(name, latents, ["embed"], states, [s[:, 0] for s in states], [0 * s[:, 0] for s in states], "fusion", 1.0)


def test_collapse_ci_recovers_known_geometry():
    from lensing.studies import collapse_ci

    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(30, 8, generator=gen)
    point = torch.ones(8) * 3
    collapsed = _synthetic_set([point.expand(2, 1, 8).clone() for _ in range(40)], "collapsed")
    iso = _synthetic_set([torch.randn(2, 1, 8, generator=gen) for _ in range(40)], "iso")
    df = collapse_ci([collapsed, iso], emb, max_step=2, min_problems=5, resamples=30, h_only=False)
    pooled = df[df.step.isna()].set_index(["model", "metric"])
    assert pooled.loc[("collapsed", "effective_rank"), "value"] == pytest.approx(0.0, abs=1e-6)
    assert pooled.loc[("collapsed", "mean_cosine"), "value"] == pytest.approx(1.0)
    assert pooled.loc[("iso", "effective_rank"), "value"] > 7  # 40 vectors in 8 dimensions
    assert abs(pooled.loc[("iso", "mean_cosine"), "value"]) < 0.1
    assert (pooled.vectors == 40).all()  # half the smallest set, the same size for every set
    assert (df.ci_low <= df.value + 1e-9).all() and (df.value <= df.ci_high + 1e-9).all()
    assert sorted(df.step.dropna().unique()) == [1, 2]


def test_collapse_ci_covers_on_synthetic_data():
    """The interval of the mean cosine covers the population value in most of 10 seeded draws."""
    from lensing.studies import collapse_ci

    direction = torch.nn.functional.normalize(torch.ones(6), dim=0)
    covered = 0
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        states = [(direction * 2 + torch.randn(1, 1, 6, generator=gen)) for _ in range(60)]
        df = collapse_ci([_synthetic_set(states)], torch.randn(10, 6, generator=gen), max_step=0, resamples=30)
        row = df[df.metric == "mean_cosine"].iloc[0]
        big = direction * 2 + torch.randn(20000, 6, generator=torch.Generator().manual_seed(99))
        truth = float(mean_pairwise_cosine(big[:3000].double()))
        covered += row.ci_low <= truth <= row.ci_high
    assert covered >= 7


def test_natural_latents_are_the_trace_latents(lm):
    from lensing.studies import latent_states

    rng = random.Random(3)
    problems = [make_problem(2, rng) for _ in range(6)]
    natural = latent_states(lm, problems, "natural", batch_size=4)
    traces = lm.generate([p.prompt for p in problems], max_new_tokens=160)
    assert natural.counts == [t.n_latents for t in traces]
    for states, trace in zip(natural.states, traces, strict=True):
        fed = trace.input_embeds[trace.latent_positions].double()
        torch.testing.assert_close(states[:, 0], fed, atol=1e-5, rtol=0)
    reused = latent_states(lm, problems, "natural", traces=traces)  # the same traces, read instead of regenerated
    for a, b in zip(reused.states, natural.states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert reused.lines == natural.lines
    forced = latent_states(lm, problems, "forced", force_latents=3)
    assert forced.counts == [3] * 6
    with pytest.raises(ValueError, match="latents must be"):
        latent_states(lm, problems, "imagined")
    with pytest.raises(ValueError, match="natural latents only, one per problem"):
        latent_states(lm, problems, "natural", traces=traces[:2])


def test_coconut_style_natural_latents_are_the_prescribed_chain(tmp_path):
    """A model trained with latents in place of CoT steps runs with one latent per step after the
    prompt: those are its natural latents, latent k standing for step k."""
    from lensing.studies import latent_states
    from lensing.train.curriculum import TrainConfig, build_model

    torch.manual_seed(0)
    lm = build_model(TrainConfig(task="hops", n_layers=2, d_model=32, n_heads=4, d_mlp=64), tmp_path / "tok")
    lm.meta = {"task": "hops", "variant": "stepsup", "inference": {"latents_per_step": 1, "max_latent_steps": 5}}
    from lensing.tasks import make_splits

    problems = make_splits(0, 0, 2, seed=0, task="hops").test
    natural = latent_states(lm, problems, "natural", max_new_tokens=8)
    assert natural.counts == [p.steps for p in problems]
    assert natural.lines == [list(range(1, p.steps + 1)) for p in problems]


def test_natural_vs_forced_records(lm):
    import json

    from lensing._json import dumps
    from lensing.studies import natural_vs_forced

    rng = random.Random(4)
    problems = [make_problem(2, rng) for _ in range(12)]
    df = natural_vs_forced({"a": lm}, problems, "forced", force_latents=2, layers=["embed", "L1"], resamples=10)
    assert set(df.latents) == {"forced"} and set(df.layer) == {"embed", "L1"}
    assert {"model", "latents", "step", "layer", "metric", "value", "ci_low", "ci_high"} <= set(df.columns)
    records = json.loads(dumps(df.to_dict(orient="records")))
    assert len(records) == len(df) and all(isinstance(r["value"], float | None) for r in records)
    with pytest.raises(ValueError, match="natural, forced or both|'natural', 'forced' or 'both'"):
        natural_vs_forced({"a": lm}, problems, "sometimes")


def test_readme_natural_vs_forced_numbers():
    """The README's natural-vs-forced table and fusion norms, recomputed with the same n and seed (~45 s)."""
    from pathlib import Path

    from lensing.studies.collapse import bundled_headline

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table, parts = bundled_headline()
    pick = table[table.vector == "input"].set_index(["model", "latents", "metric"])
    expected = {  # (model, latents, metric): (value, ci_low, ci_high) as the README prints them
        ("arith-tiny:lt", "natural", "effective_rank"): (32.3, 30.6, 33.7),
        ("arith-tiny:hidden", "natural", "effective_rank"): (27.7, 26.1, 29.2),
        ("arith-tiny:lt", "natural", "mean_cosine"): (0.17, 0.13, 0.21),
        ("arith-tiny:hidden", "natural", "mean_cosine"): (0.26, 0.22, 0.30),
        ("arith-tiny:lt", "natural", "frechet_to_tokens"): (9.1, 8.5, 9.7),
        ("arith-tiny:hidden", "natural", "frechet_to_tokens"): (19.3, 18.4, 20.5),
        ("arith-tiny:lt", "forced", "effective_rank"): (19.7, 18.7, 20.7),
        ("arith-tiny:hidden", "forced", "effective_rank"): (12.9, 11.7, 14.0),
        ("arith-tiny:lt", "forced", "mean_cosine"): (0.78, 0.72, 0.84),
        ("arith-tiny:hidden", "forced", "mean_cosine"): (0.90, 0.88, 0.92),
        ("arith-tiny:lt", "forced", "frechet_to_tokens"): (16.2, 14.9, 18.2),
        ("arith-tiny:hidden", "forced", "frechet_to_tokens"): (223, 184, 267),
    }
    for key, numbers in expected.items():
        got = pick.loc[key, ["value", "ci_low", "ci_high"]].to_numpy(float)
        for have, want in zip(got, numbers, strict=True):
            assert have == pytest.approx(want, rel=0.03, abs=0.011), key
    lt = parts["arith-tiny:lt"]
    assert lt["alpha_h_norm"][0] == pytest.approx(3.06, abs=0.02) and lt["pred_norm"][0] == pytest.approx(0.15, abs=0.01)
    assert lt["latents_per_problem"][0] == pytest.approx(5.8, abs=0.05)
    assert parts["arith-tiny:hidden"]["latents_per_problem"][0] == pytest.approx(1.6, abs=0.05)
    h_only = table[(table.vector == "alpha*h") & (table.latents == "natural")].set_index("metric")
    assert h_only.loc["effective_rank", "value"] == pytest.approx(32.2, abs=0.06)
    assert h_only.loc["frechet_to_tokens", "value"] == pytest.approx(9.2, abs=0.06)
    assert "|0.6 h| is 3.06 and |0.4 e_pred| 0.15" in readme and "32.3 [30.6, 33.7]" in readme
