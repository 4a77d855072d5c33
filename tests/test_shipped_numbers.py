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
from lensing.viz.results import find_blocks, overall_accuracy_sentence, readme_blocks, splice_blocks

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = json.loads((ROOT / "figures" / "results.json").read_text())
COMPARE_BLOCKS = {"seeds", "calibration"}  # written by `lensing compare --readme` (tests/test_bundled_hops.py)


@pytest.fixture(scope="module")
def small_run():
    return build_figures(n_eval=8, n_analysis=48, n_trails=40, n_headline=40, log=lambda message: None)


def test_readme_blocks_are_generated_from_the_shipped_numbers():
    readme = (ROOT / "README.md").read_text()
    blocks = find_blocks(readme)
    assert {k: v for k, v in blocks.items() if k not in COMPARE_BLOCKS} == readme_blocks(SHIPPED)


def test_figure_captions_quote_the_shipped_run():
    index = (ROOT / "figures" / "README.md").read_text()
    overall = ", ".join(f":{v} {SHIPPED['accuracy'][v]['all']:.1f}%" for v in ("cot", "hidden", "lt"))
    assert f"Overall: {overall}." in index
    # the accuracy caption and the README's accuracy block state the same sentence, from the same numbers
    sentence = overall_accuracy_sentence(SHIPPED["accuracy"], SHIPPED["n_per_difficulty"])
    caption = index.split("## 1. accuracy_by_difficulty", 1)[1].split("## 2.", 1)[0]
    assert sentence in caption and sentence in find_blocks((ROOT / "README.md").read_text())["accuracy"]


def test_splice_replaces_only_generated_blocks():
    text = "intro 1.0\n<!-- generated:a -->\nold 2.0\n<!-- /generated:a -->\noutro 3.0\n"
    assert (
        splice_blocks(text, {"a": "new 4.0"})
        == "intro 1.0\n<!-- generated:a -->\nnew 4.0\n<!-- /generated:a -->\noutro 3.0\n"
    )
    with pytest.raises(ValueError, match="no markers for generated blocks \\['b'\\]"):
        splice_blocks(text, {"b": "x"})


def test_figure_builder_finishes(small_run, tmp_path):
    assert len(small_run.figures) == 12
    names = {f.name for f in small_run.figures}
    out = write_figures(small_run.figures, tmp_path / "figures", ("html",), small_run.facts)
    for name in names:
        assert (out / f"{name}.html").stat().st_size > 1000
        assert (out / f"{name}.csv").stat().st_size > 0
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(small_run.facts))
    assert all(any(ch.isdigit() for ch in f.caption) for f in small_run.figures)
    assert set(readme_blocks(small_run.facts)) == set(find_blocks((ROOT / "README.md").read_text())) - COMPARE_BLOCKS


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


def _headline(facts: dict) -> dict:
    return {(row["task"], row["variant"]): row for row in facts["headline"]}


def test_headline_covers_every_bundled_variant(small_run):
    from lensing.studies.records import bundled_variants

    names = {row["model"] for row in SHIPPED["headline"]}
    assert names == set(bundled_variants()) == {row["model"] for row in small_run.facts["headline"]}


def test_headline_accuracy_and_latents_match_the_shipped_table(small_run):
    got, shipped = _headline(small_run.facts), _headline(SHIPPED)
    for key, row in shipped.items():
        assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"], key
        assert abs(got[key]["accuracy"] - row["accuracy"]) <= _band(row["accuracy"], got[key]["n"]), key
        assert got[key]["latents"] == pytest.approx(row["latents"], rel=0.3, abs=0.3), key
        assert (row["latents"] > 0) == (row["variant"] != "cot"), key


def test_headline_latents_are_needed_and_carry_their_step(small_run):
    """Shuffling the latents costs every latent variant most of its accuracy, and a probe reads each
    latent's step value far above the shuffled-label probe; hops latents name their node almost always."""
    for facts in (small_run.facts, SHIPPED):
        for (task, variant), row in _headline(facts).items():
            if variant == "cot":
                assert row["shuffled"] is None and row["effective_rank"] is None
                continue
            assert row["drop_low"] > 40, (task, variant, row["drop_low"])
            assert row["decoded_low"] > row["decoded_shuffled_high"], (task, variant)
            if task == "hops-direct":
                assert row["decoded"] >= 0.9, (variant, row["decoded"])


def test_headline_rank_order_matches_the_shipped_table(small_run):
    """Per task, the same variant's natural latents have the lower effective rank in the small rerun."""
    got, shipped = _headline(small_run.facts), _headline(SHIPPED)
    for task in {t for t, _ in shipped}:
        latent = [k for k in shipped if k[0] == task and k[1] != "cot"]
        lowest = min(latent, key=lambda k: shipped[k]["effective_rank"])
        assert lowest == min(latent, key=lambda k: got[k]["effective_rank"]), task
        assert all(shipped[k]["effective_rank_low"] <= shipped[k]["effective_rank"] for k in latent)
        # the README: the lower-rank variant decodes its step values at least as well as the others
        for facts in (small_run.facts, SHIPPED):
            rows = _headline(facts)
            assert all(rows[lowest]["decoded_high"] >= rows[k]["decoded_low"] for k in latent), (task, rows[lowest])


def test_figure_names_are_the_ones_the_cli_checks(small_run):
    from lensing.viz.paper import FIGURE_NAMES

    assert tuple(f.name for f in small_run.figures) == FIGURE_NAMES


def test_figures_never_replace_or_delete_a_users_files(small_run, tmp_path):
    out = tmp_path / "figures"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    write_figures(small_run.figures, out, ("html",), small_run.facts)
    assert (out / "notes.txt").read_text() == "mine"
    first = set(p.name for p in out.iterdir())
    # a rerun in fewer formats removes only what the earlier run wrote and this one does not
    write_figures(small_run.figures[:2], out, ("html",), None)
    left = set(p.name for p in out.iterdir())
    assert "notes.txt" in left and "results.json" not in left and "logit_lens.html" not in left
    assert left < first | {".lensing-figures.json"}
    # a user's file where a figure would go stops the run before anything is written
    (out / "logit_lens.csv").write_text("my numbers")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ValueError, match="did not write and would replace: logit_lens.csv"):
        write_figures(small_run.figures, out, ("html",), small_run.facts)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert (out / "logit_lens.csv").read_text() == "my numbers"
    assert not list(tmp_path.glob(".figures.*"))


def test_cli_figures_refuses_a_folder_with_foreign_files_before_any_work(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("my readme")
    run = subprocess.run(
        [sys.executable, "-m", "lensing.cli", "figures", "--out", str(out), "--formats", "html"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "would replace: README.md" in run.stderr, run.stderr
    assert (out / "README.md").read_text() == "my readme" and [p.name for p in out.iterdir()] == ["README.md"]
