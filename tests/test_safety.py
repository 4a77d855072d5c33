"""Inputs and files that must not be misread: trace names and contents, generation inputs, checkpoint replacement."""

import json
from pathlib import Path

import pytest
import torch
from conftest import PROMPTS, make_tiny_lm
from safetensors.torch import load_file, save_file

import lensing
from lensing.model import LatentLM, Trace
from lensing.zoo.real import load_hf_directory


@pytest.fixture
def lm(tmp_path):
    return make_tiny_lm(tmp_path / "tok")


@pytest.fixture
def saved(lm, tmp_path):
    """A trace with latents saved as ``run.v1``: (trace, tensor file, json file)."""
    trace = lm.generate(PROMPTS[2], max_new_tokens=30, force_latents=2)[0]
    assert trace.n_latents >= 2
    trace.save(tmp_path / "run.v1")
    return trace, tmp_path / "run.v1.safetensors", tmp_path / "run.v1.json"


def assert_same(a: Trace, b: Trace) -> None:
    assert a.tokens == b.tokens and a.kinds == b.kinds and a.meta == b.meta
    for name in ("token_ids", "input_embeds", "latent_h", "latent_pred", "logits", "max_prob", "entropy"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# ------------------------------------------------------------------ trace files
def test_trace_names_keep_everything_after_a_dot(lm, tmp_path):
    one, two = lm.generate(PROMPTS[:2], max_new_tokens=10)
    one.save(tmp_path / "run.v1")
    two.save(tmp_path / "run.v2")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "run.v1.json",
        "run.v1.safetensors",
        "run.v2.json",
        "run.v2.safetensors",
    ]
    assert_same(Trace.load(tmp_path / "run.v1"), one)
    assert_same(Trace.load(tmp_path / "run.v2"), two)
    # a known suffix the caller already gave names the same pair
    assert_same(Trace.load(tmp_path / "run.v1.safetensors"), one)
    assert_same(Trace.load(tmp_path / "run.v2.json"), two)


def test_trace_save_leaves_no_temporary_files(saved, tmp_path):
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["run.v1.json", "run.v1.safetensors"]


def test_trace_save_is_atomic(lm, saved, tmp_path, monkeypatch):
    """A write that fails halfway leaves the previous files whole and no temporary file."""
    trace, tensor_file, json_file = saved
    before = tensor_file.read_bytes(), json_file.read_bytes()

    def broken(tensors, filename):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("lensing.model.trace.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        lm.generate(PROMPTS[0], max_new_tokens=5)[0].save(tmp_path / "run.v1")
    assert (tensor_file.read_bytes(), json_file.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["run.v1.json", "run.v1.safetensors"]


def edit_json(path, edit):
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("tokens"), r"missing keys \['tokens'\]"),
        (lambda m: m.pop("meta"), r"missing keys \['meta'\]"),
        (lambda m: m["tokens"].pop(), "tokens but .* kinds"),
        (lambda m: m.update(tokens=[1] * len(m["tokens"])), "'tokens' must be a list of strings"),
        (lambda m: m.update(kinds="prompt"), "'kinds' must be a list of strings"),
        (lambda m: m.update(meta=[]), "'meta' must be an object"),
        (lambda m: m["kinds"].__setitem__(0, "thought"), r"unknown kinds \['thought'\]"),
        (lambda m: m.clear() or m.update(x=1), "missing keys"),
    ],
)
def test_trace_json_edits_raise_value_error(saved, edit, message):
    _, _, json_file = saved
    edit_json(json_file, edit)
    with pytest.raises(ValueError, match=message) as err:
        Trace.load(json_file.with_suffix(""))
    assert str(json_file) in str(err.value)


def test_trace_json_not_an_object(saved):
    _, _, json_file = saved
    json_file.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object, found list") as err:
        Trace.load(json_file)
    assert str(json_file) in str(err.value)


def test_trace_latent_count_must_match_kinds(saved):
    """Changing a latent kind to cot changes the positions' story but not latent_h: caught."""
    trace, tensor_file, json_file = saved
    edit_json(json_file, lambda m: m["kinds"].__setitem__(trace.latent_positions[0], "cot"))
    with pytest.raises(ValueError, match=f"latent_h has {trace.n_latents} rows but run.v1.json has") as err:
        Trace.load(tensor_file)
    assert str(tensor_file) in str(err.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("logits"), r"missing tensors \['logits'\]"),
        (lambda t: t.update(token_ids=t["token_ids"][:-1]), "token_ids has .* rows but run.v1.json has"),
        (lambda t: t.update(input_embeds=t["input_embeds"][1:]), "input_embeds has .* rows"),
        (lambda t: t.update(logits=t["logits"][:-2]), "logits has .* rows"),
        (lambda t: t.update(gold_prob=t["gold_prob"][:-1]), "gold_prob has .* rows"),
        (lambda t: t.update(latent_h=t["latent_h"][1:]), "latent_h has .* rows but .* latent positions"),
        (lambda t: t.update(latent_pred=t["latent_pred"][:, :3]), "latent_pred has width 3"),
        (lambda t: t.update(token_ids=t["token_ids"].float()), "token_ids must be a 1-D integer tensor"),
        (lambda t: t.update(logits=t["logits"][0]), "logits must be a 2-D float tensor"),
    ],
)
def test_trace_tensor_edits_raise_value_error(saved, edit, message):
    _, tensor_file, _ = saved
    tensors = load_file(str(tensor_file))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tensor_file))
    with pytest.raises(ValueError, match=message) as err:
        Trace.load(tensor_file.with_suffix(""))
    assert str(tensor_file) in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_trace_broken_safetensors_raise_value_error(saved, damage):
    _, tensor_file, _ = saved
    data = tensor_file.read_bytes()
    if damage == "truncate":
        tensor_file.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        tensor_file.write_bytes(b"\x00garbage" * 10)
    else:
        tensor_file.unlink()
    with pytest.raises(ValueError, match="cannot read trace") as err:
        Trace.load(tensor_file.with_suffix(""))
    assert str(tensor_file) in str(err.value)


def test_trace_broken_json_raises_value_error(saved):
    _, _, json_file = saved
    json_file.write_text('{"tokens": [')
    with pytest.raises(ValueError, match="cannot read trace") as err:
        Trace.load(json_file.with_suffix(""))
    assert str(json_file) in str(err.value)


# ------------------------------------------------------------ generation inputs
@torch.no_grad()
def test_each_prompt_gets_its_own_budget(lm):
    """A long prompt near the 96-token context does not cut a short prompt's answer, and batching changes nothing."""
    long_prompt = "a=1;" * 20 + "a?\n"  # 83 characters + BOS = 84 tokens: 12 left
    edge_prompt = "1" * 94  # 95 tokens: 1 left
    prompts = [PROMPTS[0], long_prompt, edge_prompt, PROMPTS[2]]
    batched = lm.generate(prompts, max_new_tokens=40)
    assert [len(t) for t in batched][1:3] == [96, 96]  # the long ones run up to the context and stop
    assert len(batched[0]) - batched[0].prompt_length == 40  # the short one was not cut at 12 (precondition: no EOS)
    for prompt, b in zip(prompts, batched, strict=True):
        single = lm.generate(prompt, max_new_tokens=40)[0]
        assert single.tokens == b.tokens and single.kinds == b.kinds
        torch.testing.assert_close(single.logits, b.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(single.input_embeds, b.input_embeds, atol=1e-5, rtol=0)


@pytest.mark.parametrize("token", ["<thinking>", "</s>", "<s>", "<pad>", "<unk>"])
def test_special_token_text_in_prompt_is_rejected(lm, token):
    prompt = f"a=1;{token}b?\n"
    with pytest.raises(ValueError, match="contains special token") as err:
        lm.generate(["a=1;a?\n", prompt])
    assert repr(token) in str(err.value) and repr(prompt) in str(err.value)
    with pytest.raises(ValueError, match="contains special token"):
        lm.encode(prompt)


def test_special_token_text_allowed_when_asked(lm):
    assert lm.encode("</s>", add_bos=False, allow_special=True) == [lm.tokenizer.eos_token_id]
    assert lm.encode("<thinking>", add_bos=False, allow_special=True) == [lm.thinking_id]


def test_empty_prompt_is_rejected(lm):
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] are empty"):
        lm.generate([PROMPTS[0], ""])


@pytest.mark.parametrize("n", [0, -3])
def test_max_new_tokens_below_one_is_rejected(lm, n):
    with pytest.raises(ValueError, match=f"max_new_tokens must be at least 1, got {n}"):
        lm.generate(PROMPTS[0], max_new_tokens=n)


# --------------------------------------------------------- checkpoint replacement
def state(model: LatentLM) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state(model: LatentLM, expected: dict) -> None:
    got = model.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], v) for k, v in expected.items())


def test_checkpoint_replacement_leaves_only_the_new_one(tmp_path):
    old, new = make_tiny_lm(tmp_path / "tok", seed=0), make_tiny_lm(tmp_path / "tok", seed=1)
    old.save_pretrained(tmp_path / "ckpt", extra={"stage": 1})
    new.save_pretrained(tmp_path / "ckpt", extra={"stage": 2})
    loaded = LatentLM.from_pretrained(tmp_path / "ckpt")
    assert loaded.meta["stage"] == 2
    assert_state(loaded, state(new))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tok"]


def test_failed_final_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    old, new = make_tiny_lm(tmp_path / "tok", seed=0), make_tiny_lm(tmp_path / "tok", seed=1)
    target = tmp_path / "ckpt"
    old.save_pretrained(target, extra={"stage": 1})
    files = {p.name: p.read_bytes() for p in target.iterdir()}
    rename = Path.rename

    def killed(self, dest):
        if Path(dest) == target and self.name.startswith(".ckpt.") and not self.name.endswith(".old"):
            raise OSError("killed during the final rename")
        return rename(self, dest)

    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(OSError, match="killed during the final rename"):
        new.save_pretrained(target, extra={"stage": 2})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == files
    loaded = LatentLM.from_pretrained(target)
    assert loaded.meta["stage"] == 1
    assert_state(loaded, state(old))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tok"]


# ------------------------------------------------------------ damaged checkpoints
def _copy_bundled(tmp_path):
    import shutil

    import lensing.zoo

    target = tmp_path / "lt"
    shutil.copytree(lensing.zoo.BUNDLED_DIR / "arith-tiny" / "lt", target)
    return target


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("drop_tensor", r"missing keys: model\.layers\.1\.mlp\.down_proj\.weight"),
        ("drop_head", r"missing keys: lm_head\.weight"),
        ("fewer_layers", r"unexpected keys: model\.layers\.3\."),
        ("more_layers", r"missing keys: model\.layers\.4\."),
    ],
)
def test_damaged_checkpoints_refuse_to_load(tmp_path, damage, message):
    from lensing.model.latent_lm import CheckpointError

    path = _copy_bundled(tmp_path)
    weights = path / "model.safetensors"
    tensors = load_file(str(weights))
    if damage == "drop_tensor":
        tensors.pop("model.layers.1.mlp.down_proj.weight")
    if damage == "drop_head":
        tensors.pop("lm_head.weight")
    save_file(tensors, str(weights), metadata={"format": "pt"})
    if damage in ("fewer_layers", "more_layers"):
        config = json.loads((path / "config.json").read_text())
        config["num_hidden_layers"] += -1 if damage == "fewer_layers" else 1
        (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message) as err:
        LatentLM.from_pretrained(path)
    assert str(path) in str(err.value)
    # the same weights as a plain Hugging Face directory are refused too
    (path / "lensing.json").unlink()
    with pytest.raises(CheckpointError, match=message):
        load_hf_directory(path)


def test_lensing_checkpoint_without_its_metadata_is_not_loaded_as_a_plain_model(tmp_path):
    """Without lensing.json the latent settings are unknown: loading must stop, not fall back to defaults."""
    from lensing.model.latent_lm import CheckpointError

    path = _copy_bundled(tmp_path)
    (path / "lensing.json").unlink()
    with pytest.raises(CheckpointError, match=r"looks like a lensing checkpoint .*lensing\.json is missing") as err:
        lensing.load(path)
    assert str(path) in str(err.value)
    # the escape hatch the message names works, with the settings the caller gives
    lm = load_hf_directory(path, config=lensing.LatentConfig(mode="hidden"))
    assert lm.config.mode == "hidden"


def test_latent_layer_must_exist_in_the_model(lm):
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"LatentConfig.layer=99 does not exist: this model has 3 hidden states"):
        lm.config = replace(lm.config, layer=99)
    assert lm.config.layer == -2  # unchanged
    with pytest.raises(ValueError, match="layer=-4 does not exist"):
        LatentLM(lm.model, lm.tokenizer, replace(lm.config, layer=-4))


# ------------------------------------------------------------------ training runs
class Interrupt(KeyboardInterrupt):
    pass


def _interrupt_at(monkeypatch, call: int) -> None:
    """Raises Ctrl-C at the ``call``-th optimiser step of the whole curriculum (as a user would)."""
    from lensing.train import curriculum

    real, calls = curriculum.lr_at, []

    def lr_at(*args):
        calls.append(1)
        if len(calls) == call:
            raise Interrupt
        return real(*args)

    monkeypatch.setattr(curriculum, "lr_at", lr_at)


def _weights(folder: Path) -> dict:
    return {stage: LatentLM.from_pretrained(folder / stage).state_dict() for stage in ("cot", "hidden", "lt")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from lensing.train import PRESETS, run_curriculum

    out = tmp_path_factory.mktemp("runs") / "whole"
    records = run_curriculum(PRESETS["smoke"], out, log=lambda m: None, checkpoint_every=10)
    return out, records


@pytest.mark.parametrize("call", [25, 33], ids=["inside-stage-1", "inside-stage-2"])
def test_interrupted_training_resumes_to_the_same_weights(uninterrupted, tmp_path, monkeypatch, call):
    from lensing.train import PRESETS, run_curriculum
    from lensing.train.runs import RESUME_DIR

    whole, whole_records = uninterrupted
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, call)
    with pytest.raises(Interrupt):
        run_curriculum(PRESETS["smoke"], out, log=lambda m: None, checkpoint_every=10)
    monkeypatch.undo()
    finished = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    # stage 1 has 30 steps: step 25 leaves a periodic checkpoint at 20 and no finished stage;
    # step 33 is inside stage 2, after cot/ was written
    assert finished == (["run.json"] if call == 25 else ["cot", "run.json"])
    assert (out / RESUME_DIR / "state.json").is_file() == (call == 25)
    if call == 25:  # the periodic checkpoint is not a model directory
        with pytest.raises(ValueError, match="config.json is missing"):
            lensing.load(out / RESUME_DIR)
    # without --resume the folder is refused before any work
    with pytest.raises(ValueError, match=r"not empty .*continue it with --resume"):
        run_curriculum(PRESETS["smoke"], out, log=lambda m: None)
    records = run_curriculum(PRESETS["smoke"], out, log=lambda m: None, checkpoint_every=10, resume=True)
    for stage, state in _weights(out).items():
        reference = _weights(whole)[stage]
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in state), stage
        assert records[stage]["training"]["losses"] == whole_records[stage]["training"]["losses"]
    assert not (out / RESUME_DIR).exists()
    assert json.loads((out / "run.json").read_text())["complete"] is True


def test_a_tied_model_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from dataclasses import replace

    from lensing.train import PRESETS, run_curriculum

    cfg = replace(PRESETS["smoke"], curriculum="cot", steps=(12,), tie_embeddings=True)
    run_curriculum(cfg, tmp_path / "whole", log=lambda m: None, checkpoint_every=5)
    _interrupt_at(monkeypatch, 8)  # after the periodic checkpoint at step 5, which holds the shared matrix once
    with pytest.raises(Interrupt):
        run_curriculum(cfg, tmp_path / "run", log=lambda m: None, checkpoint_every=5)
    monkeypatch.undo()
    run_curriculum(cfg, tmp_path / "run", log=lambda m: None, checkpoint_every=5, resume=True)
    whole, resumed = (LatentLM.from_pretrained(tmp_path / name / "cot").model for name in ("whole", "run"))
    assert resumed.get_output_embeddings().weight is resumed.get_input_embeddings().weight
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())


def test_resume_with_other_settings_is_refused(uninterrupted, tmp_path):
    from dataclasses import replace

    from lensing.train import PRESETS, run_curriculum

    whole, _ = uninterrupted
    before = {p.name: p.stat().st_mtime_ns for p in whole.iterdir()}
    with pytest.raises(ValueError, match=r"different settings \(train_config.seed: run has 0, now 1\)"):
        run_curriculum(replace(PRESETS["smoke"], seed=1), whole, log=lambda m: None, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in whole.iterdir()} == before


def test_training_refuses_a_folder_with_a_users_file(tmp_path):
    from lensing.train import PRESETS, run_curriculum

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not empty \(holds notes.txt\): it is not a lensing run"):
        run_curriculum(PRESETS["smoke"], tmp_path, log=lambda m: None)
    with pytest.raises(ValueError, match="cannot resume .* no run.json"):
        run_curriculum(PRESETS["smoke"], tmp_path, log=lambda m: None, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_overwrite_starts_over_and_keeps_other_files(uninterrupted, tmp_path):
    import shutil
    from dataclasses import replace

    from lensing.train import PRESETS, run_curriculum

    whole, _ = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(whole, out)
    (out / "notes.txt").write_text("mine")
    old_id = json.loads((out / "run.json").read_text())["run_id"]
    cfg = replace(PRESETS["smoke"], steps=(5, 2, 2))
    run_curriculum(cfg, out, log=lambda m: None, overwrite=True)
    run = json.loads((out / "run.json").read_text())
    assert run["run_id"] != old_id and run["complete"] and run["stages_done"] == ["cot", "hidden", "lt"]
    assert (out / "notes.txt").read_text() == "mine"
    for stage in ("cot", "hidden", "lt"):
        meta = json.loads((out / stage / "lensing.json").read_text())
        assert meta["run_id"] == run["run_id"] and meta["record"]["training"]["steps"] == cfg.steps[meta["stage"] - 1]


def test_a_stage_from_another_run_is_refused_on_resume(uninterrupted, tmp_path):
    import shutil

    from lensing.train import PRESETS, run_curriculum

    whole, _ = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(whole, out)
    meta = json.loads((out / "hidden" / "lensing.json").read_text())
    meta["run_id"] = "someone-else"
    (out / "hidden" / "lensing.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"hidden belongs to another run \(someone-else\)"):
        run_curriculum(PRESETS["smoke"], out, log=lambda m: None, resume=True)


# ------------------------------------------------------------------ threads
def test_probes_from_several_threads_match_one_thread(lm):
    from concurrent.futures import ThreadPoolExecutor

    probe = lensing.attach(lm)
    traces = lm.generate(PROMPTS[:3], max_new_tokens=20, force_latents=1)
    alone = [probe.logit_lens(t).stats.entropy for t in traces]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda t: probe.logit_lens(t).stats.entropy, traces * 4))
    for i, result in enumerate(together):
        assert torch.equal(result, alone[i % 3])
    assert all(len(h) == 0 for h in (hp._forward_hooks for hp in probe.bridge.hook_dict.values()))


# ------------------------------------------------------------------ command line
def _lensing(*args, tmp_path, timeout=120):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "lensing.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "arith-tiny", "--device", "banana"], "lensing eval: --device 'banana' is not a device"),
        (["eval", "arith-tiny", "--device", "cuda:7"], "lensing eval: --device cuda:7: "),
        (["eval", "no-such-model"], "lensing eval: unknown model 'no-such-model'"),
        (["trace", "arith-tiny", "a=1</s>"], r"lensing trace: text 'a=1</s>\\n' contains special token"),
        (["collapse", "--out", "notes.txt"], "lensing collapse: --out notes.txt is a file; give a folder"),
        (["train", "--out", "run", "--steps", "1,2"], "lensing train: curriculum 'lt' on 'arith' has 3 stages"),
        (["train", "--out", "run", "--task", "hops9"], "lensing train: unknown task 'hops9'"),
        (["train", "--out", "busy"], r"lensing train: --out busy is not empty \(holds mine.txt\)"),
        (["eval", "damaged"], "lensing eval: .*damaged.* looks like a lensing checkpoint"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    import re
    import shutil

    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("mine")
    shutil.copytree(lensing.zoo.BUNDLED_DIR / "arith-tiny" / "cot", tmp_path / "damaged")
    (tmp_path / "damaged" / "lensing.json").unlink()
    result = _lensing(*args, tmp_path=tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(message, last), result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("count", ["0", "-2", "many"])
def test_cli_counts_must_be_positive(tmp_path, count):
    result = _lensing("eval", "arith-tiny", "--n", count, tmp_path=tmp_path)
    assert result.returncode == 2 and "argument --n: " in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("after", [1.0, 8.0], ids=["during-start-up", "during-the-work"])
def test_ctrl_c_prints_one_line_and_leaves_no_partial_file(tmp_path, after):
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "lensing.cli", "collapse", "--n", "300", "--out", "tables"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(after)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, f"exit {process.returncode} after SIGINT at {after}s; stderr:\n{err[-3000:]}"
    assert err.strip().splitlines()[-1] == "lensing collapse: interrupted, nothing half-written"
    assert "Traceback" not in err
    assert not (tmp_path / "tables").exists() or not any((tmp_path / "tables").iterdir())
