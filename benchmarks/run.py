"""Runs every benchmark script in this folder, one after another (`make benchmarks`).

Each script prints ratios measured within its own run; this only collects them in one place.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = ("bench_model.py", "bench_probes.py", "bench_metrics.py", "bench_interventions.py")


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        if subprocess.run([sys.executable, str(here / script)], check=False).returncode:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
