"""Greedy-decoding accuracy and latent counts by difficulty."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from lensing.model import LatentLM, Trace
from lensing.tasks import Problem
from lensing.tasks import get as get_task


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


def forced_latents(lm: LatentLM) -> Callable[[Problem], int] | None:
    """How many latents a model trained with latents in place of CoT steps (Coconut, pause,
    step supervision) must be given for a problem: ``latents_per_step`` per step, as recorded
    in its checkpoint; None for models that decide themselves when to think (LT, CoT)."""
    per_step = lm.meta.get("inference", {}).get("latents_per_step")
    if not per_step:
        return None
    cap = lm.meta["inference"].get("max_latent_steps")
    return lambda problem: per_step * (problem.steps if cap is None else min(problem.steps, cap))


def evaluate(
    lm: LatentLM,
    problems: list[Problem],
    batch_size: int = 200,
    max_new_tokens: int = 160,
    latents: Callable[[Problem], int] | None | str = "auto",
) -> EvalResult:
    """Generates greedily for every problem and checks each answer with its task's ``check``.

    ``latents(problem)`` latents are forced right after the prompt (for models that never emit
    them themselves); ``"auto"`` takes the rule from the checkpoint (:func:`forced_latents`).
    """
    if not problems:
        raise ValueError("empty evaluation set: no problems given")
    lm.eval()
    rule = forced_latents(lm) if latents == "auto" else latents
    counts = [rule(p) if rule else 0 for p in problems]
    traces: list[Trace | None] = [None] * len(problems)
    for count in sorted(set(counts)):
        group = [i for i, c in enumerate(counts) if c == count]
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            out = lm.generate(
                [problems[i].prompt for i in chunk],
                max_new_tokens=max_new_tokens,
                meta=[
                    {"steps": p.steps, "structure": p.structure, "answer": p.answer}
                    for p in map(problems.__getitem__, chunk)
                ],
                force_latents=count,
            )
            for i, trace in zip(chunk, out, strict=True):
                traces[i] = trace
    return EvalResult(
        steps=[p.steps for p in problems],
        correct=[get_task(p.task).check(t.text(), p) for t, p in zip(traces, problems, strict=True)],
        n_latents=[t.n_latents for t in traces],
        traces=traces,
    )
