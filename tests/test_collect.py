"""lensing collect: mergeable statistics, the same numbers under torchrun, and resuming an interrupted run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_lm
from safetensors.torch import load_file

from lensing.collect import collect_run, read_results
from lensing.metrics import effective_rank

SETTINGS = {"n": 12, "chunk_size": 4, "max_new_tokens": 24}  # three chunks: uneven over two workers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect")
    lm = make_tiny_lm(root / "tok")
    lm.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def reference(model_dir):
    """One uninterrupted single-process run."""
    out = model_dir.parent / "reference"
    collect_run(str(model_dir), out=out, **SETTINGS)
    return read_results(out)


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


def test_statistics_are_the_moments_of_the_rows(reference, model_dir):
    tensors, summary = reference
    assert summary["problems"] == 12 and summary["latents_per_problem"] > 1  # the tiny model thinks a lot
    # the step-1 latent inputs, recomputed from traces one by one, have the stored moments
    from lensing.zoo import load

    lm = load(str(model_dir))
    from lensing.collect.core import _get_task, _problems

    problems = _problems(_get_task("arith"), 12, 0)
    traces = [t for i in range(0, 12, 4) for t in lm.generate([p.prompt for p in problems[i : i + 4]], 24)]
    first = torch.stack([t.input_embeds[t.latent_positions[0]] for t in traces if t.n_latents]).double()
    assert int(tensors["moments.1.embed.count"]) == len(first)
    torch.testing.assert_close(tensors["moments.1.embed.mean"], first.mean(0), atol=1e-6, rtol=0)
    centred = first - first.mean(0)
    torch.testing.assert_close(tensors["moments.1.embed.scatter"], centred.T @ centred, atol=1e-6, rtol=0)
    row = next(r for r in summary["latent_steps"] if r["step"] == 1 and r["layer"] == "embed")
    assert row["effective_rank"] == pytest.approx(float(effective_rank(first)), abs=1e-6)
    # attention shares: every query's head-averaged mass sums to one over the key kinds
    shares = tensors["sums.attention_share"].sum(-1)  # [layer, query kind]
    torch.testing.assert_close(shares, tensors["sums.attention_queries"].expand_as(shares), atol=1e-6, rtol=0)
    assert tensors["sums.problems"].sum() == 12


def test_torchrun_two_workers_equal_one_process(reference, model_dir, tmp_path):
    out = tmp_path / "two"
    bindir = Path(sys.executable).parent
    command = [
        str(bindir / "torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        str(bindir / "lensing"),
        "collect",
        str(model_dir),
        "-n",  # torchrun's own parser would read --n as an abbreviation of its options
        "12",
        "--chunk",
        "4",
        "--max-new-tokens",
        "24",
        "--out",
        str(out),
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)  # rank 0 alone prints: exactly one JSON document
    tensors, summary = read_results(out)
    assert printed["latent_steps"] == summary["latent_steps"]
    assert_same(tensors, reference[0], atol=1e-5)
    ref_summary = reference[1]
    assert summary["accuracy"] == ref_summary["accuracy"]
    for a, b in zip(summary["latent_steps"], ref_summary["latent_steps"], strict=True):
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], abs=1e-5, rel=0), key
            else:
                assert value == b[key], key
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"chunk-0000{i}.safetensors" for i in range(3)]


def test_interrupted_run_resumes_to_the_same_result(reference, model_dir, tmp_path):
    out = tmp_path / "resumed"

    def stop_after_first(index):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect_run(str(model_dir), out=out, on_chunk=stop_after_first, **SETTINGS)
    # nothing that looks like a result; one finished chunk kept
    assert not (out / "stats.safetensors").exists() and not (out / "summary.json").exists()
    assert [p.name for p in (out / "shards").iterdir()] == ["chunk-00000.safetensors"]
    with pytest.raises(ValueError, match="no finished collection"):
        read_results(out)
    log = []
    collect_run(str(model_dir), out=out, log=log.append, **SETTINGS)
    assert sum("read from" in m for m in log) == 1 and sum("done" in m for m in log) == 2
    tensors, summary = read_results(out)
    assert_same(tensors, reference[0], atol=1e-12)
    assert summary["latent_steps"] == reference[1]["latent_steps"]
    # the chunk files hold the same sums as the result, chunk by chunk
    total = sum(load_file(str(p))["sums.problems"] for p in (out / "shards").iterdir())
    torch.testing.assert_close(total, tensors["sums.problems"])


def test_other_settings_or_foreign_folder_refused(reference, model_dir, tmp_path):
    with pytest.raises(ValueError, match="other settings.*n differ"):
        collect_run(str(model_dir), out=model_dir.parent / "reference", **{**SETTINGS, "n": 8})
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        collect_run(str(model_dir), out=tmp_path, **SETTINGS)
