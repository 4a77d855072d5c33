"""Probe invariants on a tiny random Llama (norm weights randomised so that gamma mistakes show)."""

import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import PROMPTS, make_tiny_lm

from lensing.probes import attach, prediction_depth


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lm = make_tiny_lm(tmp_path_factory.mktemp("tok"))
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.randn_like(p))
    traces = lm.generate(PROMPTS, max_new_tokens=30)
    reference = copy.deepcopy(lm)  # an untouched HF model for comparisons
    return lm, attach(lm), traces, reference


def test_probe_forward_reproduces_generation_logits(setup):
    lm, probe, traces, _ = setup
    logits, _, batch = probe.run_with_cache(traces, [])
    torch.testing.assert_close(batch.flat(logits), torch.cat([t.logits for t in traces]), atol=1e-4, rtol=0)
    assert any(t.n_latents for t in traces)


def test_logit_lens_last_layer_equals_logits(setup):
    _, probe, traces, _ = setup
    result = probe.logit_lens(traces, top_k=3)
    final = torch.softmax(torch.cat([t.logits for t in traces]), -1)
    torch.testing.assert_close(result.stats.top_probs[-1], final.topk(3).values, atol=1e-4, rtol=0)
    assert torch.equal(result.stats.top_ids[-1, :, 0], final.argmax(-1))
    assert result.stats.kl_to_final[-1].abs().max() < 1e-4
    nxt = torch.cat([torch.cat([t.token_ids[1:], torch.tensor([0])]) for t in traces])
    expected = final.gather(1, nxt[:, None]).squeeze(1)
    got = result.stats.target_prob[-1]
    keep = ~torch.isnan(got)
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-4, rtol=0)
    assert keep.sum() == sum(len(t) - 1 for t in traces)


def test_logit_lens_matches_transformer_lens(setup):
    from transformer_lens.tools.analysis import logit_lens

    _, probe, traces, _ = setup
    _, cache, batch = probe.run_with_cache(traces, probe.resid_names())
    theirs = logit_lens(cache, positions=None)  # [layer, batch, pos, vocab] raw logits
    probs = torch.stack([batch.flat(torch.softmax(v, -1)) for v in theirs.values])
    ours = probe.logit_lens(traces, top_k=2)
    torch.testing.assert_close(ours.stats.top_probs, probs.topk(2, dim=-1).values, atol=1e-5, rtol=0)
    entropy = -(probs * probs.clamp(min=1e-30).log()).sum(-1)
    torch.testing.assert_close(ours.stats.entropy, entropy, atol=1e-4, rtol=0)


def test_decomposition_sums_to_final_residual(setup):
    lm, probe, traces, _ = setup
    result = probe.decompose(traces)
    torch.testing.assert_close(result.components.sum(0), result.final_resid, atol=1e-4, rtol=0)
    n_layers = probe.n_layers
    attn = result.components[1::2][:n_layers]
    heads = result.heads.reshape(n_layers, -1, *result.heads.shape[1:]).sum(1)
    torch.testing.assert_close(heads, attn, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.dla.sum(0), result.logit, atol=1e-4, rtol=0)
    # the target logit is the model's own logit for the next token
    logits = torch.cat([t.logits for t in traces])
    torch.testing.assert_close(result.logit, logits.gather(1, result.target_ids[:, None]).squeeze(1), atol=1e-4, rtol=0)


def test_dla_matches_transformer_lens_logit_attrs(setup):
    from transformer_lens.model_bridge import TransformerBridge

    _, probe, traces, reference = setup
    ours = probe.decompose(traces, target="5", foil="7", positions="last")
    ref = copy.deepcopy(reference)
    bridge = TransformerBridge.boot_transformers("ref", hf_model=ref.model, tokenizer=ref.tokenizer, device="cpu")
    bridge.enable_compatibility_mode(disable_warnings=True)  # folds the norm weight, as TL's DLA assumes
    five, seven = probe.lm.encode("5", add_bos=False)[0], probe.lm.encode("7", add_bos=False)[0]
    for j, trace in enumerate(traces):
        _, cache = bridge.run_with_cache(trace.input_embeds[None])
        stack, _ = cache.decompose_resid(layer=None, return_labels=True, pos_slice=-1)
        stack = torch.cat([cache["blocks.0.hook_resid_pre"][None, :, -1], stack])  # embed part (inputs_embeds run)
        attrs = cache.logit_attrs(
            stack, tokens=torch.tensor([five]), incorrect_tokens=torch.tensor([seven]), pos_slice=-1
        )
        torch.testing.assert_close(
            ours.dla[:, j], attrs[:, 0, 0] if attrs.dim() == 3 else attrs[:, 0], atol=1e-4, rtol=0
        )


def test_batched_equals_one_by_one(setup):
    _, probe, traces, _ = setup
    together = probe.run(traces)
    for i, trace in enumerate(traces):
        alone = probe.run([trace])
        cols = [j for j, t in enumerate(together["logit_lens"].trace_index) if t == i]
        torch.testing.assert_close(
            alone["logit_lens"].stats.entropy, together["logit_lens"].stats.entropy[:, cols], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(alone["attention"].patterns[0], together["attention"].patterns[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone["decompose"].dla, together["decompose"].dla[:, cols], atol=1e-4, rtol=0)


def test_attention_rows_sum_to_one_and_shares(setup):
    _, probe, traces, _ = setup
    result = probe.attention(traces)
    for pattern, trace in zip(result.patterns, traces, strict=True):
        assert pattern.shape == (probe.n_layers, probe.n_heads, len(trace), len(trace))
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-5, rtol=0)
        assert torch.triu(pattern, diagonal=1).abs().max() == 0  # causal
    shares = result.segment_shares()
    total = shares.groupby(["layer", "query_kind"]).share.sum()
    assert ((total - 1).abs() < 1e-5).all()
    entropy = result.head_entropy()
    assert entropy.shape == (probe.n_layers, probe.n_heads) and (entropy >= 0).all()


def test_decode_latents(setup):
    _, probe, traces, _ = setup
    result = probe.decode_latents(traces, top_k=3)
    lens = probe.logit_lens(traces, top_k=3)
    latent_cols = [i for i, k in enumerate(lens.kind) if k == "latent"]
    assert len(result.position) == len(latent_cols) == sum(t.n_latents for t in traces)
    assert torch.equal(result.top_ids, lens.stats.top_ids[:, latent_cols])
    # the input vector's nearest token embedding by cosine, checked directly
    emb = probe.lm.model.get_input_embeddings().weight
    trace = next(t for t in traces if t.n_latents)
    vec = trace.input_embeds[trace.latent_positions[0]]
    first = result.trace_index.index(traces.index(trace))
    assert int(result.nearest_ids[first, 0]) == int(torch.nn.functional.cosine_similarity(emb, vec[None]).argmax())


def test_prediction_depth_by_hand():
    top1 = torch.tensor([[4, 1, 2], [4, 2, 2], [5, 2, 2], [5, 2, 2]])
    assert prediction_depth(top1).tolist() == [2, 1, 0]


def test_results_have_dataframes_and_plots(setup):
    _, probe, traces, _ = setup
    results = probe.run(traces)
    for result in results.values():
        assert len(result.to_dataframe()) > 0
        fig = result.plot()
        assert len(fig.data) >= 1
    df = results["logit_lens"].to_dataframe()
    assert set(df.kind) >= {"prompt", "latent"} and len(df) == (probe.n_layers + 1) * sum(map(len, traces))


def test_bad_probe_inputs(setup):
    _, probe, traces, _ = setup
    with pytest.raises(ValueError, match="empty batch"):
        probe.logit_lens([])
    with pytest.raises(ValueError, match="unknown probe 'saliency'"):
        probe.run(traces, ["saliency"])
    with pytest.raises(ValueError, match="no tuned lens"):
        probe.logit_lens(traces, lens="tuned")
    with pytest.raises(ValueError, match="single token"):
        probe.decompose(traces, target="12")


def test_vocabulary_slices_give_the_same_statistics(setup):
    from lensing.probes.logit_lens import lens_statistics

    _, probe, traces, _ = setup
    _, cache, batch = probe.run_with_cache(traces, probe.resid_names())
    resid = batch.flat(probe.resid_stack(cache), batch_dim=1)
    targets = batch.next_tokens()
    whole = lens_statistics(probe, resid, targets, top_k=4, vocab_chunk=1000)
    sliced = lens_statistics(probe, resid, targets, top_k=4, chunk=17, vocab_chunk=7)  # ragged slices
    for name in ("top_probs", "entropy", "kl_to_final", "target_prob"):
        torch.testing.assert_close(getattr(sliced, name), getattr(whole, name), atol=1e-5, rtol=0, equal_nan=True)
    assert torch.equal(sliced.top_ids, whole.top_ids) and torch.equal(sliced.target_rank, whole.target_rank)


def test_logit_lens_kl_and_rank_match_materialised_logits(setup):
    from lensing.probes.logit_lens import lens_statistics

    _, probe, traces, _ = setup
    _, cache, batch = probe.run_with_cache(traces, probe.resid_names())
    resid = batch.flat(probe.resid_stack(cache), batch_dim=1)
    targets = batch.next_tokens()
    stats = lens_statistics(probe, resid, targets, vocab_chunk=5)
    logits = torch.stack([probe.unembed(r) for r in resid]).float()
    logp = logits.log_softmax(-1)
    kl = (logp[-1:].exp() * (logp[-1:] - logp)).sum(-1)
    torch.testing.assert_close(stats.kl_to_final, kl, atol=1e-5, rtol=0)
    keep = targets >= 0
    target_logit = logits[:, keep].gather(2, targets[keep][None, :, None].expand(len(resid), -1, 1))
    assert torch.equal(stats.target_rank[:, keep], (logits[:, keep] > target_logit).sum(-1))
    assert (stats.target_rank[:, ~keep] == -1).all()


class _HeadOnly:
    """A probe stand-in whose read-out is a plain linear head: logits = h @ weight.T."""

    def __init__(self, weight):
        head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        head.weight.data = weight
        self.lm = SimpleNamespace(model=SimpleNamespace(get_output_embeddings=lambda: head))
        self.final_norm = torch.nn.Identity()
        self.unembed = head


def test_lens_statistics_far_apart_logits_and_ties_by_hand():
    from lensing.probes.logit_lens import lens_statistics

    probe = _HeadOnly(torch.eye(4))  # the residual is the logits
    resid = torch.tensor(
        [
            [[0.0, 300.0, -200.0, 1.0], [1.0, 1.0, 1.0, 0.0]],  # target 300 nats below the top; a three-way tie
            [[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]],
        ]
    )
    stats = lens_statistics(probe, resid, torch.tensor([0, 1]), top_k=2, vocab_chunk=1)
    logp = resid.log_softmax(-1)
    torch.testing.assert_close(stats.entropy, -(logp.exp() * logp).sum(-1))
    torch.testing.assert_close(stats.kl_to_final, (logp[-1:].exp() * (logp[-1:] - logp)).sum(-1))
    torch.testing.assert_close(stats.target_prob[0], torch.tensor([logp[0, 0, 0], logp[0, 1, 1]]).exp())
    # [0, 300, -200, 1]: two above; [1, 1, 1, 0]: two ties = one; [0, 0, 0, 0]: three ties = 1.5, rounded down;
    # [2, 0, 0, 0] with target 1: one above and two ties
    assert stats.target_rank.tolist() == [[2, 1], [1, 2]]
    assert stats.top_ids[0, 0].tolist() == [1, 3]


def test_topk_by_blocks_is_exact():
    from lensing.probes.logit_lens import topk_by_blocks

    gen = torch.Generator().manual_seed(0)
    for width in (5, 64, 300, 1000):
        x = torch.randn(7, width, generator=gen)
        x[0, :] = 1.0  # ties
        values, index = topk_by_blocks(x, 5, block=16)
        ref = x.topk(min(5, width), dim=-1)
        torch.testing.assert_close(values, ref.values)
        torch.testing.assert_close(x.gather(1, index), ref.values)


@pytest.mark.parametrize("vocab_chunk", [None, 2, 1])
def test_target_rank_counts_exact_ties_the_same_at_every_layer(vocab_chunk):
    """Logits [a, 2a, a, a, -a] for any a != 0: one token above the target, two exact ties -> rank 1 + 2/2 = 2.

    The rows are not exactly representable products, so a target logit computed apart from the
    vocabulary products (it was an einsum) differs in the last bits and miscounted the ties.
    """
    from lensing.probes.logit_lens import lens_statistics

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, generator=g)
    probe = _HeadOnly(torch.stack([w, 2 * w, w, w, -w]))  # rows 0, 2 and 3 are identical, like <thinking> and EOS
    resid = torch.randn(4, 20, 64, generator=g)  # three earlier layers and the last
    for target in (0, 2, 3):
        stats = lens_statistics(probe, resid, torch.full((20,), target), vocab_chunk=vocab_chunk)
        assert (stats.target_rank == 2).all(), stats.target_rank


def test_kl_to_final_is_exact_in_chunks_of_one_or_two_positions():
    """A 50k vocabulary whose rows share an offset: one float32 sum over the vocabulary (the
    matrix-vector product BLAS uses for one or two positions) was ~4e-5 off the KL here, 3e-3 on SmolLM2."""
    from lensing.probes.logit_lens import lens_statistics

    g = torch.Generator().manual_seed(0)
    probe = _HeadOnly(1 + 0.5 * torch.randn(50_000, 8, generator=g))
    resid = torch.randn(3, 7, 8, generator=g)
    targets = torch.randint(0, 50_000, (7,), generator=g)
    logp = torch.stack([probe.unembed(r) for r in resid]).double().log_softmax(-1)
    kl = (logp[-1:].exp() * (logp[-1:] - logp)).sum(-1).float()
    assert 0.5 < kl.max() < 5
    for chunk in (None, 1, 2, 3):  # 3: chunks of 3, 3 and 1 positions
        stats = lens_statistics(probe, resid, targets, chunk=chunk)
        torch.testing.assert_close(stats.kl_to_final, kl, atol=1e-5, rtol=0)
