"""Greedy-decoding accuracy and latent counts by difficulty."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pandas as pd

from lensing.model import LatentLM, Trace
from lensing.tasks import Problem, extract_answer


@dataclass
class EvalResult:
    """Per-problem outcomes of one evaluation run."""

    steps: list[int]
    correct: list[bool]
    n_latents: list[int]
    traces: list[Trace]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per difficulty plus an ``all`` row: n, accuracy (%), mean latents."""
        rows = defaultdict(list)
        for s, c, n in zip(self.steps, self.correct, self.n_latents, strict=True):
            rows[s].append((c, n))
        table = [
            {
                "steps": str(s),
                "n": len(v),
                "accuracy": 100 * sum(c for c, _ in v) / len(v),
                "mean_latents": sum(n for _, n in v) / len(v),
            }
            for s, v in sorted(rows.items())
        ]
        total = len(self.correct)
        table.append(
            {
                "steps": "all",
                "n": total,
                "accuracy": 100 * sum(self.correct) / total,
                "mean_latents": sum(self.n_latents) / total,
            }
        )
        return pd.DataFrame(table)

    @property
    def accuracy(self) -> float:
        return 100 * sum(self.correct) / len(self.correct)

    def to_dict(self) -> dict:
        return {"table": self.to_dataframe().to_dict(orient="records"), "accuracy": self.accuracy}


def evaluate(lm: LatentLM, problems: list[Problem], batch_size: int = 200, max_new_tokens: int = 160) -> EvalResult:
    """Generates greedily for every problem and checks the extracted answer exactly."""
    if not problems:
        raise ValueError("empty evaluation set: no problems given")
    lm.eval()
    traces: list[Trace] = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        traces += lm.generate(
            [p.prompt for p in chunk],
            max_new_tokens=max_new_tokens,
            meta=[{"steps": p.steps, "structure": p.structure, "answer": p.answer} for p in chunk],
        )
    return EvalResult(
        steps=[p.steps for p in problems],
        correct=[extract_answer(t.text()) == p.answer for t, p in zip(traces, problems, strict=True)],
        n_latents=[t.n_latents for t in traces],
        traces=traces,
    )
