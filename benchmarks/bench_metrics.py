"""Collapse statistics stream: peak memory stays flat from 1k to 10k traces.

Each synthetic trace contributes a chain of 6 latent steps x 5 read-out layers x d=128 (the
bundled model's shape). Statistics are mergeable moments (O(d^2) per step and layer) plus a
bounded reservoir, so memory does not grow with the number of traces; time does, linearly.

Usage: python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import gc
import time

import torch

from lensing.studies import CollapseAccumulator


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def _reset_peak() -> int:
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _kib("VmRSS")


def run(n_traces: int, batch: int = 250, d: int = 128) -> tuple[float, float, float]:
    """Seconds in all, peak extra MiB while accumulating, peak extra MiB while computing the table."""
    base = _reset_peak()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    acc = CollapseAccumulator(["embed", "L0", "L1", "L2", "L3"])
    for _ in range(0, n_traces, batch):  # traces arrive in batches, as from generation
        states = torch.randn(batch, 6, 5, d, generator=gen)
        acc.add_many(states, [(i % 10, i % 7) for i in range(batch)])
    accumulate_peak = (_kib("VmHWM") - base) / 1024
    base = _reset_peak()
    table = acc.table(torch.randn(30, d, generator=gen))
    table_peak = (_kib("VmHWM") - base) / 1024
    assert int(table.n.iloc[0]) == n_traces
    return time.perf_counter() - start, accumulate_peak, table_peak


def main() -> None:
    run(250)  # warm-up: imports, allocator
    results = {n: run(n) for n in (1_000, 10_000)}
    for n, (t, acc_mem, table_mem) in results.items():
        print(
            f"{n:6d} traces: {t:6.1f} s, peak while accumulating +{acc_mem:6.1f} MiB, "
            f"while computing the table +{table_mem:6.1f} MiB"
        )
    (t1, a1, b1), (t10, a10, b10) = results[1_000], results[10_000]
    print(
        f"  peak memory 10k / 1k traces: accumulating {a10 / max(a1, 1e-9):.2f}x, table {b10 / max(b1, 1e-9):.2f}x "
        f"(flat = 1x); time ratio {t10 / t1:.1f}x"
    )


if __name__ == "__main__":
    main()
