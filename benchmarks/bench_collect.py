"""`lensing collect` on one worker and on two (torchrun, gloo, one thread each), same problems.

Wall time of the whole command (process start, model load and probe attach included), runs
alternated (1 worker, 2 workers, ...) so drifts in machine speed hit both; the speedup is the
best single-worker time over the best two-worker time, and the merged statistics of the two runs
are compared (they must agree to 1e-5). The speedup needs two free cores: on a shared or loaded
machine it is bounded by the cores actually free (the load average is printed).

Usage: python benchmarks/bench_collect.py [--n 64] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from _results import record
from lensing.collect import read_results


def run(workers: int, n: int, chunk: int, out: Path) -> float:
    bindir = Path(sys.executable).parent
    command = [
        str(bindir / "torchrun"),
        "--standalone",
        f"--nproc_per_node={workers}",
        str(bindir / "lensing"),
        "collect",
        "arith-tiny",
        "-n",
        str(n),
        "--chunk",
        str(chunk),
        "--out",
        str(out),
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for workers in (1, 2):
                out = Path(tmp) / f"w{workers}-{r}"
                times[workers].append(run(workers, args.n, args.chunk, out))
        one, _ = read_results(Path(tmp) / "w1-0")
        two, _ = read_results(Path(tmp) / "w2-0")
        worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    t1, t2 = min(times[1]), min(times[2])
    load = os.getloadavg()[0]
    print(
        f"lensing collect arith-tiny, {args.n} problems in chunks of {args.chunk}: 1 worker {t1:.1f} s, "
        f"2 workers {t2:.1f} s (load average {load:.1f} on {os.cpu_count()} cores); "
        f"largest difference between the merged statistics {worst:.1e}"
    )
    print(f"  2 workers / 1 worker speedup = {t1 / t2:.2f}x (target >= 1.8x with 2 free cores)")
    record(
        "collect_2_workers_speedup",
        t1 / t2,
        ">= 1.8 with >= 2 free cores",
        load_average=round(load, 2),
        cpus=os.cpu_count(),
        max_stat_difference=worst,
    )
    assert worst <= 1e-5, worst


if __name__ == "__main__":
    main()
