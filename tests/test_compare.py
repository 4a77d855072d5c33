"""Variants across seeds: t-intervals over seeds, the table, grouping by variant and the CLI."""

import json
import math

import pandas as pd
import pytest
import torch

from lensing.train.compare import Comparison, compare, seed_interval, variant_label


def test_seed_interval_is_the_student_t_interval():
    mean, lo, hi = seed_interval([80.0, 90.0, 100.0], digits=4)
    half = 4.302653 * 10 / math.sqrt(3)  # t(0.975, 2 dof) x sd / sqrt(n)
    assert mean == 90.0 and lo == pytest.approx(90 - half, abs=1e-3) and hi == pytest.approx(90 + half, abs=1e-3)
    assert seed_interval([70.0, 70.0]) == (70.0, 70.0, 70.0)
    one = seed_interval([55.0])
    assert one[0] == 55.0 and math.isnan(one[1]) and math.isnan(one[2])
    with pytest.raises(ValueError, match="no seeds"):
        seed_interval([])


def test_comparison_table_means_clips_and_lists_seeds():
    rows = [
        {"variant": v, "seed": s, "difficulty": d, "n": 10, "accuracy": a, "latents": 2.0, "total_steps": 100}
        for v, accs in (("hops:stepsup", (100.0, 100.0, 90.0)), ("hops:coconut", (20.0, 10.0, 15.0)))
        for s, a in enumerate(accs)
        for d in ("2", "all")
    ]
    rows[1]["zeroed"], rows[3]["zeroed"], rows[5]["zeroed"] = 10.0, 20.0, 30.0  # the stepsup 'all' rows
    table = Comparison(pd.DataFrame(rows)).to_dataframe()
    sup = table[(table["variant"] == "hops:stepsup") & (table["difficulty"] == "all")].iloc[0]
    assert sup["accuracy"] == pytest.approx(96.7) and sup["ci_high"] == 100.0  # clipped at 100
    assert sup["per_seed"] == [100.0, 100.0, 90.0] and sup["seeds"] == 3 and sup["zeroed"] == 20.0
    coc = table[(table["variant"] == "hops:coconut") & (table["difficulty"] == "2")].iloc[0]
    assert coc["accuracy"] == 15.0 and coc["ci_low"] == pytest.approx(15 - 4.302653 * 5 / math.sqrt(3), abs=0.06)
    markdown = Comparison(pd.DataFrame(rows)).to_markdown().splitlines()
    assert markdown[0] == "| variant | seeds | steps | k=2 | all | all latents zeroed | per seed (all) |"
    assert markdown[2].startswith("| hops:stepsup | 3 | 100 | 96.7 [")
    assert markdown[2].endswith("| 20.0 | 100.0 / 100.0 / 90.0 |")
    assert markdown[3].endswith("| - | 20.0 / 10.0 / 15.0 |")  # coconut had no ablation rows


def test_comparison_file_round_trips_and_rejects_other_files(tmp_path):
    rows = [
        {"variant": "hops:stepsup", "seed": s, "difficulty": d, "n": 10, "accuracy": a, "latents": 2.0,
         "total_steps": 100, "zeroed": z, "swap_follows": float("nan")}
        for s, a, z in ((0, 90.0, 10.0), (1, 100.0, 20.0))
        for d in (2, "all")
    ]
    saved = Comparison(pd.DataFrame(rows))
    path = saved.save(tmp_path / "c.json")
    loaded = Comparison.load(path)
    assert loaded.to_markdown() == saved.to_markdown()
    assert json.loads(path.read_text())["rows"][0]["swap_follows"] is None  # strict JSON: NaN written as null
    (tmp_path / "bad.json").write_text('{"rows": [{"variant": "x"}]}')
    with pytest.raises(ValueError, match="bad.json is not a comparison file.*accuracy"):
        Comparison.load(tmp_path / "bad.json")
    (tmp_path / "torn.json").write_text('{"rows": [')
    with pytest.raises(ValueError, match="torn.json is not a comparison file written by"):
        Comparison.load(tmp_path / "torn.json")
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []


def _stepsup_model(tmp_path, seed):
    from lensing.train.curriculum import TrainConfig, build_model

    torch.manual_seed(seed)
    lm = build_model(TrainConfig(task="hops", n_layers=2, d_model=32, n_heads=4, d_mlp=64), tmp_path / f"tok{seed}")
    config = {"curriculum": "stepsup", "latent_kind": "hidden", "latents_per_step": 1}
    lm.meta = {
        "task": "hops",
        "variant": "stepsup",
        "curriculum": "stepsup",
        "inference": {"latents_per_step": 1, "max_latent_steps": 5},
        "record": {"training": {"seed": seed, "data_seed": 0, "total_steps": 40, "train_config": config}},
    }
    return lm


def test_compare_groups_seeds_by_variant_and_ablates_step_latents(tmp_path, capsys):
    models = [_stepsup_model(tmp_path, s) for s in (0, 1)]
    assert variant_label(models[0]) == "hops:stepsup"
    result = compare(models, n=2, max_new_tokens=10)
    table = result.to_dataframe()
    assert list(table["difficulty"]) == ["2", "3", "4", "5", "all"]
    assert (table["seeds"] == 2).all() and (table["variant"] == "hops:stepsup").all()
    overall = result.rows[result.rows["difficulty"] == "all"]
    assert (overall["latents"] >= 3.5).all()  # at least the forced latent per hop, k = 2..5
    assert overall["zeroed"].between(0, 100).all() and overall["swap_follows"].between(0, 100).all()
    for s, lm in enumerate(models):  # the CLI on saved checkpoints gives the same accuracies
        lm.save_pretrained(tmp_path / f"m{s}", extra=lm.meta)
    from lensing.cli import main

    paths = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    main(["compare", *paths, "--n", "2", "--json", "--no-ablations", "--max-new-tokens", "10"])
    records = json.loads(capsys.readouterr().out)
    assert [r["accuracy"] for r in records] == table["accuracy"].tolist()
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- generated:seeds -->\nold\n<!-- /generated:seeds -->\nend\n")
    out = tmp_path / "rows.json"
    options = ["--n", "2", "--no-ablations", "--max-new-tokens", "10", "--out", str(out), "--readme", str(readme)]
    main(["compare", *paths, *options])
    capsys.readouterr()
    saved = Comparison.load(out)
    assert saved.to_dataframe()["accuracy"].tolist() == table["accuracy"].tolist()
    block = saved.readme_block()
    assert readme.read_text() == f"intro\n<!-- generated:seeds -->\n{block}\n<!-- /generated:seeds -->\nend\n"
    # a README without the block is refused before any evaluation
    with pytest.raises(SystemExit, match="has no '<!-- generated:calibration -->'"):
        main(["compare", *paths, "--readme", str(readme), "--block", "calibration"])
    assert all(r["per_seed"] == t for r, t in zip(records, table["per_seed"], strict=True))


def test_target_needs_every_difficulty_and_every_single_latent_swap():
    def rows(seed, accs, by_latent):
        out = [
            {"variant": "hops:stepsup", "seed": seed, "difficulty": d, "n": 10, "accuracy": a, "latents": 2.0,
             "total_steps": 100}
            for d, a in zip(("2", "3", "all"), accs, strict=True)
        ]
        out[-1] |= {"zeroed": 10.0, "swap_follows": 50.0, "swap_follows_by_latent": by_latent}
        return out

    table = pd.DataFrame(
        rows(0, (90.0, 86.0, 88.0), [95.0, 81.0])  # meets both
        + rows(1, (90.0, 84.0, 87.0), [95.0, 95.0])  # one difficulty below 85
        + rows(2, (99.0, 99.0, 99.0), [99.0, 10.0])  # latent 2 not followed
    )
    result = Comparison(table)
    assert result.meets_target()["meets"].tolist() == [True, False, False]
    assert result.meets_target(accuracy=80)["meets"].tolist() == [True, True, False]
    (sentence,) = result.target_sentences()
    assert sentence.startswith("`hops:stepsup`: 1 of 3 seeds reach 85% at every difficulty")
    assert "seed 1, lowest accuracy 84.0%, least-followed latent 95.0%" in sentence
    assert "seed 2, lowest accuracy 99.0%, least-followed latent 10.0%" in sentence
    swaps = result.swaps_markdown().splitlines()
    assert swaps[0] == "| variant | seed | latent 1 swapped | latent 2 swapped | all swapped |"
    assert swaps[4] == "| hops:stepsup | 2 | 99.0 | 10.0 | 50.0 |"


def test_table_of_tasks_with_different_difficulties_marks_the_missing_cells():
    rows = [
        {"variant": v, "seed": 0, "difficulty": d, "n": 10, "accuracy": 50.0, "latents": 0.0, "total_steps": 10}
        for v, ds in (("arith:cot", ("1", "2")), ("hops:cot", ("2", "3")))
        for d in (*ds, "all")
    ]
    lines = Comparison(pd.DataFrame(rows)).to_markdown().splitlines()
    assert lines[0] == "| variant | seeds | steps | k=1 | k=2 | k=3 | all | per seed (all) |"
    assert lines[2] == "| arith:cot | 1 | 10 | 50.0 | 50.0 | - | 50.0 | 50.0 |"
    assert lines[3] == "| hops:cot | 1 | 10 | - | 50.0 | 50.0 | 50.0 | 50.0 |"


def test_unknown_step_counts_show_as_unknown():
    rows = [
        {"variant": "arith:lt", "seed": 0, "difficulty": d, "n": 10, "accuracy": 50.0, "latents": 1.0,
         "total_steps": None}
        for d in ("1", "all")
    ]
    result = Comparison(pd.DataFrame(rows))
    assert result.to_dataframe()["total_steps"].tolist() == [None, None]
    assert result.to_markdown().splitlines()[2] == "| arith:lt | 1 | ? | 50.0 | 50.0 | 50.0 |"
