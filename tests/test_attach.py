"""Attaching probes never alters the user's model: modules, hooks, state_dict, attention, generation, saving."""

import warnings

import pytest
import torch
from conftest import PROMPTS, make_tiny_lm

import lensing
from lensing.model import LatentLM


def fingerprint(lm: LatentLM) -> dict:
    """Everything about ``lm`` that attaching could change, read without running it."""
    return {
        "modules": [(name, type(m).__name__) for name, m in lm.named_modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in lm.modules()),
        "state_dict": {k: (v.data_ptr(), tuple(v.shape)) for k, v in lm.state_dict().items()},
        "attn_implementation": lm.model.config._attn_implementation,
    }


def bridge_hooks(probe) -> tuple[int, int]:
    """Hooks on the bridge's hook points (what probes add) and on all its modules (TransformerLens
    also wires a few capture hooks of its own into the shadow on the first forward)."""
    from transformer_lens.hook_points import HookPoint

    def count(modules):
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in modules)

    modules = list(probe.bridge.modules())
    return count(m for m in modules if isinstance(m, HookPoint)), count(modules)


def assert_same_generation(before, after):
    assert [t.text() for t in after] == [t.text() for t in before]
    for a, b in zip(before, after, strict=True):
        for name in ("token_ids", "input_embeds", "latent_h", "latent_pred", "logits"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.fixture(params=["eager", "sdpa"])
def tiny_lm_any_attention(request, tmp_path):
    lm = make_tiny_lm(tmp_path / "tok")
    lm.model.config._attn_implementation = request.param
    return lm


def test_attach_leaves_tiny_model_untouched(tiny_lm_any_attention, tmp_path):
    lm = tiny_lm_any_attention
    before = lm.generate(PROMPTS, max_new_tokens=30)
    assert any(t.n_latents for t in before)
    state = fingerprint(lm)
    probe = lensing.attach(lm)
    results = probe.run(before)
    assert results["logit_lens"].stats.entropy.isfinite().all()
    assert fingerprint(lm) == state
    assert_same_generation(before, lm.generate(PROMPTS, max_new_tokens=30))
    # the shadow shares storage: an in-place edit of a weight is seen by the probes too
    shared = {p.data_ptr() for p in probe.bridge.parameters()}
    assert all(p.data_ptr() in shared for p in lm.model.parameters())
    lm.save_pretrained(tmp_path / "saved")
    reloaded = LatentLM.from_pretrained(tmp_path / "saved")
    assert reloaded.model.state_dict().keys() == lm.model.state_dict().keys()
    assert_same_generation(before, reloaded.generate(PROMPTS, max_new_tokens=30))


def test_attach_leaves_bundled_model_untouched():
    lm = lensing.load("arith-tiny")
    prompts = ["a=12;b=a+3;c=b-5;c?\n", "a=97;b=a+8;c=b-9;d=c+4;d?\n"]
    before = lm.generate(prompts)
    state = fingerprint(lm)
    probe = lensing.attach(lm)
    probe.run(before)
    probe.logit_lens(before)
    assert fingerprint(lm) == state
    after = lm.generate(prompts)
    assert_same_generation(before, after)
    assert after[0].text() == "b=12+3=15\nc=15-5=10\n###10"


def test_probes_see_in_place_weight_edits(tiny_lm):
    trace = tiny_lm.generate(PROMPTS[:1], max_new_tokens=10)
    probe = lensing.attach(tiny_lm)
    logits, _, batch = probe.run_with_cache(trace, [])
    with torch.no_grad():
        tiny_lm.model.get_output_embeddings().weight.mul_(2)
    doubled, _, _ = probe.run_with_cache(trace, [])
    torch.testing.assert_close(doubled, 2 * logits, atol=1e-5, rtol=1e-5)


def test_probe_hooks_are_removed_also_on_error(tiny_lm):
    traces = tiny_lm.generate(PROMPTS, max_new_tokens=20)
    probe = lensing.attach(tiny_lm)
    probe.run(traces)
    idle = bridge_hooks(probe)
    assert idle[0] == 0
    probe.run(traces)
    assert bridge_hooks(probe) == idle
    calls = []

    def failing_filter(name):
        calls.append(name)
        if len(calls) > 5:
            raise RuntimeError("filter failed")
        return True

    with pytest.raises(RuntimeError, match="filter failed"):
        probe.run_with_cache(traces, failing_filter)
    assert bridge_hooks(probe) == idle
    # and the probe still gives the same answers afterwards
    torch.testing.assert_close(
        probe.run(traces)["logit_lens"].stats.entropy, probe.logit_lens(traces).stats.entropy, atol=0, rtol=0
    )


def test_generation_and_training_forward_raise_no_deprecation_warning(tiny_lm):
    ids = torch.tensor([tiny_lm.encode("a=1;b=a+2;b?\n")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        tiny_lm.generate(PROMPTS, max_new_tokens=8)
        tiny_lm(ids, labels=ids).loss.backward()
