"""The README's headline: one row per task and bundled variant, every number with its 95% interval.

For each model, on ``n`` test problems of its own task (the split it was trained with):

- ``accuracy`` (%) with its Wilson interval, and ``latents`` per problem (bootstrap interval);
- on its *natural* latents (the ones it really runs with, see :func:`latent_states`), every
  latent of a trace pooled at the ``embed`` read-out (the vectors fed back): ``effective_rank``
  and ``mean_cosine`` (:func:`collapse_ci`; the variants of one task measured at one matched
  number of vectors per bootstrap draw, so their ranks compare);
- ``decoded``: how often a linear probe at the last layer names the value of the CoT step each
  latent stands for (its last character: a node letter, a ones digit), against ``decoded_shuffled``,
  the same probe trained on permuted labels (:func:`decodability`, folds split problems);
- ``shuffled``: accuracy when every latent is replaced by the same-position latent of another
  problem (:func:`lensing.interventions.intervene`), and ``drop``, clean minus shuffled, with its
  paired bootstrap interval. This ablation sits beside the geometry: a latent set can look
  spread out and still carry nothing the answer needs, or look collapsed and carry it.

A model without latents (written CoT) has accuracy only.

>>> report = HeadlineReport(pd.DataFrame([{"task": "t", "variant": "cot", "n": 10, "accuracy": 90.0,
...     "accuracy_low": 59.6, "accuracy_high": 98.2}]), {"n": 10})
>>> report.to_markdown().splitlines()[2]
'| t | `cot` | 90.0 [59.6, 98.2] | 0 | - | - | - | - | - | - |'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lensing.model import LatentLM
from lensing.studies.collapse import collapse_ci, latent_states
from lensing.studies.decoding import decodability
from lensing.studies.records import model_identity, task_problems
from lensing.viz.style import DOUBLE_COLUMN, OKABE_ITO, apply_style

# the numbers of one row that carry an interval: column -> (label, format)
INTERVAL_COLUMNS = {
    "accuracy": ("accuracy % [95% CI]", "{:.1f}"),
    "latents": ("latents per problem", "{:.2f}"),
    "effective_rank": ("eff. rank (natural, embed)", "{:.1f}"),
    "mean_cosine": ("mean cosine (natural, embed)", "{:.2f}"),
    "decoded": ("step value decoded (last layer)", "{:.2f}"),
    "decoded_shuffled": ("shuffled-label probe", "{:.2f}"),
    "shuffled": ("accuracy, latents shuffled %", "{:.1f}"),
    "drop": ("drop under shuffle (points)", "{:.1f}"),
}


def _cell(row: pd.Series, column: str, spec: str) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return spec.format(value)
    return f"{spec.format(value)} [{spec.format(low)}, {spec.format(high)}]"


@dataclass
class HeadlineReport:
    """``rows``: one per (task, variant) with ``n`` problems and the module docstring's numbers,
    each interval as ``<column>_low`` / ``<column>_high`` (NaN where a model has no latents)."""

    rows: pd.DataFrame
    settings: dict

    def to_dataframe(self) -> pd.DataFrame:
        return self.rows.copy()

    def to_markdown(self) -> str:
        """The README table: accuracy and latents, then geometry, decodability and the shuffle ablation."""
        head = ["task", "variant", *(label for label, _ in INTERVAL_COLUMNS.values())]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for _, row in self.rows.iterrows():
            cells = [str(row["task"]), f"`{row['variant']}`"]
            for column, (_, spec) in INTERVAL_COLUMNS.items():
                cells.append("0" if column == "latents" and not row.get("latents") else _cell(row, column, spec))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def sentences(self) -> list[str]:
        """What the table shows, in plain sentences computed from it: per task, which variants' answers
        need their latents, and whether the lower-rank latents carry less of each step's value."""
        out = []
        for task, group in self.rows.groupby("task", sort=False):
            latent = group[group["latents"].fillna(0) > 0]
            if latent.empty:
                continue
            needed = latent[latent["drop_low"] > 0]
            parts = [
                f"`{r.variant}` falls from {r.accuracy:.1f}% to {r.shuffled:.1f}% when its latents are shuffled"
                for r in needed.itertuples()
            ]
            parts += [
                f"`{r.variant}` keeps {r.shuffled:.1f}% of {r.accuracy:.1f}% (a drop the 95% interval cannot tell "
                "from zero)"
                for r in latent[latent["drop_low"] <= 0].itertuples()
            ]
            out.append(f"On {task}, " + "; ".join(parts) + ".")
            if len(latent) < 2:
                continue
            ranked = latent.sort_values("effective_rank")
            low, high = ranked.iloc[0], ranked.iloc[-1]
            apart = low["effective_rank_high"] < high["effective_rank_low"]
            decodes_less = low["decoded_high"] < high["decoded_low"]
            out.append(
                f"`{low.variant}`'s latents have the lower effective rank ({low.effective_rank:.1f} vs "
                f"{high.effective_rank:.1f} for `{high.variant}`, intervals {'apart' if apart else 'overlapping'}; "
                f"mean cosine {low.mean_cosine:.2f} vs {high.mean_cosine:.2f}), and a linear probe names the "
                f"step value from {low.decoded:.2f} vs {high.decoded:.2f} of them (shuffled-label probe "
                f"{low.decoded_shuffled:.2f} and {high.decoded_shuffled:.2f}): "
                + (
                    "here the lower rank goes with less sample-specific information, as the paper's reading of "
                    "collapse expects."
                    if decodes_less
                    else "the lower rank does not mean less sample-specific information, against the paper's "
                    "reading of rank as collapse."
                )
            )
        return out

    def plot(self) -> go.Figure:
        """Accuracy clean and with shuffled latents per variant, one panel per task, with 95% intervals."""
        tasks = list(dict.fromkeys(self.rows["task"]))
        fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, shared_yaxes=True)
        for col, task in enumerate(tasks, start=1):
            group = self.rows[self.rows["task"] == task]
            labels = [f":{v}" + ("" if n else " (no latents)") for v, n in zip(group.variant, group.latents)]
            for column, name, color in (("accuracy", "clean", "blue"), ("shuffled", "latents shuffled", "vermillion")):
                fig.add_bar(
                    x=labels,
                    y=group[column],
                    name=name,
                    marker_color=OKABE_ITO[color],
                    showlegend=col == 1,
                    legendgroup=name,
                    error_y={
                        "type": "data",
                        "array": (group[f"{column}_high"] - group[column]).fillna(0),
                        "arrayminus": (group[column] - group[f"{column}_low"]).fillna(0),
                    },
                    row=1,
                    col=col,
                )
        fig.update_yaxes(title_text="test accuracy, % (95% CI)", range=[0, 102], row=1, col=1)
        apply_style(fig, *DOUBLE_COLUMN, title="Accuracy with the model's own latents and with another problem's")
        legend = {"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.12, "yanchor": "top"}
        fig.update_layout(barmode="group", margin={"t": 70, "b": 80}, legend=legend)
        return fig


def _interval(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float, float]:
    from lensing.interventions.stats import bootstrap_ci

    return bootstrap_ci(values.astype(float), resamples=resamples, seed=seed)


def headline(
    models: dict[str, LatentLM],
    n: int = 80,
    folds: int = 5,
    resamples: int = 200,
    seed: int = 0,
    log=None,
) -> HeadlineReport:
    """The headline numbers (module docstring) of ``models`` (name -> model), ``n`` test problems each.

    Problems come from each model's own task and training data seed; ``seed`` seeds the probe
    folds, the shuffle donors and every bootstrap.
    """
    from lensing.interventions import intervene
    from lensing.train.evaluate import evaluate
    from lensing.viz.results import wilson_interval

    if not models:
        raise ValueError("headline needs at least one model")
    say = log or (lambda message: None)
    rows, sets = [], {}
    for name, lm in models.items():
        task, variant, _ = model_identity(lm, name)
        training = lm.meta.get("record", {}).get("training", {})
        problems = task_problems(task, n, training.get("data_seed", training.get("seed", 0)))
        say(f"{name}: evaluating on {len(problems)} {task} problems")
        result = evaluate(lm, problems)
        correct = int(sum(result.correct))
        low, high = wilson_interval(correct, len(problems))
        counts = np.array(result.n_latents, dtype=float)
        row = {"task": task, "variant": variant, "model": name, "n": len(problems)}
        row |= {"accuracy": 100 * correct / len(problems), "accuracy_low": low, "accuracy_high": high}
        if counts.sum() == 0:
            row["latents"] = 0.0
            rows.append(row)
            continue
        row |= dict(zip(("latents", "latents_low", "latents_high"), _interval(counts, resamples, seed), strict=True))
        say(f"{name}: natural latents, probes and the shuffle ablation")
        lset = latent_states(lm, problems, "natural", name=name, traces=result.traces)
        sets.setdefault(task, []).append((name, lm, lset))
        probe = decodability(
            lset, problems, targets=("intermediate",), labels=("last",), layers=[lset.layer_labels[-1]],
            max_step=0, folds=folds, resamples=resamples, seed=seed,
        ).table
        for metric, column in (("accuracy", "decoded"), ("shuffled", "decoded_shuffled")):
            hit = probe[(probe.metric == metric) & probe.step.isna()].iloc[0]
            row |= {column: hit.value, f"{column}_low": hit.ci_low, f"{column}_high": hit.ci_high}
        shuffled = intervene(lm, problems, "shuffle", clean=result.traces, resamples=resamples, seed=seed, model=name)
        acc, acc_low, acc_high = shuffled.ci("correct")
        drop, drop_low, drop_high = shuffled.ci("delta_correct")
        row |= {"shuffled": 100 * acc, "shuffled_low": 100 * acc_low, "shuffled_high": 100 * acc_high}
        row |= {"drop": -100 * drop, "drop_low": -100 * drop_high, "drop_high": -100 * drop_low}
        rows.append(row)
    for task, members in sets.items():
        embeddings = {name: lm.model.get_input_embeddings().weight for name, lm, _ in members}
        table = collapse_ci(
            [lset for _, _, lset in members], embeddings, layers=["embed"], max_step=0,
            resamples=resamples, seed=seed, h_only=False,
        )
        for row in rows:
            part = table[table.model == row["model"]]
            for metric in ("effective_rank", "mean_cosine"):
                hit = part[part.metric == metric]
                if len(hit):
                    hit = hit.iloc[0]
                    row |= {metric: hit.value, f"{metric}_low": hit.ci_low, f"{metric}_high": hit.ci_high}
    frame = pd.DataFrame(rows)
    for column in INTERVAL_COLUMNS:
        for suffix in ("", "_low", "_high"):
            if column + suffix not in frame:
                frame[column + suffix] = np.nan
    return HeadlineReport(frame, {"n": n, "folds": folds, "resamples": resamples, "seed": seed})
