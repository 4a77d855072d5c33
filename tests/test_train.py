"""Confidence-Driven Insertion, batching and a deterministic end-to-end curriculum."""

import random
from dataclasses import replace

import pytest
import torch

from lensing.model import LatentLM
from lensing.tasks import make_problem
from lensing.train import PRESETS, collate, encode_problems, insert_latents, run_curriculum


@pytest.fixture
def examples(tiny_lm):
    rng = random.Random(0)
    return encode_problems(tiny_lm, [make_problem(s, rng) for s in (1, 2, 3, 2)])


def test_collate_masks_prompt_and_padding(tiny_lm, examples):
    ids, mask, labels = collate(examples, tiny_lm._pad_id)
    for i, e in enumerate(examples):
        n, p = len(e.ids), len(e.prompt_ids)
        assert ids[i, :n].tolist() == list(e.ids) and mask[i].sum() == n
        assert (labels[i, :p] == -100).all() and (labels[i, n:] == -100).all()
        assert labels[i, p:n].tolist() == list(e.completion_ids)
    with pytest.raises(ValueError, match="empty batch"):
        collate([], 0)


def test_insertion_follows_gold_probability_on_the_same_sequence(tiny_lm, examples):
    traces = tiny_lm.score([list(e.prompt_ids) for e in examples], [list(e.completion_ids) for e in examples])
    probs = torch.cat([t.gold_prob[len(e.prompt_ids) - 1 : -2] for t, e in zip(traces, examples, strict=True)])
    tau = float(probs.median())
    tiny_lm.config = replace(tiny_lm.config, tau=tau, max_latents_per_position=1, insert_probs=(1.0,))
    inserted = insert_latents(tiny_lm, examples, seed=0)
    for trace, e, new in zip(traces, examples, inserted, strict=True):
        p = len(e.prompt_ids)
        expected = []
        for j, token in enumerate(e.completion_ids):
            if j < len(e.completion_ids) - 1 and trace.gold_prob[p - 1 + j] < tau:
                expected.append(tiny_lm.thinking_id)
            expected.append(token)
        assert list(new.completion_ids) == expected
    n_latents = sum(e.completion_ids.count(tiny_lm.thinking_id) for e in inserted)
    assert 0 < n_latents < sum(len(e.completion_ids) for e in examples)
    # the explicit CoT is kept, and re-inserting starts from the plain sequence
    assert [tuple(t for t in e.completion_ids if t != tiny_lm.thinking_id) for e in inserted] == [
        e.completion_ids for e in examples
    ]
    assert insert_latents(tiny_lm, inserted, seed=0) == inserted


def test_insertion_counts_follow_probabilities(tiny_lm, examples):
    tiny_lm.config = replace(tiny_lm.config, tau=1.01, max_latents_per_position=2, insert_probs=(1.0, 1.0))
    two = insert_latents(tiny_lm, examples, seed=0)
    for e, new in zip(examples, two, strict=True):
        assert new.completion_ids.count(tiny_lm.thinking_id) == 2 * (len(e.completion_ids) - 1)
        assert new.completion_ids[-1] == tiny_lm.tokenizer.eos_token_id
        assert new.completion_ids[-2] != tiny_lm.thinking_id  # never before EOS
    tiny_lm.config = replace(tiny_lm.config, tau=0.0)
    assert insert_latents(tiny_lm, examples, seed=0) == examples


def test_curriculum_is_deterministic_and_writes_three_checkpoints(tmp_path):
    cfg = PRESETS["smoke"]
    run_curriculum(cfg, tmp_path / "a", log=lambda m: None)
    run_curriculum(cfg, tmp_path / "b", log=lambda m: None)
    for name, mode, stage in (("cot", "fusion", 1), ("hidden", "hidden", 2), ("lt", "fusion", 3)):
        a, b = LatentLM.from_pretrained(tmp_path / "a" / name), LatentLM.from_pretrained(tmp_path / "b" / name)
        assert a.config.mode == mode and a.meta["stage"] == stage
        assert a.meta["record"]["training"]["steps"] == cfg.steps[stage - 1]
        for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), f"{name}: {key} differs between two runs with the same seed"
    first = LatentLM.from_pretrained(tmp_path / "a" / "cot").state_dict()
    later = LatentLM.from_pretrained(tmp_path / "a" / "lt").state_dict()
    assert any(not torch.equal(first[k], later[k]) for k in first)  # stages 2-3 really trained
