"""LatentLM costs, measured in one run on the bundled model.

1. Stage-3 training step (fusion latents, one forward pass per block of depth_layout) over a CoT
   step on the same problems, timed alternately; also the previous forward (one pass per distinct
   latent column) for comparison.
2. LatentLM.generate tokens per second over Hugging Face generate() on the same model and
   prompts, plain text (the :cot variant emits no latents), greedy, same batch.

Usage: python benchmarks/bench_model.py [--steps N] [--batch B]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import lensing
from _results import record
from lensing.model.reference import per_position_forward
from lensing.tasks import make_splits
from lensing.train import collate, encode_problems, insert_latents


def bench_training(batches: int, batch_size: int) -> float:
    """Stage-3 step (fusion latents) over a CoT step on the same problems, steps timed alternately.

    Each round draws one batch of problems of one difficulty and times, in turn, a CoT step on
    their plain text, a stage-3 step on the same problems with latents inserted (the forward lensing
    uses now), and the same stage-3 step with the previous per-latent-column forward. The ratio is
    the median over rounds of the per-round ratios, so drifts in machine speed hit all three alike.
    """
    splits = make_splits(400, 0, 0, seed=1)
    scorer = lensing.load("arith-tiny:hidden")  # stage 3 data is built by the stage-2 model
    plain = encode_problems(scorer, splits.train)
    with_latents = insert_latents(scorer, plain, seed=0)
    assert [e.problem for e in plain] == [e.problem for e in with_latents]
    lm = lensing.load("arith-tiny")
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-6)
    lm.train()
    by_steps: dict[int, list[int]] = {}
    for i, e in enumerate(plain):
        by_steps.setdefault(e.problem.steps, []).append(i)
    rng = random.Random(0)

    def step(examples, forward) -> float:
        ids, mask, labels = collate(examples, lm._pad_id)
        start = time.perf_counter()
        loss = forward(ids, mask, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    def new(ids, mask, labels):
        return lm(ids, mask, labels).loss

    def old(ids, mask, labels):
        return per_position_forward(lm, ids, mask, labels)[1]

    rounds, latents = [], 0
    difficulties = sorted(by_steps)
    for r in range(batches + 1):
        chosen = rng.sample(by_steps[difficulties[r % len(difficulties)]], batch_size)
        t_cot = step([plain[i] for i in chosen], new)
        t_new = step([with_latents[i] for i in chosen], new)
        t_old = step([with_latents[i] for i in chosen], old)
        if r:  # the first round warms up
            rounds.append((t_cot, t_new, t_old))
            latents += sum(with_latents[i].completion_ids.count(lm.thinking_id) for i in chosen)
    lm.eval()
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    new_ratio = median([n / c for c, n, _ in rounds])
    old_ratio = median([o / c for c, _, o in rounds])
    mean = [sum(x) / len(rounds) for x in zip(*rounds, strict=True)]
    print(
        f"training step, batch {batch_size}, {len(rounds)} rounds over difficulties {difficulties}: "
        f"CoT {mean[0] * 1e3:.0f} ms, stage 3 {mean[1] * 1e3:.0f} ms (per-column forward {mean[2] * 1e3:.0f} ms); "
        f"{latents / (len(rounds) * batch_size):.2f} latents per example"
    )
    print(f"  stage-3 step / CoT step = {new_ratio:.2f}x (target <= 2x); per-column forward {old_ratio:.2f}x")
    record("stage3_step_vs_cot_step", new_ratio, "<= 2", rounds=len(rounds), batch=batch_size)
    record("stage3_per_column_forward_vs_cot_step", old_ratio, None, note="the forward before depth_layout")
    return new_ratio


@torch.no_grad()
def bench_generation(n_prompts: int, repeats: int = 3) -> float:
    lm = lensing.load("arith-tiny:cot")
    problems = make_splits(0, 0, n_prompts // 6 + 1, seed=2).test[:n_prompts]
    prompts = [p.prompt for p in problems]
    tok = lm.tokenizer
    encoded = [lm.encode(p) for p in prompts]
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), lm._pad_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, width - len(e) :], mask[i, width - len(e) :] = torch.tensor(e), 1
    ours_tokens = hf_tokens = 0
    ours_time = hf_time = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        traces = lm.generate(prompts, max_new_tokens=96)
        ours_time += time.perf_counter() - start
        ours_tokens += sum(len(t) - t.prompt_length for t in traces)
        start = time.perf_counter()
        out = lm.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=96,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=lm._pad_id,
        )
        hf_time += time.perf_counter() - start
        new = out[:, width:]
        finished = (new == tok.eos_token_id).int().cumsum(1)
        hf_tokens += int(((finished == 0) | ((finished == 1) & (new == tok.eos_token_id))).sum())
    same = all(
        t.token_ids[t.prompt_length :].tolist() == out[i, width : width + len(t) - t.prompt_length].tolist()
        for i, t in enumerate(traces)
    )
    ours, hf = ours_tokens / ours_time, hf_tokens / hf_time
    print(
        f"generation, {len(prompts)} prompts: LatentLM.generate {ours:.0f} tok/s, HF generate {hf:.0f} tok/s "
        f"(identical tokens: {same})"
    )
    print(f"  LatentLM.generate / HF generate = {ours / hf:.2f}x (target >= 1.0)")
    record("generate_vs_hf", ours / hf, ">= 1.0", identical_tokens=same)
    return ours / hf


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (each: CoT, stage 3, per-column stage 3)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    bench_training(args.steps, args.batch)
    bench_generation(args.prompts)


if __name__ == "__main__":
    main()
