"""Cost of an intervention sweep over the clean generation it re-runs, measured in one run.

On the bundled ``arith-tiny:lt`` and a fixed set of test problems: the wall time of the clean
batched generation, of the same generation through the ``intervention`` hook with kind ``none``
(the hook's own overhead; bitwise the same traces), and of a sweep over every kind at all steps
plus each latent step 0..2 for ``zero`` (generation and answer scoring included). Prints each as
a ratio to the clean generation.

Runs on one CPU thread by default (``--threads``): the model is tiny, and one thread is the
fastest and steadiest setting for it, especially on a shared machine.

Usage: python benchmarks/bench_interventions.py [--n 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import lensing
from lensing.interventions import Intervention, intervention_sweep
from lensing.interventions.generation import generate_problems
from lensing.tasks import make_splits

SWEEP = (
    "zero", "mean", "shuffle", "swap", "noise", "thinking", "nearest", "h-only", "pred-only",
    "ban", "force 2", "truncate 1",
)


def best_time(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = lensing.load("arith-tiny:lt")
    problems = make_splits(0, 0, -(-args.n // 6), seed=0).test[: args.n]
    generate_problems(lm, problems)  # warm-up
    clean_s = best_time(lambda: generate_problems(lm, problems))
    none_s = best_time(lambda: generate_problems(lm, problems, Intervention("none"), []))
    clean, _ = generate_problems(lm, problems)
    kinds = [*SWEEP, *(Intervention("zero", step=k) for k in range(3))]
    start = time.perf_counter()
    sweep = intervention_sweep(lm, problems, kinds, clean=clean, model="arith-tiny:lt")
    sweep_s = time.perf_counter() - start
    n_runs = len(sweep.results)
    print(f"arith-tiny:lt, {len(problems)} problems, {args.threads} thread(s): clean generation {clean_s * 1e3:.0f} ms")
    print(f"  hook with kind 'none': {none_s / clean_s:.2f}x the clean generation")
    print(
        f"  sweep of {n_runs} interventions (every kind at all steps, zero at steps 0-2; generation + answer "
        f"scoring): {sweep_s:.1f} s = {sweep_s / clean_s:.1f}x the clean generation, "
        f"{sweep_s / clean_s / n_runs:.2f}x per intervention"
    )
    t = sweep.to_dataframe()
    print(f"  mean latents per problem: clean {t.mean_latents_clean.iloc[0]:.2f}, under zero {t.set_index('intervention').mean_latents['zero']:.2f}")


if __name__ == "__main__":
    main()
