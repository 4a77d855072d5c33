"""LatentLM invariants: cached generation, the segmented latent forward, batching, save/load."""

import json

import pytest
import torch
from conftest import PROMPTS, make_tiny_lm
from safetensors.torch import load_file

from lensing.model import CheckpointError, LatentLM, Trace


@pytest.fixture(params=["fusion", "hidden", "prediction"])
def lm(request, tmp_path):
    return make_tiny_lm(tmp_path / "tok", mode=request.param)


def full_forward(lm, embeds):
    out = lm.model(inputs_embeds=embeds[None], output_hidden_states=True)
    return out.logits[0], out.hidden_states[lm.config.layer][0]


def test_generation_emits_latents_and_text(lm):
    traces = lm.generate(PROMPTS, max_new_tokens=30)
    kinds = [k for t in traces for k in t.kinds]
    assert "latent" in kinds and "cot" in kinds  # precondition for the tests below


@torch.no_grad()
def test_cached_generate_equals_full_recompute(lm):
    for trace in lm.generate(PROMPTS, max_new_tokens=30):
        logits, hidden = full_forward(lm, trace.input_embeds)
        torch.testing.assert_close(trace.logits, logits, atol=1e-5, rtol=0)
        for j, pos in enumerate(trace.latent_positions):
            latent, e_pred = lm.latent_embedding(hidden[pos - 1], logits[pos - 1])
            torch.testing.assert_close(trace.input_embeds[pos], latent, atol=1e-5, rtol=0)
            torch.testing.assert_close(trace.latent_pred[j], e_pred, atol=1e-5, rtol=0)
        # every position's token is the argmax of the previous position's logits (greedy)
        gen = range(trace.prompt_length, len(trace))
        assert all(int(trace.logits[t - 1].argmax()) == int(trace.token_ids[t]) for t in gen)


def naive_latent_forward(lm, ids):
    """Position by position, full recompute each time: the definition of the latent forward."""
    embeds = lm.embed(ids)
    for t in range(1, len(ids)):
        if ids[t] == lm.thinking_id:
            logits, hidden = full_forward(lm, embeds[:t])
            latent, _ = lm.latent_embedding(hidden[-1], logits[-1])
            embeds = torch.cat([embeds[:t], latent[None], embeds[t + 1 :]])
    return full_forward(lm, embeds)[0]


def test_training_forward_equals_naive_recompute(lm):
    th = lm.thinking_id
    seqs = [
        lm.encode("a=12;b=a+3;b?\n")
        + [th, th]
        + lm.encode("b=12+3", add_bos=False)
        + [th]
        + lm.encode("=15", add_bos=False),
        lm.encode("a=5;b=a-7;b?\nb=5") + [th] + lm.encode("-7=98", add_bos=False),
    ]
    width = max(map(len, seqs))
    ids = torch.full((2, width), lm._pad_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        out = lm(ids, mask)
        for i, s in enumerate(seqs):
            torch.testing.assert_close(
                out.logits[i, : len(s)], naive_latent_forward(lm, torch.tensor(s)), atol=1e-5, rtol=0
            )


def test_gradient_flows_through_latents(tmp_path):
    lm = make_tiny_lm(tmp_path / "tok", mode="hidden")
    ids = torch.tensor([lm.encode("a=1;b=a+2;b?\n") + [lm.thinking_id] + lm.encode("b=3", add_bos=False)])
    labels = ids.clone()
    labels[0, :-4] = -100  # loss only on "b=3": it reaches the embeddings of the prompt through the latent
    lm(ids, labels=labels).loss.backward()
    assert lm.model.get_input_embeddings().weight.grad.abs().sum() > 0
    assert lm.model.get_input_embeddings().weight.grad[lm.thinking_id].abs().sum() == 0  # its embedding is never fed


@torch.no_grad()
def test_batched_equals_one_by_one(lm):
    batched = lm.generate(PROMPTS, max_new_tokens=25)
    for prompt, b in zip(PROMPTS, batched, strict=True):
        single = lm.generate(prompt, max_new_tokens=25)[0]
        assert single.tokens == b.tokens and single.kinds == b.kinds
        torch.testing.assert_close(single.logits, b.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(single.input_embeds, b.input_embeds, atol=1e-5, rtol=0)


def test_score_gold_probabilities(lm):
    prompt, completion = lm.encode("a=1;b=a+2;b?\n"), lm.encode("b=1+2=3", add_bos=False)
    trace = lm.score([prompt], [completion])[0]
    probs = torch.softmax(trace.logits, -1)
    ids = trace.token_ids
    torch.testing.assert_close(trace.gold_prob[:-1], probs[torch.arange(len(ids) - 1), ids[1:]])
    assert torch.isnan(trace.gold_prob[-1])
    assert trace.kinds[: len(prompt)] == ["prompt"] * len(prompt)


def test_kinds_mark_latents_and_answer(tmp_path):
    lm = make_tiny_lm(tmp_path / "tok")
    completion = lm.encode("b=1", add_bos=False) + [lm.thinking_id] + lm.encode("\n###3", add_bos=False)
    trace = lm.score([lm.encode("a?\n")], [completion])[0]
    assert trace.kinds[4:] == ["cot", "cot", "cot", "latent", "cot", "answer", "answer", "answer", "answer"]
    assert trace.text("◆") == "b=1◆\n###3"
    assert "[LATENT]" in str(trace)


def test_save_load_round_trip_is_exact(lm, tmp_path):
    lm.save_pretrained(tmp_path / "ckpt", extra={"stage": 3})
    loaded = LatentLM.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == lm.config and loaded.thinking_id == lm.thinking_id and loaded.meta["stage"] == 3
    for (name, a), (_, b) in zip(lm.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    a, b = lm.generate(PROMPTS, max_new_tokens=20), loaded.generate(PROMPTS, max_new_tokens=20)
    assert [t.tokens for t in a] == [t.tokens for t in b]
    assert all(torch.equal(x.logits, y.logits) for x, y in zip(a, b, strict=True))


def test_adapter_round_trip(tmp_path):
    lm = make_tiny_lm(tmp_path / "tok", adapter_hidden=16)
    lm.save_pretrained(tmp_path / "ckpt")
    loaded = LatentLM.from_pretrained(tmp_path / "ckpt")
    for k, v in lm.adapter.state_dict().items():
        assert torch.equal(v, loaded.adapter.state_dict()[k])


def test_trace_save_load_round_trip(lm, tmp_path):
    trace = lm.generate(PROMPTS[1], max_new_tokens=20, meta=[{"steps": 2}])[0]
    trace.save(tmp_path / "t")
    back = Trace.load(tmp_path / "t")
    assert back.tokens == trace.tokens and back.kinds == trace.kinds and back.meta == trace.meta
    for name in ("token_ids", "input_embeds", "latent_h", "latent_pred", "logits", "max_prob", "entropy"):
        assert torch.equal(getattr(back, name), getattr(trace, name)), name
    (tmp_path / "t.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="cannot read trace"):
        Trace.load(tmp_path / "t")


# ------------------------------------------------------------------ bad input
def test_out_of_vocabulary_text(tiny_lm):
    with pytest.raises(ValueError, match=r"outside the model's vocabulary: \['X', 'z'\]"):
        tiny_lm.generate("a=1;zX?\n")


def test_prompt_longer_than_context(tiny_lm):
    with pytest.raises(ValueError, match="does not fit the model's context of 96"):
        tiny_lm.generate("1" * 200)


def test_empty_batch(tiny_lm):
    with pytest.raises(ValueError, match="empty batch"):
        tiny_lm.generate([])


def test_corrupt_checkpoints(tiny_lm, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        LatentLM.from_pretrained(tmp_path / "missing")
    tiny_lm.save_pretrained(tmp_path / "c")
    weights = tmp_path / "c" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        LatentLM.from_pretrained(tmp_path / "c")
    weights.write_bytes(good)
    (tmp_path / "c" / "lensing.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="lensing.json is corrupt"):
        LatentLM.from_pretrained(tmp_path / "c")


def test_mismatched_checkpoint(tiny_lm, tmp_path):
    tiny_lm.save_pretrained(tmp_path / "c")
    meta_path = tmp_path / "c" / "lensing.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "d_model": 64}))
    with pytest.raises(CheckpointError, match="does not match its lensing.json"):
        LatentLM.from_pretrained(tmp_path / "c")


def test_failed_save_leaves_nothing(tiny_lm, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tiny_lm.tokenizer, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        tiny_lm.save_pretrained(tmp_path / "c")
    assert list(tmp_path.iterdir()) == [tmp_path / "tok"] or not (tmp_path / "c").exists()
    assert not any(p.name.startswith(".c.") for p in tmp_path.iterdir())


def test_safetensors_only(tiny_lm, tmp_path):
    tiny_lm.save_pretrained(tmp_path / "c")
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert load_file(str(tmp_path / "c" / "model.safetensors"))


@torch.no_grad()
def test_forced_latents_chain(lm):
    traces = lm.generate(PROMPTS, max_new_tokens=10, force_latents=4)
    for trace in traces:
        p = trace.prompt_length
        assert trace.kinds[p : p + 4] == ["latent"] * 4 and trace.latent_positions[:4] == list(range(p, p + 4))
        logits, hidden = full_forward(lm, trace.input_embeds)
        latent, _ = lm.latent_embedding(hidden[p + 2], logits[p + 2])
        torch.testing.assert_close(trace.input_embeds[p + 3], latent, atol=1e-5, rtol=0)
