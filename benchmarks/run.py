"""Runs every benchmark script in this folder, one after another (`make benchmarks`), and writes results.json.

Each script prints ratios measured within its own run; lines ``RESULT {...}`` (see ``_results.py``)
are collected into ``benchmarks/results.json`` with the machine's core count and load, so the
numbers quoted in the README come from one run of this command.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = ("bench_model.py", "bench_probes.py", "bench_metrics.py", "bench_interventions.py", "bench_collect.py")


def main() -> int:
    here = Path(__file__).resolve().parent
    only = sys.argv[1:]  # optional: run only these scripts
    failed, results = [], {}
    started = time.time()
    load_before = os.getloadavg()
    for script in SCRIPTS:
        if only and script not in only:
            continue
        print(f"== {script}", flush=True)
        proc = subprocess.Popen(
            [sys.executable, str(here / script)], stdout=subprocess.PIPE, text=True, bufsize=1, cwd=here.parent
        )
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("RESULT "):
                entry = json.loads(line[len("RESULT ") :])
                name = entry.pop("name")
                results[name] = {"script": script, **entry}
        if proc.wait():
            failed.append(script)
    import torch

    report = {
        "ratios": {name: entry["value"] for name, entry in results.items()},
        "details": results,
        "failed": failed,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "wall_time_s": round(time.time() - started, 1),
    }
    target = here / "results.json"
    tmp = target.with_name(".results.json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(target)
    print(f"wrote {len(results)} ratios to {target}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
