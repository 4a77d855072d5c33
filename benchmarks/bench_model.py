"""LatentLM costs, measured in one run on the bundled model.

1. Stage-3 training step (fusion latents, one pass per distinct latent position) over a stage-1
   step (plain CoT) on the same problems and batch size.
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
from lensing.tasks import make_splits
from lensing.train import collate, encode_problems, insert_latents


def time_train_steps(lm, examples, batches: int, batch_size: int, seed: int) -> float:
    """Mean seconds per forward+backward+AdamW step over batches of one difficulty each."""
    rng = random.Random(seed)
    by_steps: dict[int, list] = {}
    for e in examples:
        by_steps.setdefault(e.problem.steps, []).append(e)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-5)
    lm.train()
    times = []
    for i in range(batches + 1):
        bucket = by_steps[sorted(by_steps)[i % len(by_steps)]]
        ids, mask, labels = collate(rng.sample(bucket, batch_size), lm._pad_id)
        start = time.perf_counter()
        loss = lm(ids, mask, labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    lm.eval()
    return sum(times) / len(times)


def bench_training(batches: int, batch_size: int) -> float:
    splits = make_splits(400, 0, 0, seed=1)
    scorer = lensing.load("arith-tiny:hidden")  # stage 3 data is built by the stage-2 model
    plain = encode_problems(scorer, splits.train)
    with_latents = insert_latents(scorer, plain, seed=0)
    per_example = sum(e.completion_ids.count(scorer.thinking_id) for e in with_latents) / len(with_latents)
    lm = lensing.load("arith-tiny")
    t1 = time_train_steps(lm, plain, batches, batch_size, seed=0)
    t3 = time_train_steps(lm, with_latents, batches, batch_size, seed=0)
    print(
        f"training step, batch {batch_size}: stage 1 {t1 * 1e3:.0f} ms, stage 3 {t3 * 1e3:.0f} ms "
        f"({per_example:.2f} latents per example)"
    )
    print(f"  stage-3 step / stage-1 step = {t3 / t1:.2f}x")
    return t3 / t1


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
    print(f"  LatentLM.generate / HF generate = {ours / hf:.2f}x (target >= 0.8)")
    return ours / hf


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    bench_training(args.steps, args.batch)
    bench_generation(args.prompts)


if __name__ == "__main__":
    main()
