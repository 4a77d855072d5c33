"""The bundled hops-tiny models: written CoT, and one latent per hop that really carries it.

The numbers asserted here are the ones the README quotes for these models (same problems,
same seeds): 20 test problems per hop count, the split `lensing eval` uses.
"""

import pytest

import lensing
from lensing.interventions import intervention_sweep
from lensing.interventions.steps import step_swaps
from lensing.tasks import make_splits
from lensing.train import evaluate

# measured on these problems (README, "Latents that compute"); accuracies in %, rates in [0, 1]
COT_ALL, STEPSUP_ALL, STEPSUP_MIN_K = 93.75, 97.5, 85
ZERO_ACC, SHUFFLE_ACC, SWAP_MIN = 0.10, 0.1625, 0.947
COCONUT_ALL, COCONUT_ZERO_ACC, COCONUT_SWAP_FOLLOWS, STEPSUP_TOTAL_STEPS = 100.0, 0.1375, 0.157, 4900


@pytest.fixture(scope="module")
def problems():
    return make_splits(0, 0, 20, seed=0, task="hops-direct").test


@pytest.fixture(scope="module")
def stepsup():
    return lensing.load("hops-tiny:stepsup")


@pytest.fixture(scope="module")
def results(problems, stepsup):
    return {"cot": evaluate(lensing.load("hops-tiny:cot"), problems), "stepsup": evaluate(stepsup, problems)}


def test_names_and_what_the_checkpoints_record(stepsup):
    assert stepsup.meta["record"]["training"]["total_steps"] == STEPSUP_TOTAL_STEPS
    assert lensing.load("hops-tiny").meta["variant"] == "stepsup"
    assert stepsup.meta["task"] == "hops-direct" and stepsup.meta["inference"]["latents_per_step"] == 1
    assert lensing.load("hops-tiny:cot").meta["curriculum"] == "cot"


def test_accuracy_by_hop_count(results):
    cot = results["cot"].to_dataframe().set_index("steps")
    sup = results["stepsup"].to_dataframe().set_index("steps")
    assert cot.loc["all", "accuracy"] == pytest.approx(COT_ALL, abs=5)
    assert sup.loc["all", "accuracy"] == pytest.approx(STEPSUP_ALL, abs=5)
    assert sup.loc[["2", "3", "4", "5"], "mean_latents"].tolist() == [2, 3, 4, 5]  # one latent per hop, no text steps
    assert (sup.loc[["2", "3", "4", "5"], "accuracy"] >= STEPSUP_MIN_K).all(), sup


def test_zeroed_or_shuffled_latents_drop_to_chance(problems, stepsup, results):
    table = intervention_sweep(stepsup, problems, ["zero", "shuffle"], resamples=200).to_dataframe()
    table = table.set_index("intervention")
    # interventions score hops answers with the task's check, as evaluation does
    assert table["clean_accuracy"].iloc[0] == pytest.approx(results["stepsup"].accuracy / 100)
    assert table.loc["zero", "accuracy"] == pytest.approx(ZERO_ACC, abs=0.1)
    assert table.loc["shuffle", "accuracy"] == pytest.approx(SHUFFLE_ACC, abs=0.1)


def test_swapping_latent_j_continues_from_the_donors_node_j(problems, stepsup):
    swaps = step_swaps(stepsup, problems, seed=0, resamples=200).to_dataframe().set_index("step")
    assert swaps["follows"].min() == pytest.approx(SWAP_MIN, abs=0.1)


def test_plain_coconut_computes_through_latents_that_do_not_transfer(problems):
    """The equal-budget control: no step supervision. Right, and broken by zeroed latents, but a
    latent moved into another problem means nothing there (the answer follows neither run)."""
    coconut = lensing.load("hops-tiny:coconut")
    assert coconut.meta["record"]["training"]["total_steps"] == 4900 == STEPSUP_TOTAL_STEPS
    accuracy = evaluate(coconut, problems).accuracy
    zeroed = intervention_sweep(coconut, problems, ["zero"], resamples=200).to_dataframe().iloc[0]
    swaps = step_swaps(coconut, problems, seed=0, resamples=200).to_dataframe().set_index("step")
    assert accuracy == pytest.approx(COCONUT_ALL, abs=5)
    assert zeroed["accuracy"] == pytest.approx(COCONUT_ZERO_ACC, abs=0.1)
    assert swaps.loc["all", "follows"] == pytest.approx(COCONUT_SWAP_FOLLOWS, abs=0.1)
