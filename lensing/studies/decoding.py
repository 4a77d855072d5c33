"""Sample-specific information in latents: how well a linear probe recovers each problem's values.

The LT-Tuning paper calls collapse a loss of *sample-specific information*. Geometry (rank,
cosine) is only a proxy for it; this module measures it directly. For a :class:`LatentSet`
(natural or forced latents, every read-out layer) a standardised logistic regression is fitted
to recover, from each latent vector,

- ``target="intermediate"``: the value of the CoT step the latent stands for (natural latents:
  the CoT line it sits in; forced latents: step k for the k-th latent, Coconut's convention;
  a latent past the last line stands for the answer);
- ``target="answer"``: the problem's final answer.

Folds split *problems* (all latents of one problem are held out together), so a probe never
sees the problem it is scored on. Beside each accuracy sit two references computed on the same
folds: the same probe trained on labels permuted within the training split (what the probe
finds in vectors that carry no label information, ``shuffled``) and always predicting the
training split's most frequent label (``majority``). Every number has a percentile-bootstrap
interval over problems (a ratio of per-problem sums, so problems with several latents weigh by
their latents), drawn with the same problems for every metric of one cell (paired), and
``gain`` is accuracy minus the shuffled baseline with its paired interval.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lensing.studies.collapse import LatentSet
from lensing.tasks import Problem
from lensing.viz.style import OKABE_ITO, apply_style, model_color

TARGETS = ("intermediate", "answer")
# what of the value the probe must name: all of it, or its last character (the ones digit of a number;
# a one-character value such as a node letter is its own last character)
LABELS = {"value": lambda v: v, "last": lambda v: str(v)[-1]}
PROBE_METRICS = ("accuracy", "shuffled", "majority", "gain")
# metric names of the JSON records (``lensing collapse --json``): probe_<name>:<target>
RECORD_NAMES = {
    "accuracy": "probe_accuracy",
    "shuffled": "probe_baseline",
    "majority": "probe_majority",
    "gain": "probe_gain",
}


# ------------------------------------------------------------------ labels
def step_values(problem: Problem) -> list:
    """The value a latent standing for CoT step k carries (index k-1), the answer after the last step."""
    return [*problem.intermediates, problem.answer]


def latent_targets(
    lset: LatentSet, problems: list[Problem], target: str = "intermediate", label: str = "value"
) -> list[list]:
    """For each problem, the label of each of its latents (see the module docstring for the rule)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    part = LABELS[label]
    if len(problems) != len(lset.states):
        raise ValueError(f"{len(problems)} problems for a set of {len(lset.states)}: give the problems it was run on")
    out = []
    for i, problem in enumerate(problems):
        count = len(lset.states[i])
        if target == "answer":
            out.append([part(problem.answer)] * count)
            continue
        values = step_values(problem)
        out.append([part(values[min(k, len(values)) - 1]) for k in stand_for(lset, i)])
    return out


def stand_for(lset: LatentSet, i: int) -> list[int]:
    """The CoT step (1-based) each latent of problem ``i`` stands for: its line for natural latents
    (when the set knows them), its order otherwise."""
    count = len(lset.states[i])
    if lset.latents == "natural" and lset.lines:
        return list(lset.lines[i])
    return list(range(1, count + 1))


# ------------------------------------------------------------------ the probe
def problem_folds(groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Row indices of each test fold: the distinct problems in ``groups`` shuffled (seeded) and dealt
    into ``folds`` parts of nearly equal size.

    >>> [f.tolist() for f in problem_folds(np.array([0, 0, 1, 2, 3]), 2, seed=0)]
    [[0, 1, 3], [2, 4]]
    """
    problems = np.unique(groups)
    if len(problems) < folds:
        raise ValueError(f"{len(problems)} problems cannot fill {folds} folds")
    order = np.random.default_rng(seed).permutation(problems)
    return [np.flatnonzero(np.isin(groups, part)) for part in np.array_split(order, folds)]


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, max_iter: int) -> np.ndarray:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) == 1:
        return np.full(len(x_test), y_train[0])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():  # a probe on permuted labels need not converge; its accuracy is still what it is
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", "The number of unique classes", UserWarning)  # many labels, few rows
        return probe.fit(x_train, y_train).predict(x_test)


def held_out_hits(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    permutations: int = 1,
    max_iter: int = 500,
) -> dict[str, np.ndarray]:
    """Per row, whether the held-out prediction is right: ``accuracy`` (the probe), ``shuffled`` (the
    probe trained on training labels permuted with a seeded generator; the share of right
    predictions over ``permutations`` permutations, which steadies this baseline) and ``majority``
    (the training split's most frequent label; ties go to the smallest label id)."""
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    y = np.asarray(y)
    hits = {name: np.zeros(len(y)) for name in ("accuracy", "shuffled", "majority")}
    rng = np.random.default_rng(seed)
    for test in problem_folds(groups, folds, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        labels, counts = np.unique(y[train], return_counts=True)
        hits["majority"][test] = y[test] == labels[counts.argmax()]
        hits["accuracy"][test] = _fit_predict(x[train], y[train], x[test], max_iter) == y[test]
        for _ in range(permutations):
            shuffled = _fit_predict(x[train], rng.permutation(y[train]), x[test], max_iter)
            hits["shuffled"][test] += (shuffled == y[test]) / permutations
    return hits


def bootstrap_hits(
    hits: dict[str, np.ndarray], groups: np.ndarray, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """``(value, ci_low, ci_high)`` of each hit rate and of ``gain`` (accuracy - shuffled), over problems.

    Problems are resampled with replacement (the same draws for every metric); each draw's rate is
    its hits over its rows. ``value`` is the rate on all rows; an interval that misses it (possible
    for strongly skewed draws) is widened to include it.
    """
    from lensing.interventions.stats import bootstrap_indices

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    problems, inverse = np.unique(groups, return_inverse=True)
    rows = np.bincount(inverse, minlength=len(problems)).astype(float)
    per = {name: np.bincount(inverse, weights=h.astype(float), minlength=len(problems)) for name, h in hits.items()}
    per["gain"] = per["accuracy"] - per["shuffled"]
    draws = bootstrap_indices(len(problems), resamples, seed)
    denominator = rows[draws].sum(1)
    out = {}
    for name in PROBE_METRICS:
        value = float(per[name].sum() / rows.sum())
        lo, hi = np.quantile(per[name][draws].sum(1) / denominator, [(1 - level) / 2, (1 + level) / 2])
        out[name] = (value, min(float(lo), value), max(float(hi), value))
    return out


def decode_cell(
    x: np.ndarray,
    labels: list,
    groups: np.ndarray,
    folds: int = 5,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    permutations: int = 1,
) -> dict[str, tuple[float, float, float]]:
    """Probe accuracy, shuffled-label and majority baselines and gain, with CIs, for one set of rows.

    ``labels`` may be any hashable values (numbers, letters); ``groups`` names each row's problem;
    ``permutations`` is how many label permutations the shuffled baseline averages.

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 90)
    >>> x = np.eye(3)[y] + 0.1 * rng.normal(size=(90, 3))
    >>> cell = decode_cell(x, y.tolist(), np.arange(90), resamples=200)
    >>> cell["accuracy"][0], cell["shuffled"][0] < 0.6
    (1.0, True)
    """
    ids = {label: k for k, label in enumerate(dict.fromkeys(labels))}
    y = np.array([ids[label] for label in labels])
    hits = held_out_hits(np.asarray(x, dtype=np.float64), y, np.asarray(groups), folds, seed, permutations)
    return bootstrap_hits(hits, np.asarray(groups), resamples, level, seed)


# ------------------------------------------------------------------ the study
def record_metric(metric: str, target: str, label: str = "value") -> str:
    """The JSON record name of a probe metric.

    >>> record_metric("accuracy", "intermediate"), record_metric("shuffled", "answer", "last")
    ('probe_accuracy:intermediate', 'probe_baseline:answer_last')
    """
    return f"{RECORD_NAMES[metric]}:{target}" + ("" if label == "value" else f"_{label}")


@dataclass
class DecodingReport:
    """Long table: one row per (model, latents, target, label, step, layer, metric) with ``value``,
    ``ci_low``, ``ci_high``, ``n`` (latents), ``problems`` and ``classes`` (distinct labels).

    ``step`` is NaN where every latent of a trace is pooled, else the latent's order in the trace
    (``by="order"``) or the CoT line it sits in (``by="line"``); ``metric`` is one of
    :data:`PROBE_METRICS`.
    """

    table: pd.DataFrame

    def to_dataframe(self) -> pd.DataFrame:
        return self.table

    def _label(self, label: str | None) -> str:
        if label is None:
            return "value" if (self.table.label == "value").any() or self.table.empty else self.table.label.iloc[0]
        return label

    def compare(self, target: str = "intermediate", label: str | None = None, layer: str | None = None) -> pd.DataFrame:
        """Pooled steps: accuracy and both baselines with CIs, one row per (model, latents, layer);
        ``label`` defaults to ``"value"`` where the report has it."""
        label = self._label(label)
        t = self.table[(self.table.target == target) & (self.table.label == label) & self.table.step.isna()]
        if layer is not None:
            t = t[t.layer == layer]
        t = t.assign(
            cell=[f"{v:.2f} [{lo:.2f}, {hi:.2f}]" for v, lo, hi in zip(t.value, t.ci_low, t.ci_high, strict=True)]
        )
        return t.pivot_table(index=["model", "latents", "layer", "n"], columns="metric", values="cell", aggfunc="first")

    def plot(self, target: str = "intermediate", label: str | None = None) -> go.Figure:
        """Held-out accuracy by read-out layer (pooled steps), one panel per model and latent kind, with
        95% CI bars; the shuffled-label baseline dashed and the majority rate dotted. One y axis (0-1)
        shared by every panel."""
        label = self._label(label)
        t = self.table[(self.table.target == target) & (self.table.label == label) & self.table.step.isna()]
        panels = list(dict.fromkeys(zip(t.model, t.latents, strict=True)))
        if not panels:
            raise ValueError(f"no pooled rows for target {target!r} to plot")
        fig = make_subplots(
            1,
            len(panels),
            subplot_titles=[f"{m} ({k})" for m, k in panels],
            shared_yaxes=True,
            horizontal_spacing=0.04,
        )
        styles = {
            "accuracy": ("linear probe", None, "lines+markers"),
            "shuffled": ("shuffled-label probe", "dash", "lines+markers"),
            "majority": ("majority label", "dot", "lines"),
        }
        for c, (model, kind) in enumerate(panels, 1):
            part = t[(t.model == model) & (t.latents == kind)]
            for metric, (name, dash, mode) in styles.items():
                rows = part[part.metric == metric]
                color = model_color(model) if metric == "accuracy" else OKABE_ITO["grey"]
                fig.add_trace(
                    go.Scatter(
                        x=rows.layer,
                        y=rows.value,
                        error_y={
                            "type": "data",
                            "symmetric": False,
                            "array": rows.ci_high - rows.value,
                            "arrayminus": rows.value - rows.ci_low,
                        },
                        mode=mode,
                        name=name,
                        legendgroup=metric,
                        showlegend=c == 1,
                        line={"color": color, "dash": dash},
                    ),
                    1,
                    c,
                )
        fig.update_yaxes(range=[0, 1.02])
        named = target if label == "value" else f"{target}, {label} character"
        fig.update_yaxes(title=f"held-out accuracy ({named})", row=1, col=1)
        fig.update_xaxes(title="read-out layer")
        title = f"sample-specific information: the {named} decoded from each latent"
        return apply_style(fig, max(440, 280 * len(panels) + 120), 380, title).update_layout(margin={"t": 80})

    def records(self, task: str, variant: str, seed: int | None) -> list[dict]:
        """The rows as ``lensing collapse --json`` records (see :mod:`lensing.studies.records`);
        rows with a non-finite number are left out."""
        from lensing.studies.records import make_record

        made = (
            make_record(
                (task, variant, seed),
                row.latents,
                row.step,
                row.layer,
                record_metric(row.metric, row.target, row.label),
                row.value,
                row.ci_low,
                row.ci_high,
            )
            for row in self.table.itertuples(index=False)
        )
        return [r for r in made if r is not None]


def decodability(
    lset: LatentSet,
    problems: list[Problem],
    targets: tuple[str, ...] = TARGETS,
    labels: tuple[str, ...] = tuple(LABELS),
    layers: list[str] | None = None,
    by: str = "order",
    max_step: int = 6,
    min_problems: int = 10,
    folds: int = 5,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    permutations: int = 1,
) -> DecodingReport:
    """How well a linear probe recovers each problem's step values and answer from its latents.

    ``lset`` comes from :func:`lensing.studies.latent_states` on ``problems`` (natural or forced).
    Rows: every latent of a trace pooled (``step`` NaN, each latent labelled with the step it
    stands for), and each step 1..``max_step`` by the latent's order in the trace (``by="order"``)
    or by the CoT line it sits in (``by="line"``, natural latents), wherever at least
    ``min_problems`` problems (and ``folds`` of them) have such a latent. ``labels`` says what the
    probe names (:data:`LABELS`: the whole value, or its last character). ``layers`` defaults to
    every read-out layer of the set. Cells with fewer problems, or with one label only, are left out.
    ``permutations`` label permutations are averaged for the shuffled baseline (more: a steadier
    baseline, one more probe fit per fold each).
    """
    if by not in ("order", "line"):
        raise ValueError(f"by must be 'order' or 'line', got {by!r}")
    if by == "line" and not (lset.latents == "natural" and lset.lines):
        raise ValueError("by='line' needs natural latents whose CoT lines are known (latent_states records them)")
    layers = layers or list(lset.layer_labels)
    missing = [label for label in layers if label not in lset.layer_labels]
    if missing:
        raise ValueError(f"unknown layers {missing}; the set has {lset.layer_labels}")
    truth = {(t, lab): latent_targets(lset, problems, t, lab) for t in targets for lab in labels}
    # (problem, index of the latent within the problem, step key) for every latent
    where = []
    for i, states in enumerate(lset.states):
        keys = stand_for(lset, i) if by == "line" else range(1, len(states) + 1)
        where += [(i, j, k) for j, k in enumerate(keys)]
    cells: list[tuple[float, list[tuple[int, int]]]] = [(float("nan"), [(i, j) for i, j, _ in where])]
    for step in range(1, max_step + 1):
        cells.append((step, [(i, j) for i, j, k in where if k == step]))
    rows = []
    for step, members in cells:
        groups = np.array([i for i, _ in members])
        n_problems = len(np.unique(groups))
        if n_problems < max(min_problems, folds, 2):
            continue
        for label in layers:
            layer = lset.layer_labels.index(label)
            x = np.stack([lset.states[i][j, layer].numpy() for i, j in members])
            for (target, part), values in truth.items():
                y = [values[i][j] for i, j in members]
                classes = len(set(y))
                if classes < 2:
                    continue
                cell = decode_cell(x, y, groups, folds, resamples, level, seed, permutations)
                for metric in PROBE_METRICS:
                    value, lo, hi = cell[metric]
                    rows.append(
                        {
                            "model": lset.model,
                            "latents": lset.latents,
                            "target": target,
                            "label": part,
                            "by": by,
                            "step": step,
                            "layer": label,
                            "metric": metric,
                            "value": value,
                            "ci_low": lo,
                            "ci_high": hi,
                            "n": len(members),
                            "problems": n_problems,
                            "classes": classes,
                        }
                    )
    columns = ["model", "latents", "target", "label", "by", "step", "layer", "metric", "value", "ci_low", "ci_high"]
    return DecodingReport(pd.DataFrame(rows, columns=[*columns, "n", "problems", "classes"]))
