"""lensing.interventions: known answers for interventions, bootstrap CIs and activation patching."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lensing
from lensing.interventions import KINDS, Intervention, bootstrap_ci, bootstrap_ratio_ci, intervene, intervention_sweep
from lensing.interventions.cli import add_commands
from lensing.interventions.generation import generate_problems, swap_donors
from lensing.interventions.patching import (
    Sequence_,
    activation_patching,
    address,
    patched_logits,
    run_sequences,
)
from lensing.tasks import make_splits

from conftest import PROMPTS


def _problems(per_difficulty: int, seed: int = 0, difficulties=(1, 2, 3, 4, 5, 6)):
    return make_splits(0, 0, per_difficulty, seed=seed, difficulties=difficulties).test


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The bundled models are tiny: one thread is fastest (much faster on a busy machine); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lt():
    return lensing.load("arith-tiny:lt")


@pytest.fixture(scope="module")
def lt_run(lt):
    problems = _problems(5)  # 30 problems, 5 per difficulty
    clean, _ = generate_problems(lt, problems)
    return problems, clean


def _same(a, b) -> bool:
    return all(
        torch.equal(x.token_ids, y.token_ids) and torch.equal(x.input_embeds, y.input_embeds) and torch.equal(x.logits, y.logits)
        for x, y in zip(a, b, strict=True)
    )


# ------------------------------------------------------------------ hook and kinds
def test_none_is_bitwise_the_clean_run(lt, lt_run, tiny_lm):
    problems, clean = lt_run
    result = intervene(lt, problems, "none", clean=clean)
    assert _same(result.traces, clean)
    assert result.summary()["answer_changed"]["rate"] == 0.0
    assert (result.examples.delta_logprob_gold == 0).all()
    hook_free = tiny_lm.generate(PROMPTS, max_new_tokens=20)
    from lensing.interventions import LatentHook

    hooked = tiny_lm.generate(
        PROMPTS, max_new_tokens=20, intervention=LatentHook(tiny_lm, Intervention("none"), range(3), [], torch.Generator())
    )
    assert _same(hook_free, hooked)


def test_swap_twice_restores_the_clean_run(lt):
    problems = _problems(6, difficulties=(2,))
    clean, _ = generate_problems(lt, problems)
    once = intervene(lt, problems, Intervention("swap", pairs=((0, 1), (2, 3))), clean=clean)
    assert once.examples.answer_changed[:4].all()  # the partner's latents move the answer
    assert not once.examples.answer_changed[4:].any()  # problems in no pair are untouched
    assert _same(once.traces[4:], clean[4:])
    first = once.traces[0].input_embeds[once.traces[0].latent_positions[0]]
    assert torch.equal(first, clean[1].input_embeds[clean[1].latent_positions[0]])
    # swapping the swapped run's latents back gives the clean run, bit for bit
    twice = intervene(lt, problems, Intervention("swap", pairs=((0, 1), (2, 3))), clean=clean, source=once.traces)
    assert _same(twice.traces, clean)
    assert swap_donors(4, [(0, 1), (0, 1)]) == [0, 1, 2, 3]


def test_each_kind_feeds_what_it_says(tiny_lm):
    problems = _problems(1)
    clean, _ = generate_problems(tiny_lm, problems, max_new_tokens=24)
    assert sum(t.n_latents for t in clean) > 0
    weight = tiny_lm.model.get_input_embeddings().weight.detach()
    for kind in KINDS:
        spec = Intervention.parse(kind + (" 2" if kind in ("force", "truncate") else ""))
        r = intervene(tiny_lm, problems, spec, clean=clean, max_new_tokens=24, resamples=200)
        fed = [t.input_embeds[t.latent_positions] for t in r.traces]
        if kind == "zero":
            assert all((f == 0).all() for f in fed)
        if kind == "thinking":
            assert all(torch.equal(f, weight[tiny_lm.thinking_id].expand_as(f)) for f in fed)
        if kind == "nearest":
            assert all((torch.cdist(f, weight).min(-1).values < 1e-5).all() for f in fed)
        if kind == "noise":
            own = [tiny_lm.config.alpha * t.latent_h + (1 - tiny_lm.config.alpha) * t.latent_pred for t in r.traces]
            assert all(torch.allclose(f.norm(dim=-1), o.norm(dim=-1), rtol=1e-4) for f, o in zip(fed, own, strict=True))
        if kind == "h-only":
            assert all(torch.allclose(f, t.latent_h) for f, t in zip(fed, r.traces, strict=True))
        if kind == "pred-only":
            assert all(torch.allclose(f, t.latent_pred) for f, t in zip(fed, r.traces, strict=True))
        if kind == "ban":
            assert r.examples.n_latents.sum() == 0
        if kind == "truncate":
            assert r.examples.n_latents.max() <= 2
        if kind == "force":
            assert all(t.kinds[t.prompt_length : t.prompt_length + 2] == ["latent"] * 2 for t in r.traces)
        if kind in ("zero", "mean", "noise", "thinking", "nearest"):
            assert r.examples.n_replaced.sum() == r.examples.n_latents.sum() > 0


def test_one_step_only_replaces_that_step(lt, lt_run):
    problems, clean = lt_run
    r = intervene(lt, problems, "zero", step=1, clean=clean)
    assert r.examples.n_replaced.tolist() == [int(n >= 2) for n in r.examples.n_latents_clean]
    for t, c in zip(r.traces, clean, strict=True):
        if c.n_latents >= 2:
            pos = c.latent_positions
            assert torch.equal(t.input_embeds[: pos[1]], c.input_embeds[: pos[1]])
            assert (t.input_embeds[pos[1]] == 0).all()


def test_clear_errors(tiny_lm):
    cot = lensing.load("arith-tiny:cot")
    problems = _problems(1)
    with pytest.raises(ValueError, match="emitted no <thinking> latents"):
        intervene(cot, problems, "zero", model="arith-tiny:cot")
    hidden = lensing.load("arith-tiny:hidden")
    with pytest.raises(ValueError, match="builds 'hidden' latents"):
        intervene(hidden, problems, "h-only")
    for bad, match in (("bogus", "unknown intervention kind"), ("force", "needs a number of latents"), ("zero 2", "only 'force'")):
        with pytest.raises(ValueError, match=match):
            Intervention.parse(bad)
    with pytest.raises(ValueError, match="use step 'all'"):
        Intervention("ban", step=0)
    with pytest.raises(ValueError, match="outside the 6 problems"):
        intervene(tiny_lm, problems, Intervention("swap", pairs=((0, 9),)), max_new_tokens=16)


# ------------------------------------------------------------------------- stats
def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    reps, n, p = 400, 60, 0.3
    covered = 0
    for rep in range(reps):
        x = (rng.random(n) < p).astype(float)
        _, lo, hi = bootstrap_ci(x, resamples=1000, seed=rep)
        covered += lo <= p <= hi
    # percentile bootstrap at n=60: nominal 0.95, binomial SE of the rate ~0.011
    assert 0.91 <= covered / reps <= 0.98, covered / reps


def test_bootstrap_known_cases():
    assert bootstrap_ci([2.0] * 5) == (2.0, 2.0, 2.0)
    mean, lo, hi = bootstrap_ratio_ci([1.0, 3.0], [2.0, 2.0])
    assert mean == 1.0 and lo <= 1.0 <= hi
    with pytest.raises(ValueError, match="NaN or inf"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="zero examples"):
        bootstrap_ci([])


# -------------------------------------------------------------- bundled effects
LT_KINDS = ("zero", "shuffle", "ban", "h-only", "pred-only")


@pytest.fixture(scope="module")
def lt_sweep(lt, lt_run):
    """The README's :lt sweep: 30 test problems (5 per difficulty, seed 0), bootstrap seed 0."""
    problems, clean = lt_run
    return intervention_sweep(lt, problems, LT_KINDS, clean=clean, model="arith-tiny:lt")


def test_sweep_shares_the_clean_scoring(lt, lt_run, lt_sweep):
    problems, clean = lt_run
    alone = intervene(lt, problems, "h-only", clean=clean, model="arith-tiny:lt")
    in_sweep = lt_sweep.results[LT_KINDS.index("h-only")]
    assert alone.examples.equals(in_sweep.examples) and alone.summary() == in_sweep.summary()


def test_lt_shuffle_and_zero_break_it_ban_lands_between(lt_sweep):
    s = {r.intervention.kind: r.summary() for r in lt_sweep.results}
    clean_acc, (clean_lo, _) = s["zero"]["clean"]["accuracy"], s["zero"]["clean"]["ci"]
    assert clean_acc >= 0.95, clean_acc
    for kind in ("zero", "shuffle"):
        acc, (lo, hi) = s[kind]["intervened"]["accuracy"], s[kind]["intervened"]["ci"]
        assert acc <= 0.15 and hi < clean_lo, (kind, acc, lo, hi)
        assert s[kind]["answer_changed"]["rate"] >= 0.85
        assert s[kind]["delta_logprob_gold"]["ci"][1] < -5
    ban, (ban_lo, ban_hi) = s["ban"]["intervened"]["accuracy"], s["ban"]["intervened"]["ci"]
    assert max(s["zero"]["intervened"]["ci"][1], s["shuffle"]["intervened"]["ci"][1]) < ban_lo
    assert ban_hi < clean_lo and 0.3 <= ban <= 0.85, (ban, ban_lo, ban_hi)


# --------------------------------------------------------------------- patching
@pytest.fixture(scope="module")
def lt_probe(lt):
    return lensing.attach(lt)


def test_patch_everything_gives_clean_logits_and_nothing_gives_corrupted(lt, lt_probe):
    traces = lt.generate(["a=12;b=a+3;c=b-5;c?\n", "a=47;b=a+8;c=b-1;c?\n"])
    n = min(len(t) for t in traces)
    clean, corrupted = (Sequence_(t.input_embeds[:n], t.kinds[:n], t.tokens[:n]) for t in traces)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(lt_probe.n_layers)]
    clean_logits, cache = run_sequences(lt_probe, [clean], names)
    corrupted_logits, _ = run_sequences(lt_probe, [corrupted])
    assert (clean_logits - corrupted_logits).abs().max() > 1
    everything = {name: [(0, p, p) for p in range(n)] for name in names}
    assert torch.allclose(patched_logits(lt_probe, [corrupted], cache, everything), clean_logits, atol=1e-5)
    assert torch.equal(patched_logits(lt_probe, [corrupted], cache, {}), corrupted_logits)
    assert torch.equal(patched_logits(lt_probe, [corrupted], cache, {names[0]: []}), corrupted_logits)
    hooks = lt_probe.bridge.hook_dict[names[0]]
    assert not hooks._forward_hooks  # removed after the forward


def test_addresses_line_up_traces_of_different_lengths():
    seq = Sequence_(torch.zeros(7, 2), ["prompt", "prompt", "latent", "cot", "cot", "latent", "answer"], list("ab◆c\n◆#"))
    assert [address(seq, w) for w in (("latent", 0), ("latent", 1), ("latent", 2), ("prompt", -1), ("cot_line", 0))] == [
        2, 5, None, 1, 4
    ]
    with pytest.raises(ValueError, match="unknown segment"):
        address(seq, ("bogus", 0))


@pytest.fixture(scope="module")
def lt_patch(lt_probe):
    """The README's patching run: 24 three-step test problems (seed 0), paired within structure."""
    problems = make_splits(0, 0, 24, seed=0, difficulties=(3,)).test
    return activation_patching(lt_probe, problems, components=("resid",), model="arith-tiny:lt", resamples=500)


def test_lt_patching_latents_recover_little_the_cot_line_carries_the_answer(lt_probe, lt_patch):
    r = lt_patch
    assert len(r.pairs) >= 8
    assert (r.pairs.ld_clean > 0).all() and (r.pairs.ld_corrupted < 0).all()
    latent = r.grid("resid", "latent")
    assert len(latent) >= 2 and latent.abs().max().max() < 0.1, latent
    anchors = r.grid("resid", None)
    # the read-out position at the last block's input already holds most of the answer
    assert anchors.loc["answer -1", lt_probe.n_layers - 1] > 0.5, anchors
    out = r.to_json()
    assert set(out) >= {"model", "n", "steps", "layers", "recovered", "ci_low", "ci_high"}
    assert len(out["recovered"]) == len(out["steps"]) and len(out["recovered"][0]) == len(out["layers"])


# -------------------------------------------------------------------------- CLI
def _cli(argv):
    parser = argparse.ArgumentParser(prog="lensing")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    args.func(args)


def test_cli_intervene_json(capsys):
    _cli(["intervene", "arith-tiny", "--kind", "zero", "--n", "12", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "arith-tiny" and out["kind"] == "zero" and out["step"] == "all" and out["n"] == 12
    assert out["clean"]["accuracy"] >= 0.9 and out["intervened"]["accuracy"] <= 0.2
    assert out["intervened"]["ci"][1] < out["clean"]["ci"][0]
    assert len(out["per_example"]) == 12 and {"correct", "answer_changed", "logprob_gold"} <= set(out["per_example"][0])
    with pytest.raises(ValueError, match="--n must be positive"):
        _cli(["intervene", "arith-tiny", "--kind", "zero", "--n", "0"])
    with pytest.raises(ValueError, match="step must be"):
        _cli(["intervene", "arith-tiny", "--kind", "zero", "--step", "x", "--n", "6"])


# ------------------------------------------------------------------ README numbers
# The table in README.md "What do the latents carry?": same problems and seeds as the README (and
# notebooks/08_interventions.ipynb). Each row: accuracy, its 95% CI, answer-change rate, mean latents.
README_ROWS = {
    ("lt", "clean"): (1.00, 1.00, 1.00, None, 5.8),
    ("lt", "zero"): (0.07, 0.00, 0.17, 0.93, 83.8),
    ("lt", "shuffle"): (0.03, 0.00, 0.10, 0.97, 9.6),
    ("lt", "ban"): (0.57, 0.40, 0.73, 0.43, 0.0),
    ("lt", "h-only"): (1.00, 1.00, 1.00, 0.00, 5.9),
    ("lt", "pred-only"): (0.57, 0.40, 0.73, 0.43, 6.8),
    ("hidden", "clean"): (1.00, 1.00, 1.00, None, 1.5),
    ("hidden", "zero"): (0.27, 0.13, 0.43, 0.73, 4.4),
    ("hidden", "ban"): (0.97, 0.90, 1.00, 0.03, 0.0),
}
README_NORM_RATIO = 20  # median |alpha h| / |(1 - alpha) e_pred| over the :lt clean latents
README_PATCH = {"pairs": 10, "latent_max": 0.01, "readout_last": 1.00}
RATE_BAND = 0.10  # 3 of 30 problems: room for numerical drift across machines, not for another conclusion


def _readme_section() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("## What do the latents carry? (interventions and patching)")
    return text[start : text.index("\n## ", start + 1)]


def _row(model: str, kind: str, values) -> str:
    acc, lo, hi, changed, latents = values
    changed = "-" if changed is None else f"{changed:.2f}"
    return f"| `:{model}` | {kind} | {acc:.2f} [{lo:.2f}, {hi:.2f}] | {changed} | {latents:.1f} |"


def _measured(sweep) -> dict:
    out = {}
    for r in sweep.results:
        s = r.summary()
        out["clean"] = (*[s["clean"]["accuracy"], *s["clean"]["ci"]], None, s["mean_latents"]["clean"])
        out[r.intervention.kind] = (
            s["intervened"]["accuracy"],
            *s["intervened"]["ci"],
            s["answer_changed"]["rate"],
            s["mean_latents"]["intervened"],
        )
    return out


def test_readme_numbers(lt, lt_run, lt_sweep, lt_patch, lt_probe):
    section = _readme_section()
    for (model, kind), values in README_ROWS.items():
        assert _row(model, kind, values) in section, _row(model, kind, values)
    assert f"{README_PATCH['pairs']} pairs" in section and f"about {README_NORM_RATIO}x" in section
    assert f"at most {README_PATCH['latent_max']:.2f}" in section
    assert f"recovers {README_PATCH['readout_last']:.2f}" in section

    problems, _ = lt_run
    hidden = lensing.load("arith-tiny:hidden")
    measured = {("lt", k): v for k, v in _measured(lt_sweep).items()}
    measured |= {("hidden", k): v for k, v in _measured(intervention_sweep(hidden, problems, ["zero", "ban"])).items()}
    for key, pinned in README_ROWS.items():
        got = measured[key]
        for name, a, b in zip(("accuracy", "ci_low", "ci_high", "changed"), got[:4], pinned[:4], strict=True):
            assert (a is None) == (b is None) and (a is None or abs(a - b) <= RATE_BAND), (key, name, a, b)
        assert abs(got[4] - pinned[4]) <= 0.25 * pinned[4] + 0.5, (key, "mean latents", got[4], pinned[4])

    clean = lt_sweep.results[0].clean_traces
    alpha = lt.config.alpha
    h, pred = torch.cat([t.latent_h for t in clean]), torch.cat([t.latent_pred for t in clean])
    ratio = ((alpha * h).norm(dim=-1) / ((1 - alpha) * pred).norm(dim=-1)).median().item()
    assert 0.75 * README_NORM_RATIO <= ratio <= 1.25 * README_NORM_RATIO, ratio

    assert abs(len(lt_patch.pairs) - README_PATCH["pairs"]) <= 2, len(lt_patch.pairs)
    assert lt_patch.grid("resid", "latent").abs().max().max() <= README_PATCH["latent_max"] + 0.04
    readout = lt_patch.grid("resid", None).loc["answer -1", lt_probe.n_layers - 1]
    assert abs(readout - README_PATCH["readout_last"]) <= RATE_BAND, readout

    # the README's CLI lines run on these same problems
    from lensing.interventions.cli import _problems as cli_problems

    assert cli_problems(30, 0) == problems
    assert cli_problems(24, 0, steps=3) == make_splits(0, 0, 24, seed=0, difficulties=(3,)).test
