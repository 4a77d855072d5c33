"""Does latent step j carry CoT step j? Swap it between two problems of the same difficulty and
see whether the answer follows the donor's value at step j, continued through this problem.

For a model whose latents stand in for CoT steps (Coconut, step supervision, pause: latents
forced after the prompt, ``latents_per_step`` per step), latent step ``j`` is the last latent of
step ``j``. If it holds the value that step reaches, giving it the donor's latent should make the
answer what the problem would give had step ``j`` reached the donor's value
(:func:`lensing.tasks.continue_from`); if the model ignores it, the answer stays the clean one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from lensing.interventions.generation import Intervention, fed_latents, generate_problems
from lensing.interventions.stats import DEFAULT_RESAMPLES, bootstrap_ci
from lensing.model import LatentLM
from lensing.tasks import Problem, answer_text, continue_from
from lensing.tasks import get as get_task


@dataclass
class StepSwapResult:
    """One row per (problem, swapped step) in ``examples``; :meth:`to_dataframe` summarises.

    ``examples`` columns: ``problem`` (index), ``steps``, ``step`` (the CoT step whose latent was
    swapped, or ``"all"``), ``donor``, ``answer``, ``clean_answer``, ``gold``, ``counterfactual``
    (the answer if the latent carried the donor's value), ``follows`` (answer == counterfactual),
    ``keeps`` (answer == clean answer) and ``correct``. Only pairs whose values at that step differ
    are kept, so ``follows`` and ``keeps`` cannot both hold.
    """

    model: str
    examples: pd.DataFrame
    level: float = 0.95
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0

    def to_dataframe(self) -> pd.DataFrame:
        """Per step (and ``all``), over difficulties: n, and follows / keeps / correct with CIs."""
        rows = []
        for step, group in self.examples.groupby(self.examples["step"].astype(str), sort=False):
            row = {"model": self.model, "step": step, "n": len(group)}
            for column in ("follows", "keeps", "correct"):
                mean, lo, hi = bootstrap_ci(
                    group[column].to_numpy(float), self.level, self.resamples, self.seed
                )
                row |= {column: mean, f"{column}_low": lo, f"{column}_high": hi}
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        """Share of answers following the donor vs keeping the clean answer, per swapped step."""
        table = self.to_dataframe()
        fig = go.Figure()
        for column, name in (("follows", "follows the donor's step"), ("keeps", "keeps the clean answer")):
            fig.add_bar(
                x=table["step"],
                y=table[column],
                name=name,
                error_y={
                    "type": "data",
                    "array": table[f"{column}_high"] - table[column],
                    "arrayminus": table[column] - table[f"{column}_low"],
                },
            )
        fig.update_layout(
            title=f"{self.model}: swapping one latent step between problems",
            xaxis_title="CoT step whose latent is swapped (0-based)",
            yaxis_title=f"share of answers ({int(self.level * 100)}% CI)",
            yaxis_range=[0, 1.05],
            barmode="group",
        )
        return fig


def step_swaps(
    lm: LatentLM,
    problems: Sequence[Problem],
    *,
    model: str = "model",
    seed: int = 0,
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    batch_size: int = 200,
    max_new_tokens: int = 160,
) -> StepSwapResult:
    """Swaps each latent step (and all of them at once) within random same-difficulty pairs.

    Raises ValueError for models that decide themselves when to think (their latents do not
    stand for given steps) and for tasks without ``continue_from``.
    """
    problems = list(problems)
    if not problems:
        raise ValueError("no problems given: pass at least one")
    inference = lm.meta.get("inference", {})
    per_step = inference.get("latents_per_step")
    if not per_step:
        raise ValueError(
            f"{model} places its own latents (no latents_per_step in its checkpoint), so its latent steps "
            "do not stand for CoT steps; step swaps need a Coconut / stepsup / pause / codi model"
        )
    cap = inference.get("max_latent_steps") or max(p.steps for p in problems)
    task = get_task(problems[0].task)
    if continue_from(task, problems[0], 0, str(problems[0].intermediates[0])) is None:
        raise ValueError(f"task {task.name!r} has no continue_from, so a swapped step has no predicted answer")
    rng = random.Random(seed)
    by_steps: dict[int, list[int]] = {}
    for i, p in enumerate(problems):
        by_steps.setdefault(p.steps, []).append(i)
    pairs = []
    for group in by_steps.values():
        rng.shuffle(group)
        pairs += [(group[i], group[i + 1]) for i in range(0, len(group) - 1, 2)]
    donor = dict(pairs) | {b: a for a, b in pairs}
    clean, _ = generate_problems(lm, problems, batch_size=batch_size, max_new_tokens=max_new_tokens)
    source = [fed_latents(t) for t in clean]
    answers = lambda traces: [answer_text(t.text()) for t in traces]  # noqa: E731
    clean_answers = answers(clean)
    rows = []
    latent_steps = min(cap, max(p.steps for p in problems))
    for step in [*range(latent_steps), "all"]:
        index = "all" if step == "all" else (step + 1) * per_step - 1
        traces, replaced = generate_problems(
            lm, problems, Intervention("swap", step=index, pairs=tuple(pairs)), source, batch_size, max_new_tokens
        )
        for i, (answer, n) in enumerate(zip(answers(traces), replaced, strict=True)):
            p = problems[i]
            j = min(p.steps, cap) - 1 if step == "all" else step
            if i not in donor or n == 0 or j >= min(p.steps, cap):
                continue
            theirs = problems[donor[i]].intermediates[j]
            if str(theirs) == str(p.intermediates[j]):
                continue
            counterfactual = str(continue_from(task, p, j, str(theirs)))
            rows.append(
                {
                    "problem": i,
                    "steps": p.steps,
                    "step": step,
                    "donor": donor[i],
                    "answer": answer,
                    "clean_answer": clean_answers[i],
                    "gold": str(p.answer),
                    "counterfactual": counterfactual,
                    "follows": answer == counterfactual,
                    "keeps": answer == clean_answers[i],
                    "correct": task.check(traces[i].text(), p),
                }
            )
    if not rows:
        raise ValueError("no swappable pairs: give at least two problems of one difficulty")
    return StepSwapResult(model, pd.DataFrame(rows), level, resamples, seed)
