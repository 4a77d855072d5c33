"""Every number lensing ships is generated, and the headline facts hold when recomputed on a small sample.

``figures/results.json`` and the generated blocks of README.md come from one `make figures` run.
Here the same pipeline runs again with a few problems per analysis (fixed seeds), and each
headline fact is checked against the shipped value within a tolerance band that is honest for
the small sample.
"""

import json
import math
from pathlib import Path

import pytest

from lensing.viz.paper import build_figures, write_figures
from lensing.viz.results import find_blocks, readme_blocks, splice_blocks

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = json.loads((ROOT / "figures" / "results.json").read_text())


@pytest.fixture(scope="module")
def small_run():
    return build_figures(n_eval=8, n_analysis=48, n_trails=40, log=lambda message: None)


def test_readme_blocks_are_generated_from_the_shipped_numbers():
    readme = (ROOT / "README.md").read_text()
    assert find_blocks(readme) == readme_blocks(SHIPPED)


def test_figure_captions_quote_the_shipped_run():
    index = (ROOT / "figures" / "README.md").read_text()
    overall = ", ".join(f":{v} {SHIPPED['accuracy'][v]['all']:.1f}%" for v in ("cot", "hidden", "lt"))
    assert f"Overall: {overall}." in index


def test_splice_replaces_only_generated_blocks():
    text = "intro 1.0\n<!-- generated:a -->\nold 2.0\n<!-- /generated:a -->\noutro 3.0\n"
    assert (
        splice_blocks(text, {"a": "new 4.0"})
        == "intro 1.0\n<!-- generated:a -->\nnew 4.0\n<!-- /generated:a -->\noutro 3.0\n"
    )
    with pytest.raises(ValueError, match="no markers for generated blocks \\['b'\\]"):
        splice_blocks(text, {"b": "x"})


def test_figure_builder_finishes(small_run, tmp_path):
    assert len(small_run.figures) == 11
    names = {f.name for f in small_run.figures}
    out = write_figures(small_run.figures, tmp_path / "figures", ("html",), small_run.facts)
    for name in names:
        assert (out / f"{name}.html").stat().st_size > 1000
        assert (out / f"{name}.csv").stat().st_size > 0
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(small_run.facts))
    assert all(any(ch.isdigit() for ch in f.caption) for f in small_run.figures)
    assert set(readme_blocks(small_run.facts)) == set(find_blocks((ROOT / "README.md").read_text()))


def _band(shipped: float, n: int) -> float:
    """Three binomial standard errors of an accuracy (%) measured on n problems, at least 5 points."""
    p = min(max(shipped / 100, 0.02), 0.98)
    return max(5.0, 300 * math.sqrt(p * (1 - p) / n))


@pytest.mark.parametrize("variant", ["cot", "hidden", "lt"])
def test_accuracy_matches_the_shipped_table(small_run, variant):
    got, shipped = small_run.facts["accuracy"][variant]["all"], SHIPPED["accuracy"][variant]["all"]
    n = 6 * small_run.facts["n_per_difficulty"]
    assert abs(got - shipped) <= _band(shipped, n), (variant, got, shipped)
    assert got >= 90, (variant, got)


def test_lt_latents_grow_with_difficulty(small_run):
    got, shipped = small_run.facts["mean_latents"]["lt"], SHIPPED["mean_latents"]["lt"]
    assert got["6"] > 4 * got["1"] and shipped["6"] > 4 * shipped["1"], (got, shipped)
    assert got["all"] == pytest.approx(shipped["all"], rel=0.25)
    assert small_run.facts["mean_latents"]["cot"]["all"] == 0


def test_fusion_is_dominated_by_the_hidden_state(small_run):
    for facts in (small_run.facts, SHIPPED):
        parts = facts["fusion_parts"]
        assert parts["alpha_h_norm"] > 10 * parts["pred_part_norm"], parts
    assert small_run.facts["fusion_parts"]["alpha_h_norm"] == pytest.approx(
        SHIPPED["fusion_parts"]["alpha_h_norm"], rel=0.15
    )


def test_collapse_direction_and_magnitude(small_run):
    """At the last forced step :lt latents are less alike across samples and nearer the token cloud."""
    last = str(SHIPPED["settings"]["forced_latents"])
    for facts in (small_run.facts, SHIPPED):
        hidden, lt = facts["collapse"]["hidden"][last], facts["collapse"]["lt"][last]
        assert lt["mean_cosine"] < hidden["mean_cosine"] - 0.1, (lt, hidden)
        assert lt["effective_rank"] > hidden["effective_rank"], (lt, hidden)
        assert hidden["frechet_to_tokens"] > 5 * lt["frechet_to_tokens"], (lt, hidden)
    for model in ("hidden", "lt"):
        got, shipped = small_run.facts["collapse"][model][last], SHIPPED["collapse"][model][last]
        assert got["mean_cosine"] == pytest.approx(shipped["mean_cosine"], abs=0.08), model
        assert got["norm_ratio"] == pytest.approx(shipped["norm_ratio"], rel=0.15), model


def test_trails_are_found_and_structured(small_run):
    for facts in (small_run.facts, SHIPPED):
        trails = facts["trails"]
        assert trails["n_chains"] > 0
        blocks = [v for layer, v in trails["layers"].items() if layer != "embed"]
        assert all(v["depth_ratio"] < 1 for v in blocks), trails
        assert all(v["chain_ratio"] < 1 for v in blocks), trails
    assert small_run.facts["trails"]["n_chains"] >= 0.9 * small_run.facts["settings"]["n_trails"]
