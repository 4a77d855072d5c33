"""Step swaps: counterfactual answers, same-difficulty pairs, and the swapped latents really fed."""

import random

import pytest
import torch

from lensing.interventions.generation import Intervention, fed_latents, generate_problems
from lensing.interventions.steps import step_swaps
from lensing.tasks import continue_from
from lensing.tasks import get as get_task


def test_continue_from_follows_the_rest_of_the_chain():
    hops, arith = get_task("hops"), get_task("arith")
    for k in (2, 3, 4, 5):
        p = hops.sample(k, random.Random(k))
        for j in range(k):  # the true value at step j gives the true answer
            assert continue_from(hops, p, j, p.intermediates[j]) == p.answer
        # from the start node's successor chain: step 0 landing on node x ends k - 1 hops later
        successor = dict(e.split(">") for e in p.question.split(";")[:-1])
        node = "a"
        for _ in range(k - 1):
            node = successor[node]
        assert continue_from(hops, p, 0, "a") == node
        q = arith.sample(k, random.Random(k))
        for j in range(k):
            assert continue_from(arith, q, j, str(q.intermediates[j])) == q.answer
        assert continue_from(arith, q, k - 1, "7") == 7  # the last step's value is the answer
    with pytest.raises(ValueError, match="not a node"):
        hops.continue_from(hops.sample(2, random.Random(0)), 0, "z")
    assert continue_from(get_task("graph"), get_task("graph").sample(2, random.Random(0)), 0, "a") is None


@pytest.fixture
def stepsup_lm(tmp_path):
    from lensing.train.curriculum import TrainConfig, build_model

    torch.manual_seed(0)
    lm = build_model(TrainConfig(task="hops", n_layers=2, d_model=32, n_heads=4, d_mlp=64), tmp_path / "tok")
    lm.meta = {"inference": {"latents_per_step": 1, "max_latent_steps": 5}}
    return lm


def test_forced_latents_follow_the_checkpoint_and_swaps_feed_the_donors(stepsup_lm):
    problems = [get_task("hops").sample(k, random.Random(10 * k + i)) for k in (2, 3) for i in range(2)]
    clean, _ = generate_problems(stepsup_lm, problems, max_new_tokens=12)
    assert [t.n_latents for t in clean] == [2, 2, 3, 3]  # one forced latent per hop
    assert all(t.latent_positions[0] == t.prompt_length for t in clean)  # right after the prompt
    source = [fed_latents(t) for t in clean]
    swapped, replaced = generate_problems(
        stepsup_lm, problems, Intervention("swap", step=1, pairs=((0, 1), (2, 3))), source, max_new_tokens=12
    )
    assert replaced == [1, 1, 1, 1]
    for i, donor in enumerate((1, 0, 3, 2)):
        fed = fed_latents(swapped[i])
        torch.testing.assert_close(fed[1], source[donor][1])
        torch.testing.assert_close(fed[0], source[i][0])  # the step before is untouched


def test_step_swaps_pair_within_a_difficulty_and_score_the_counterfactual(stepsup_lm):
    rng = random.Random(3)
    problems = [get_task("hops").sample(k, rng) for k in (2, 3, 4) for _ in range(6)]
    result = step_swaps(stepsup_lm, problems, model="untrained", resamples=200)
    ex = result.examples
    assert set(ex["step"]) == {0, 1, 2, 3, "all"}
    for row in ex.itertuples():
        p, q = problems[row.problem], problems[row.donor]
        assert p.steps == q.steps and row.problem != row.donor
        j = p.steps - 1 if row.step == "all" else row.step
        assert q.intermediates[j] != p.intermediates[j]
        assert row.counterfactual == continue_from(get_task("hops"), p, j, q.intermediates[j])
        assert not (row.follows and row.keeps)
        assert row.follows == (row.answer == row.counterfactual)
    table = result.to_dataframe()
    assert list(table["step"]) == ["0", "1", "2", "3", "all"]
    assert (table["follows_low"] <= table["follows"]).all() and (table["follows"] <= table["follows_high"]).all()
    assert table.loc[table["step"] == "3", "n"].item() == len(ex[ex["step"] == 3]) <= 6  # only 4-hop problems
    assert len(result.plot().data) == 2


def test_step_swaps_refuse_models_that_place_their_own_latents(tiny_lm):
    problems = [get_task("arith").sample(2, random.Random(i)) for i in range(2)]
    with pytest.raises(ValueError, match="places its own latents"):
        step_swaps(tiny_lm, problems)
