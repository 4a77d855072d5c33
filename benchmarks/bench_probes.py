"""Probe costs, measured in one run.

1. Bundled model: the plain forward of an attached model over that of the same checkpoint never
   attached, timed alternately (attaching must not touch the model: target 1.00x within noise),
   and one probe pass with every probe over a plain forward of the same batch.
2. A SmolLM2-shaped Llama with random weights (30 layers, d=576, vocabulary 49,152): the logit
   lens over all layers and positions against
   (a) the bare unembedding products it cannot avoid (final norm + W_U for every layer),
   (b) TransformerLens 4.3's ``tools.analysis.logit_lens`` (top-5) on the same cache,
   (c) a version that materialises every layer's logits before reducing them.
   Peak memory is the most memory held by tensors at once during the call, from the profiler's
   allocation records (deterministic; the process's resident set depends on malloc's reuse and
   varied ten-fold between runs).

Usage: python benchmarks/bench_probes.py [--positions 128]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

import lensing
from _results import record
from lensing.probes.logit_lens import lens_statistics
from lensing.tasks import make_splits


def peak_tensor_mib(fn) -> float:
    """Most memory (MiB) held at once by tensors allocated during ``fn()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted(
        (e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
        for e in prof.events()
        if e.name == "[memory]" or e.self_cpu_memory_usage
    )
    return max(itertools.accumulate(change for _, change in changes), default=0) / 2**20


def best_time(fn, repeats: int = 5) -> float:
    """Best wall time (s) of ``fn()`` after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_best_times(a, b, repeats: int) -> tuple[float, float]:
    """Best wall times (s) of ``a()`` and ``b()`` timed alternately, so drifts in machine speed hit both."""
    a(), b()
    best_a = best_b = float("inf")
    for _ in range(repeats):
        for fn, is_a in ((a, True), (b, False)):
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            best_a, best_b = (min(best_a, elapsed), best_b) if is_a else (best_a, min(best_b, elapsed))
    return best_a, best_b


@torch.no_grad()
def bench_bundled(n_traces: int = 64) -> None:
    lm = lensing.load("arith-tiny")
    control = lensing.load("arith-tiny")  # the same checkpoint, never attached
    problems = make_splits(0, 0, n_traces // 6 + 1, seed=3).test[:n_traces]
    traces = lm.generate([p.prompt for p in problems], max_new_tokens=96)
    from lensing.probes import Batch

    batch = Batch.from_traces(traces)

    def forward(model):
        return lambda: model(inputs_embeds=batch.embeds, attention_mask=batch.mask, position_ids=batch.positions)

    probe = lensing.attach(lm)
    probe.run(traces)
    attached, untouched = interleaved_best_times(forward(lm.model), forward(control.model), repeats=20)
    print(
        f"plain forward of an attached model / the same checkpoint never attached: {attached / untouched:.2f}x "
        f"({attached * 1e3:.1f} vs {untouched * 1e3:.1f} ms, best of 20, interleaved; target 1.00x)"
    )
    record("attach_forward_slowdown", attached / untouched, "1.00 within noise")
    everything = best_time(lambda: probe.run(traces))
    n_latents = sum(t.n_latents for t in traces)
    print(
        f"bundled model, {len(traces)} traces ({sum(map(len, traces))} positions, {n_latents} latents): "
        f"plain forward {untouched * 1e3:.1f} ms, probe pass with all probes {everything * 1e3:.1f} ms"
    )
    print(f"  all probes / plain forward = {everything / untouched:.2f}x (target <= 1.1x)")
    record("probes_vs_forward", everything / untouched, "<= 1.1", traces=len(traces))


def smollm2_shaped_model():
    """A random-weight Llama with SmolLM2-135M's shape, wrapped as a LatentLM."""
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM

    from lensing.model import LatentLM
    from lensing.tasks import build_char_tokenizer
    from lensing.tasks.tokenizer import save_and_reload

    tokenizer = save_and_reload(build_char_tokenizer(), tempfile.mkdtemp())
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return LatentLM(LlamaForCausalLM(config).eval(), tokenizer)


@torch.no_grad()
def bench_large_vocab(positions: int) -> None:
    from transformer_lens.tools.analysis import logit_lens as tl_logit_lens

    lm = smollm2_shaped_model()
    probe = lensing.attach(lm)
    text = ("a=12;b=a+3;c=b-5;" * 20)[: positions - 1]
    trace = lm.score([lm.encode(text)], [[]])[0]
    _, cache, batch = probe.run_with_cache([trace], probe.resid_names())
    resid = batch.flat(probe.resid_stack(cache), batch_dim=1)  # [layer, pos, d]
    targets = batch.next_tokens()
    n_read, n, vocab = resid.shape[0], resid.shape[1], probe.W_U.shape[1]

    def bare():
        for layer in range(n_read):
            probe.unembed(resid[layer])

    def ours():
        return lens_statistics(probe, resid, targets, top_k=5)

    def transformer_lens():
        return tl_logit_lens(cache, positions=None, top_k=5)

    def materialised():
        logits = torch.stack([probe.unembed(resid[layer]) for layer in range(n_read)]).float()
        logp = torch.log_softmax(logits, -1)
        p = logp.exp()
        top = p.topk(5, dim=-1)
        entropy = -(p * logp).sum(-1)
        kl = (p[-1:] * (logp[-1:] - logp)).sum(-1)
        rank = (logits > logits.gather(2, targets.clamp(min=0)[None, :, None].expand(n_read, -1, 1))).sum(-1)
        return top, entropy, kl, rank

    results = {
        name: (best_time(fn), peak_tensor_mib(fn))
        for name, fn in (
            ("bare", bare),
            ("ours", ours),
            ("transformer_lens", transformer_lens),
            ("materialised", materialised),
        )
    }
    print(f"logit lens, SmolLM2-shaped random Llama: {n_read} read-outs x {n} positions x {vocab} vocabulary")
    for name, (t, mem) in results.items():
        print(f"  {name:17s} {t * 1e3:8.1f} ms   peak +{mem:7.1f} MiB")
    (tb, _), (to, mo), (tt, mt), (_, mm) = (results[k] for k in ("bare", "ours", "transformer_lens", "materialised"))
    print(f"  (a) ours / bare unembedding products = {to / tb:.2f}x time (target <= 1.3x)")
    print(
        f"  (b) ours / TransformerLens logit_lens = {to / tt:.2f}x time, {mo / max(mt, 1e-9):.2f}x peak memory "
        f"(target < 1x time, <= 1x memory)"
    )
    print(f"  (c) ours / materialised = {mo / max(mm, 1e-9):.3f}x peak memory (target <= 0.25x)")
    record("lens_vs_floor", to / tb, "<= 1.3", note="logit lens over the bare final norm + unembedding products")
    record("lens_vs_tl_time", to / tt, "< 1", note="TransformerLens 4.3 tools.analysis.logit_lens, top-5")
    record("lens_vs_tl_memory", mo / max(mt, 1e-9), "<= 1", note="peak tensor memory during the call")
    record("lens_vs_materialised_memory", mo / max(mm, 1e-9), "<= 0.25")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--positions", type=int, default=128)
    args = parser.parse_args()
    bench_bundled()
    bench_large_vocab(args.positions)


if __name__ == "__main__":
    main()
