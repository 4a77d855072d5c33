"""The bundled hops-tiny models: written CoT, and one latent per hop that really carries it.

The numbers asserted here are the ones the README quotes for these models (same problems,
same seeds): 20 test problems per hop count, the split `lensing eval` uses.
"""

from pathlib import Path

import pytest

import lensing
from lensing.interventions import intervention_sweep
from lensing.interventions.steps import step_swaps
from lensing.tasks import make_splits
from lensing.train import evaluate
from lensing.train.compare import Comparison
from lensing.viz.results import find_blocks

# measured on these problems (README, "Latents that compute"); accuracies in %, rates in [0, 1]
COT_ALL, STEPSUP_ALL, STEPSUP_MIN_K = 93.75, 97.5, 85
ZERO_ACC, SHUFFLE_ACC, SWAP_MIN = 0.10, 0.1625, 0.947
COCONUT_ALL, COCONUT_ZERO_ACC, COCONUT_SWAP_FOLLOWS, STEPSUP_TOTAL_STEPS = 100.0, 0.1375, 0.157, 4900


ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("block, name", [("seeds", "hops_seeds.json"), ("calibration", "calibration.json")])
def test_readme_tables_render_the_recorded_comparisons(block, name):
    """The README's seed and calibration tables are `lensing compare --out` files, rendered."""
    recorded = Comparison.load(ROOT / "figures" / name)
    assert find_blocks((ROOT / "README.md").read_text())[block] == recorded.readme_block()


def test_recorded_seed_zero_rows_are_the_bundled_checkpoints(results):
    """The bundled checkpoints are seed 0 of the recorded runs: same steps, and their recorded
    accuracy (100 problems per k) agrees with this rerun (20 per k)."""
    rows = Comparison.load(ROOT / "figures" / "hops_seeds.json").rows
    seed0 = rows[(rows["difficulty"] == "all") & (rows["seed"] == 0)].set_index("variant")
    stepsup = seed0.loc["hops-direct:stepsup"]
    assert stepsup["total_steps"] == STEPSUP_TOTAL_STEPS
    assert abs(results["stepsup"].accuracy - stepsup["accuracy"]) <= 5
    assert stepsup["zeroed"] / 100 == pytest.approx(ZERO_ACC, abs=0.1)
    assert min(stepsup["swap_follows_by_latent"]) / 100 == pytest.approx(SWAP_MIN, abs=0.1)
    coconut = seed0.loc["hops-direct:coconut"]
    assert coconut["total_steps"] == STEPSUP_TOTAL_STEPS and coconut["accuracy"] == pytest.approx(COCONUT_ALL, abs=5)
    assert coconut["swap_follows"] / 100 == pytest.approx(COCONUT_SWAP_FOLLOWS, abs=0.1)
