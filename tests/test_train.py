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
    # score() reads p(gold) with <thinking> in the softmax: the old rule
    inserted = insert_latents(tiny_lm, examples, seed=0, real_vocab=False)
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
    assert insert_latents(tiny_lm, inserted, seed=0, real_vocab=False) == inserted


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


# ------------------------------------------------------------------ curricula
from lensing.tasks import get as get_task  # noqa: E402
from lensing.train.curricula import CURRICULA, split_budget, stages  # noqa: E402
from lensing.train.data import answer_only, latent_steps_examples  # noqa: E402


@pytest.fixture
def hops_lm(tmp_path):
    from lensing.train.curriculum import TrainConfig, build_model

    cfg = TrainConfig(task="hops", n_layers=2, d_model=32, n_heads=4, d_mlp=64)
    return build_model(cfg, tmp_path / "tok")


def test_coconut_data_puts_s_times_c_latents_after_the_prompt_with_no_loss(hops_lm):
    problems = [get_task("hops").sample(k, random.Random(k)) for k in (2, 3, 4, 5)]
    plain = encode_problems(hops_lm, problems)
    think = hops_lm.thinking_id
    for s in range(0, 6):
        for c in (1, 2):
            for e, p in zip(latent_steps_examples(hops_lm, plain, s, per_step=c), problems, strict=True):
                hidden = min(s, p.steps)
                assert e.completion_ids[: hidden * c] == (think,) * (hidden * c)
                assert think not in e.completion_ids[hidden * c :]
                assert e.labels[: hidden * c] == (-100,) * (hidden * c)  # no loss on latents
                rest = hops_lm.tokenizer.decode(e.completion_ids[hidden * c :], skip_special_tokens=True)
                assert rest == "".join(line + "\n" for line in p.cot[hidden:]) + f"###{p.answer}"
                assert e.labels[hidden * c :] == e.completion_ids[hidden * c :]
                ids, mask, labels = collate([e], hops_lm._pad_id)
                assert (labels[0, len(e.prompt_ids) : len(e.prompt_ids) + hidden * c] == -100).all()


def test_step_supervision_labels_each_latent_with_its_step_value(hops_lm):
    p = get_task("hops").sample(3, random.Random(0))
    assert p.cot == ("e>g", "g>h", "h>d")
    [e] = latent_steps_examples(hops_lm, encode_problems(hops_lm, [p]), 2, per_step=2, supervise_steps=True)
    decode = hops_lm.tokenizer.convert_ids_to_tokens
    assert decode(list(e.labels[:4])[1::2]) == ["g", "h"]  # the last latent of each step
    assert e.labels[0::2][:2] == (-100, -100)
    assert hops_lm.tokenizer.decode(e.completion_ids) == "<thinking>" * 4 + "h>d\n###d</s>"


def test_answer_only_drops_the_chain(hops_lm):
    p = get_task("hops").sample(4, random.Random(1))
    [e] = answer_only(hops_lm, encode_problems(hops_lm, [p]))
    assert hops_lm.tokenizer.decode(e.completion_ids) == f"###{p.answer}</s>"


def test_stage_plans_and_equal_budgets():
    assert [s.name for s in stages("lt", 5)] == ["cot", "hidden", "lt"]
    assert [s.name for s in stages("coconut", 3)] == ["cot", "stage1", "stage2", "coconut"]
    assert [s.latent_steps for s in stages("pause", 2)] == [None, 1, 2]
    assert {s.mode for s in stages("pause", 2)} == {"token"}
    assert {s.mode for s in stages("coconut", 2, latent_kind="prediction")} == {"prediction"}
    for curriculum in CURRICULA:
        for total in (7, 1000, 2401):
            assert sum(split_budget(total, stages(curriculum, 5))) == total
    with pytest.raises(ValueError, match="unknown curriculum 'codi2'"):
        stages("codi2", 3)


def test_real_vocab_scoring_ignores_thinking_mass(tiny_lm, examples):
    from lensing.train import gold_probabilities

    with torch.no_grad():
        tiny_lm.model.lm_head.weight[tiny_lm.thinking_id] *= 4  # thinking takes much of the mass
    real = gold_probabilities(tiny_lm, examples, real_vocab=True)
    mixed = gold_probabilities(tiny_lm, examples, real_vocab=False)
    for r, m in zip(real, mixed, strict=True):
        assert all(a >= b - 1e-6 for a, b in zip(r, m, strict=True))
        assert any(a > b + 1e-3 for a, b in zip(r, m, strict=True))


@pytest.mark.parametrize("curriculum", CURRICULA)
def test_every_curriculum_lowers_the_loss(curriculum, tmp_path, capsys):
    """A few steps of each curriculum on hops: the final model fits its final stage's data better
    than the same initialisation did, and coconut-style models are evaluated fully latent."""
    from dataclasses import replace

    from lensing.train import evaluate
    from lensing.train.curriculum import TrainConfig, build_model

    plan = stages(curriculum, 5)
    cfg = TrainConfig(
        task="hops", curriculum=curriculum, n_layers=2, d_model=32, n_heads=4, d_mlp=64,
        budget=8 * len(plan), lr=(3e-3,), batch_size=8, warmup=2, n_train=6, n_val=0, n_test=1,
        # sparse LT insertion keeps the latent forward short on an untrained model
        latent=replace(PRESETS["hops"].latent, max_latents_per_position=1, insert_probs=(0.3,)),
    )  # fmt: skip
    records = run_curriculum(cfg, tmp_path / "run", log=lambda m: None, checkpoint_every=1000)
    assert list(records) == [s.name for s in plan]
    assert sum(r["training"]["steps"] for r in records.values()) == cfg.budget
    final = LatentLM.from_pretrained(tmp_path / "run" / plan[-1].name)
    assert final.meta["curriculum"] == curriculum and final.meta["task"] == "hops"
    initial = build_model(cfg, tmp_path / "tok")
    initial.config = final.config
    problems = [get_task("hops").sample(k, random.Random(k)) for k in (2, 3, 4, 5)]
    data = plan[-1].build(final, encode_problems(final, problems), 0, cfg)
    ids, mask, labels = collate(data, final._pad_id)
    with torch.no_grad():
        before, after = initial(ids, mask, labels).loss, final(ids, mask, labels).loss
    assert after < before - 0.1, (float(before), float(after))
    if curriculum in ("coconut", "stepsup", "pause"):
        assert final.meta["inference"] == {"latents_per_step": 1, "max_latent_steps": 5}
        result = evaluate(final, problems, max_new_tokens=8)
        assert result.n_latents == [2, 3, 4, 5]  # fully latent: one forced latent per hop
    if curriculum == "stepsup":  # the command line evaluates on the checkpoint's own task, latents forced
        import json

        from lensing.cli import main

        main(["eval", str(tmp_path / "run" / "stepsup"), "--n", "1", "--json"])
        table = json.loads(capsys.readouterr().out)["table"]
        assert [(row["steps"], row["mean_latents"]) for row in table] == [(2, 2), (3, 3), (4, 4), (5, 5), ("all", 3.5)]


@torch.no_grad()
def test_codi_loss_is_teacher_plus_student_plus_distillation(hops_lm):
    from conftest import close

    from lensing.train.curricula import codi_loss
    from lensing.train.curriculum import batch_loss

    problems = [get_task("hops").sample(k, random.Random(10 + k)) for k in (2, 3, 4, 5)]
    plain = encode_problems(hops_lm, problems)
    students = latent_steps_examples(hops_lm, plain, 5)
    base = codi_loss(hops_lm, students, weight=0.0)
    close(base, batch_loss(hops_lm, plain) + batch_loss(hops_lm, students), tol=1e-5)
    distill = codi_loss(hops_lm, students, weight=1.0) - base
    assert distill > 0
    # a student whose latents are replaced by its teacher's CoT is the teacher: nothing to distil
    close(codi_loss(hops_lm, plain, weight=1.0), 2 * batch_loss(hops_lm, plain), tol=1e-5)


def test_prompt_loss_is_the_cross_entropy_of_every_token_after_bos(hops_lm):
    from conftest import close

    from lensing.train.curriculum import batch_loss

    problems = [get_task("hops-direct").sample(k, random.Random(k)) for k in (2, 2, 2)]  # one length: no padding
    plain = encode_problems(hops_lm, problems)
    ids = torch.tensor([e.ids for e in plain])
    logits = hops_lm.model(ids).logits
    every = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    close(batch_loss(hops_lm, plain, prompt_loss=True), every, tol=1e-5)
    assert abs(batch_loss(hops_lm, plain) - every) > 1e-3  # without it, the prompt is not in the loss


def test_a_stage_ends_at_the_first_check_that_reaches_advance_at(hops_lm):
    from lensing.train.curriculum import TrainConfig, train_stage

    problems = [get_task("hops").sample(k, random.Random(k)) for k in (2, 3)]
    cfg = TrainConfig(task="hops", batch_size=2, warmup=1, advance_at=80, check_every=2)
    scripted, checks = iter([10.0, 50.0, 90.0, 95.0]), []
    losses = train_stage(
        hops_lm, encode_problems(hops_lm, problems), 20, 1e-3, cfg, 0, "t", check=lambda: next(scripted), checks=checks
    )
    assert checks == [(2, 10.0), (4, 50.0), (6, 90.0)]
    assert len(losses) == 6
    assert hops_lm.training is False


def test_mixing_draws_the_given_share_from_earlier_stages(hops_lm):
    from lensing.train.curriculum import TrainConfig

    rng = random.Random(0)
    problems = [get_task("hops").sample(rng.choice((3, 4, 5)), rng) for _ in range(900)]
    plain = encode_problems(hops_lm, problems)
    build = stages("stepsup", 5)[3].build  # stage 3: three latent steps
    think = hops_lm.thinking_id
    counts = lambda data: [e.completion_ids.count(think) for e in data]  # noqa: E731
    unmixed = build(hops_lm, plain, 7, TrainConfig(task="hops"))
    assert set(counts(unmixed)) == {3}
    mixed = build(hops_lm, plain, 7, TrainConfig(task="hops", mix_previous=0.6))
    assert counts(mixed) == counts(build(hops_lm, plain, 7, TrainConfig(task="hops", mix_previous=0.6)))
    share = {s: counts(mixed).count(s) / len(mixed) for s in range(4)}
    assert abs(share[3] - 0.4) < 0.06  # kept at stage 3
    for s in (0, 1, 2):  # the rest spread evenly over the CoT stage and stages 1, 2
        assert abs(share[s] - 0.2) < 0.05, share
    for e, p, c in zip(mixed, problems, counts(mixed), strict=True):  # each is that stage's example
        rest = hops_lm.tokenizer.decode(e.completion_ids[c:], skip_special_tokens=True)
        assert rest == "".join(line + "\n" for line in p.cot[c:]) + f"###{p.answer}"


def test_init_continues_from_a_stage_checkpoint_on_its_splits(tmp_path):
    from lensing.train.curriculum import TrainConfig

    small = dict(task="hops", n_layers=2, d_model=32, n_heads=4, d_mlp=64, batch_size=4, warmup=1)
    small.update(n_train=4, n_val=0, n_test=1)
    run_curriculum(TrainConfig(curriculum="cot", steps=(3,), **small), tmp_path / "cot", log=lambda m: None)
    cot = LatentLM.from_pretrained(tmp_path / "cot" / "cot")
    cfg = TrainConfig(curriculum="stepsup", steps=(9, 2, 2, 2, 2, 2), lr=(1e-12,), seed=5, **small)
    records = run_curriculum(cfg, tmp_path / "sup", log=lambda m: None, init=tmp_path / "cot" / "cot")
    assert list(records) == ["stage1", "stage2", "stage3", "stage4", "stepsup"]  # cot is not retrained
    assert records["stage1"]["training"]["init"] == str((tmp_path / "cot" / "cot").resolve())
    assert records["stepsup"]["training"]["data_seed"] == 0 and records["stepsup"]["training"]["seed"] == 5
    assert records["stepsup"]["training"]["total_steps"] == 3 + 4 * 2 + 2  # the CoT steps count
    final = LatentLM.from_pretrained(tmp_path / "sup" / "stepsup")
    for name, value in cot.model.state_dict().items():  # a 1e-12 learning rate leaves cot's weights
        assert torch.allclose(final.model.state_dict()[name], value, atol=1e-6), name
    again = run_curriculum(
        TrainConfig(curriculum="cot", steps=(4,), lr=(1e-12,), **small), tmp_path / "again", log=lambda m: None,
        init=tmp_path / "cot" / "cot",
    )  # the plan's last stage is trained further (4 steps), from cot's weights
    assert list(again) == ["cot"] and again["cot"]["training"]["total_steps"] == 3 + 4
    assert again["cot"]["training"]["init"] == str((tmp_path / "cot" / "cot").resolve())
    restarted = LatentLM.from_pretrained(tmp_path / "again" / "cot").model.state_dict()
    assert all(torch.allclose(restarted[name], value, atol=1e-6) for name, value in cot.model.state_dict().items())
    with pytest.raises(ValueError, match="does not have"):  # a stepsup stage is not an LT stage
        run_curriculum(replace(cfg, curriculum="lt", steps=(1, 1, 1)), tmp_path / "x", init=tmp_path / "sup" / "stepsup")
    with pytest.raises(ValueError, match="n_train=4, this run has 8"):
        run_curriculum(replace(cfg, n_train=8), tmp_path / "y", init=tmp_path / "cot" / "cot")
    with pytest.raises(ValueError, match="task 'hops', not 'arith'"):
        run_curriculum(replace(cfg, task="arith", steps=(1, 1, 1, 1, 1, 1, 1)), tmp_path / "z", init=tmp_path / "cot" / "cot")


def test_advance_at_moves_on_early_but_the_last_stage_takes_its_full_count(tmp_path, monkeypatch):
    import lensing.train.curriculum as curriculum
    from lensing.train.curriculum import TrainConfig

    class Passing:  # every check reports 100% validation accuracy
        accuracy = 100.0

        def to_dict(self):
            return {"accuracy": 100.0}

    monkeypatch.setattr(curriculum, "evaluate", lambda lm, problems: Passing())
    cfg = TrainConfig(
        task="hops", curriculum="coconut", n_layers=2, d_model=32, n_heads=4, d_mlp=64, batch_size=2, warmup=1,
        n_train=2, n_val=1, n_test=1, steps=(8, 8, 8, 8, 8, 8), advance_at=90, check_every=3,
    )  # fmt: skip
    records = run_curriculum(cfg, tmp_path / "run", log=lambda m: None)
    assert [r["training"]["steps"] for r in records.values()] == [3, 3, 3, 3, 3, 8]
    assert records["cot"]["training"]["checks"] == [(3, 100.0)] and records["coconut"]["training"]["checks"] == []
    assert records["coconut"]["training"]["total_steps"] == 5 * 3 + 8


def test_constant_schedule_holds_the_peak_after_warmup():
    from lensing.train import TrainConfig
    from lensing.train.curriculum import lr_at

    assert [lr_at(s, 100, 2e-3, 10, "constant") for s in (4, 10, 50, 99)] == [1e-3, 2e-3, 2e-3, 2e-3]
    assert lr_at(99, 100, 2e-3, 10) == pytest.approx(2e-4, rel=1e-2)  # cosine ends near at 10% of the peak
    with pytest.raises(ValueError, match="lr_schedule must be one of cosine, constant, got 'linear'"):
        TrainConfig(lr_schedule="linear")


def test_train_command_line_options_reach_the_config(tmp_path, monkeypatch):
    import lensing.train
    from lensing.cli import main

    seen = {}
    monkeypatch.setattr(
        lensing.train, "run_curriculum", lambda cfg, out, **kw: seen.update(cfg=cfg, init=kw["init"]) or {}
    )
    main(
        ["train", "--task", "hops", "--preset", "tiny", "--curriculum", "cot", "--steps", "7", "--lr", "3e-3",
         "--lr-schedule", "constant", "--set", "n_train=123", "--set", "tie_embeddings=true", "--set", "n_heads=8",
         "--set", "weight_decay=0.1",
         "--mix-previous", "0.1", "--advance-at", "80", "--check-every", "9", "--seed", "4",
         "--out", str(tmp_path / "run")]
    )  # fmt: skip
    cfg = seen["cfg"]
    assert (cfg.task, cfg.curriculum, cfg.steps, cfg.lr, cfg.lr_schedule) == ("hops", "cot", (7,), (3e-3,), "constant")
    assert (cfg.n_train, cfg.mix_previous, cfg.advance_at, cfg.check_every, cfg.seed) == (123, 0.1, 80.0, 9, 4)
    assert cfg.tie_embeddings and not PRESETS["tiny"].tie_embeddings
    assert (cfg.n_heads, cfg.weight_decay) == (8, 0.1)
    for bad, message in (("n_heads=eight", "n_heads must be a whole number"), ("heads=8", "FIELD one of n_layers"),
                         ("latent=x", "FIELD one of"), ("tie_embeddings=yes", "true or false")):  # fmt: skip
        with pytest.raises(SystemExit, match=message):
            main(["train", "--task", "hops", "--set", bad, "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
    assert seen["init"] is None and cfg.n_val == PRESETS["tiny"].n_val  # the rest is the preset's


def test_tied_embeddings_share_one_matrix_through_a_checkpoint(tmp_path):
    from lensing.train.curriculum import TrainConfig, build_model

    for tie in (False, True):
        cfg = TrainConfig(task="hops", n_layers=1, d_model=16, d_mlp=32, tie_embeddings=tie)
        lm = build_model(cfg, tmp_path / "tok")
        lm.save_pretrained(tmp_path / str(tie))
        loaded = LatentLM.from_pretrained(tmp_path / str(tie)).model
        shared = loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
        assert shared == tie
        assert torch.equal(loaded.get_output_embeddings().weight, lm.model.get_output_embeddings().weight)


def test_stage_records_name_the_closest_unembedding_rows(tmp_path):
    from lensing.train.curriculum import TrainConfig, unembedding_overlap

    small = dict(task="hops", n_layers=1, d_model=16, n_heads=2, d_mlp=32, batch_size=2, warmup=1)
    records = run_curriculum(
        TrainConfig(curriculum="cot", steps=(2,), n_train=2, n_val=0, n_test=1, **small), tmp_path, log=lambda m: None
    )
    lm = LatentLM.from_pretrained(tmp_path / "cot")
    overlap = records["cot"]["training"]["unembedding_overlap"]
    assert overlap == unembedding_overlap(lm, "abcdefgh0123456789>;^?#\n")
    a, b = (lm.tokenizer.get_vocab()[t] for t in overlap["tokens"])
    rows = lm.model.get_output_embeddings().weight.detach()
    assert overlap["cosine"] == pytest.approx(float(torch.cosine_similarity(rows[a], rows[b], dim=0)), abs=1e-4)
    with torch.no_grad():  # two rows made parallel are found
        rows[lm.tokenizer.get_vocab()["g"]] = 3 * rows[lm.tokenizer.get_vocab()["c"]]
    assert unembedding_overlap(lm, "abcdefgh") == {"tokens": ["c", "g"], "cosine": 1.0}
    assert unembedding_overlap(lm, "aé") is None  # one in-vocabulary character: nothing to compare
    with torch.no_grad():
        rows[lm.tokenizer.get_vocab()["a"]] = 0.0
    assert unembedding_overlap(lm, "ab") is None  # a zero row has no direction and is left out
    assert unembedding_overlap(lm, "abcdefgh") == {"tokens": ["c", "g"], "cosine": 1.0}
