"""The bundled arith-tiny variants: loading, accuracy and the tuned lens on real traces."""

import json
import subprocess
import sys

import pytest
import torch

import lensing
from lensing.tasks import make_splits
from lensing.train import evaluate


@pytest.fixture(scope="module")
def test_problems():
    return make_splits(0, 0, 30, seed=0).test  # 30 per difficulty, the same test split `lensing eval` uses


@pytest.fixture(scope="module")
def results(test_problems):
    return {name: evaluate(lensing.load(f"arith-tiny:{name}"), test_problems) for name in ("cot", "hidden", "lt")}


def test_names_resolve_to_stages():
    assert lensing.available() == [
        "arith-tiny",
        "arith-tiny:cot",
        "arith-tiny:hidden",
        "arith-tiny:lt",
        "hops-tiny",
        "hops-tiny:coconut",
        "hops-tiny:cot",
        "hops-tiny:stepsup",
    ]
    for name, stage, mode in (
        ("arith-tiny:cot", 1, "fusion"),
        ("arith-tiny:hidden", 2, "hidden"),
        ("arith-tiny", 3, "fusion"),
    ):
        lm = lensing.load(name)
        assert lm.meta["stage"] == stage and lm.config.mode == mode
    with pytest.raises(ValueError, match="unknown model .arith-huge.*arith-tiny:cot"):
        lensing.load("arith-huge")


def test_cot_accuracy_on_short_chains(results):
    table = results["cot"].to_dataframe().set_index("steps")
    for steps in ("1", "2", "3"):
        assert table.loc[steps, "accuracy"] >= 90, table


def test_lt_close_to_cot_overall(results):
    assert results["lt"].accuracy >= results["cot"].accuracy - 5


def test_lt_emits_latents(results):
    assert sum(results["lt"].n_latents) > 0
    assert sum(results["cot"].n_latents) == 0


def test_tuned_lens_beats_logit_lens_at_every_intermediate_layer(results, tmp_path):
    lm = lensing.load("arith-tiny")
    probe = lensing.attach(lm)
    train = make_splits(0, 40, 0, seed=0).val
    train_traces = lm.generate([p.prompt for p in train])
    held_out = results["lt"].traces[:60]
    lens = probe.train_tuned_lens(train_traces, steps=200)
    logit_kl = probe.logit_lens(held_out).mean_kl_by_layer()
    tuned_kl = probe.logit_lens(held_out, lens="tuned").mean_kl_by_layer()
    assert (tuned_kl[:-1] < logit_kl[:-1]).all(), (tuned_kl, logit_kl)
    lens.save(tmp_path / "lens")
    probe.load_tuned_lens(tmp_path / "lens")
    torch.testing.assert_close(probe.logit_lens(held_out, lens="tuned").mean_kl_by_layer(), tuned_kl)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lensing.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_eval_json():
    out = run_cli("eval", "arith-tiny:cot", "--n", "5", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [row["steps"] for row in report["table"]] == [1, 2, 3, 4, 5, 6, "all"]
    assert report["table"][-1]["n"] == 30


def test_cli_trace_and_errors():
    out = run_cli("trace", "arith-tiny", "a=12;b=a+3;c=b-5;c?")
    assert out.returncode == 0, out.stderr
    assert "###10" in out.stdout and "prompt" in out.stdout
    bad = run_cli("trace", "arith-tiny", "what is 2+2?")
    assert bad.returncode != 0 and "outside the model's vocabulary" in bad.stderr
    unknown = run_cli("eval", "no-such-model")
    assert unknown.returncode != 0 and "unknown model 'no-such-model'" in unknown.stderr


def test_bf16_generation_and_probes():
    lm = lensing.load("arith-tiny", dtype=torch.bfloat16)
    assert lm.model.dtype == torch.bfloat16
    traces = lm.generate(["a=12;b=a+3;c=b-5;c?\n", "a=40;b=a-9;b?\n"])
    results = lensing.attach(lm).run(traces)
    final = torch.softmax(torch.cat([t.logits for t in traces]), -1)
    assert torch.equal(results["logit_lens"].stats.top_ids[-1, :, 0], final.argmax(-1))
    parts = results["decompose"]
    torch.testing.assert_close(parts.dla.sum(0), parts.logit, atol=0.1, rtol=0.02)
