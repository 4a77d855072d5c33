"""How a benchmark script reports a named number to `benchmarks/run.py` (which writes results.json).

A line ``RESULT {"name": ..., "value": ..., ...}`` on stdout; run.py reads these lines from each
script's output and writes them all, with the machine's details, to ``benchmarks/results.json``.
"""

from __future__ import annotations

import json


def record(name: str, value: float, target: str | None = None, **details) -> None:
    """Reports ``name = value`` (a ratio measured in this run), its target, and any details."""
    entry = {"name": name, "value": round(float(value), 4), "target": target, **details}
    print("RESULT " + json.dumps(entry), flush=True)
