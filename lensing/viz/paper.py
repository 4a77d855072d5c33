"""`lensing figures`: every paper figure from the bundled models, as static files, HTML, CSV and an index.

Each figure is built from result objects (their ``.plot()`` or a figure builder here), written in
every requested format, with the numbers behind it as CSV and a caption that states the key
number in ``figures/README.md``.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from lensing.viz.results import accuracy_facts, collect_facts, overall_accuracy_sentence, wilson_interval
from lensing.viz.style import VARIANT_COLORS, apply_style, model_curve

STATIC_FORMATS = ("png", "svg", "pdf")
FORCED_LATENTS = 6
LOGIT_LENS_POSITIONS = 72  # the logit-lens window: long enough for the bundled traces' generated part
MANIFEST = ".lensing-figures.json"
FIGURE_NAMES = (
    "accuracy_by_difficulty",
    "latents_vs_difficulty",
    "entropy_and_latent_attention",
    "latent_pca_and_collapse",
    "distribution_mismatch",
    "logit_lens",
    "latent_decoding",
    "attention",
    "residual_decomposition",
    "trails_step_cosine",
    "trails_structure_ratio",
    "headline_latent_shuffle",
)
VARIANTS = ("cot", "hidden", "lt")


@dataclass
class Figure:
    """One output: the plotly figure, the numbers behind it and its caption."""

    name: str
    figure: go.Figure
    data: pd.DataFrame
    caption: str


def _mean_se(values: list[list[float]], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard error and count per index over ragged sequences."""
    mean, se, count = np.full(length, np.nan), np.full(length, np.nan), np.zeros(length, dtype=int)
    for i in range(length):
        column = np.array([v[i] for v in values if len(v) > i])
        count[i] = len(column)
        if len(column):
            mean[i] = column.mean()
            se[i] = column.std(ddof=1) / np.sqrt(len(column)) if len(column) > 1 else 0.0
    return mean, se, count


# ------------------------------------------------------------------ figure builders
def accuracy_figure(evals: dict) -> Figure:
    """Accuracy by difficulty with 95% Wilson intervals; the caption's overall numbers are the
    README accuracy block's (one function, :func:`lensing.viz.results.overall_accuracy_sentence`)."""
    accuracy, _, n_per_difficulty = accuracy_facts(evals)
    rows = []
    for variant, result in evals.items():
        for r in result.to_dataframe().to_dict(orient="records"):
            low, high = wilson_interval(round(r["accuracy"] * r["n"] / 100), r["n"])
            rows.append({"variant": variant, **r, "ci_low": low, "ci_high": high})
    df = pd.DataFrame(rows)
    fig = go.Figure()
    for variant in evals:
        part = df[(df.variant == variant) & (df.steps != "all")]
        fig.add_trace(
            go.Bar(
                x=part.steps,
                y=part.accuracy,
                name=f"arith-tiny:{variant}",
                marker_color=VARIANT_COLORS[variant],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": part.ci_high - part.accuracy,
                    "arrayminus": part.accuracy - part.ci_low,
                    "color": "#333333",
                    "thickness": 1.2,
                    "width": 3,
                },
            )
        )
    fig.update_layout(
        barmode="group",
        xaxis_title="reasoning steps (difficulty)",
        yaxis_title="test accuracy (%)",
        yaxis_range=[0, 105],
    )
    caption = (
        f"Greedy test accuracy by number of steps for the three stages, {n_per_difficulty} test problems per "
        "difficulty (error bars: 95% Wilson intervals). " + overall_accuracy_sentence(accuracy, n_per_difficulty)
    )
    return Figure("accuracy_by_difficulty", apply_style(fig, 880, 340), df, caption)


def latents_figure(evals: dict) -> Figure:
    rows = [{"variant": v, **r} for v, res in evals.items() for r in res.to_dataframe().to_dict(orient="records")]
    df = pd.DataFrame(rows)
    df = df[(df.steps != "all") & (df.variant != "cot")]
    fig = go.Figure()
    for variant in ("hidden", "lt"):
        part = df[df.variant == variant]
        fig.add_trace(model_curve(part.steps.astype(int), part.mean_latents, f"arith-tiny:{variant}", True))
    fig.update_layout(xaxis_title="reasoning steps (difficulty)", yaxis_title="mean <thinking> tokens per problem")
    lt = df[df.variant == "lt"].set_index("steps").mean_latents
    grows = bool(np.all(np.diff(lt.values) >= -1e-9))
    caption = (
        f"Paper Fig. 3 analogue: latents emitted per problem by :lt grow from {lt.iloc[0]:.2f} (1 step) to "
        f"{lt.iloc[-1]:.2f} (6 steps); {'monotonically' if grows else 'not monotonically'}."
    )
    return Figure("latents_vs_difficulty", apply_style(fig), df, caption)


def entropy_attention_figure(traces: dict, probes: dict) -> Figure:
    fig = make_subplots(
        1, 2, subplot_titles=("next-token entropy", "last-layer attention share on latents"), horizontal_spacing=0.14
    )
    rows = []
    length = 60
    for variant in ("cot", "lt"):
        gen = [t.entropy[t.prompt_length :].tolist() for t in traces[variant]]
        shares = probes[variant].attention(traces[variant]).share_on("latent", layer=-1)
        share = [s[t.prompt_length :].tolist() for s, t in zip(shares, traces[variant], strict=True)]
        for col, values in ((1, gen), (2, share)):
            mean, se, count = _mean_se(values, length)
            x = np.arange(1, length + 1)
            keep = count >= 10
            color = VARIANT_COLORS[variant]
            fig.add_trace(
                go.Scatter(
                    x=np.r_[x[keep], x[keep][::-1]],
                    y=np.r_[(mean + se)[keep], (mean - se)[keep][::-1]],
                    fill="toself",
                    line={"width": 0},
                    fillcolor=color,
                    opacity=0.25,
                    showlegend=False,
                    hoverinfo="skip",
                ),
                1,
                col,
            )
            fig.add_trace(
                go.Scatter(
                    x=x[keep],
                    y=mean[keep],
                    mode="lines",
                    name=f"arith-tiny:{variant}",
                    line={"color": color},
                    showlegend=col == 1,
                ),
                1,
                col,
            )
            rows += [
                {
                    "variant": variant,
                    "panel": "entropy" if col == 1 else "latent_share",
                    "position": int(i),
                    "mean": m,
                    "se": s,
                    "n": int(c),
                }
                for i, m, s, c in zip(x, mean, se, count, strict=True)
            ]
    fig.update_xaxes(title="generated position")
    df = pd.DataFrame(rows)
    lt_share = df[(df.variant == "lt") & (df.panel == "latent_share") & (df.n >= 10)]["mean"]
    caption = (
        f"Paper Fig. 4 analogue over {len(traces['lt'])} test problems (mean ± s.e.): per-position entropy, "
        f"and the head-averaged last-layer attention share on <thinking> positions (:lt peak "
        f"{lt_share.max():.3f})."
    )
    return Figure("entropy_and_latent_attention", apply_style(fig, 880, 340), df, caption)


def _padded_range(values: np.ndarray, pad: float = 0.06) -> list[float]:
    low, high = float(np.min(values)), float(np.max(values))
    margin = pad * (high - low) or 1.0
    return [low - margin, high + margin]


def pca_collapse_figure(chains: dict, report, steps: tuple[int, ...] = (1, 3, 4, 6)) -> Figure:
    """Paper Fig. 5 in numbers and pictures: PCA of latent inputs at ``steps``, with collapse curves.

    Each row (one variant) has one PCA basis, fitted on every step of that variant's chains, and its
    step panels share one x range and one y range (set explicitly, so no panel autoscales); the
    two rows have different bases and ranges.
    """
    variants = list(chains)
    titles = []
    for v, right in zip(variants, ("effective rank", "cross-sample cosine"), strict=True):
        titles += [f":{v.split(':')[-1]} step {s}" for s in steps] + [right]
    fig = make_subplots(2, len(steps) + 1, subplot_titles=titles, horizontal_spacing=0.06, vertical_spacing=0.2)
    rows, explained = [], {}
    for r, variant in enumerate(variants):
        x = chains[variant]  # [n, steps, d]
        flat = x.reshape(-1, x.shape[-1]).double()
        centred = flat - flat.mean(0)
        _, sv, v = torch.linalg.svd(centred, full_matrices=False)
        share = (sv**2 / (sv**2).sum()).numpy()
        explained[variant] = share[:2]
        proj = (centred @ v[:2].T).reshape(x.shape[0], x.shape[1], 2).numpy()
        shown = proj[:, [s - 1 for s in steps]]
        x_range, y_range = _padded_range(shown[..., 0]), _padded_range(shown[..., 1])
        for c, step in enumerate(steps):
            p = proj[:, step - 1]
            fig.add_trace(
                go.Scatter(
                    x=p[:, 0],
                    y=p[:, 1],
                    mode="markers",
                    showlegend=False,
                    marker={"size": 5, "color": VARIANT_COLORS[variant]},
                ),
                r + 1,
                c + 1,
            )
            fig.update_xaxes(range=x_range, row=r + 1, col=c + 1)
            fig.update_yaxes(range=y_range, showticklabels=c == 0, row=r + 1, col=c + 1)
            rows += [
                {"variant": variant, "step": step, "sample": i, "pc1": float(a), "pc2": float(b)}
                for i, (a, b) in enumerate(p.tolist())
            ]
        name = variant.split(":")[-1]
        fig.update_xaxes(title=f"PC1 of :{name} ({100 * share[0]:.0f}%)", row=r + 1, col=1)
        fig.update_yaxes(title=f"PC2 of :{name} ({100 * share[1]:.0f}%)", row=r + 1, col=1)
    eff = report.compare("effective_rank")
    cos = report.compare("mean_cosine")
    for r, table in enumerate((eff, cos)):
        for model in table.columns:
            fig.add_trace(model_curve(table.index, table[model], model, r == 0), r + 1, len(steps) + 1)
    fig.update_xaxes(title="latent step", row=2, col=len(steps) + 1)
    e6 = eff.loc[eff.index.max()]
    c6 = cos.loc[cos.index.max()]
    n_steps = chains[variants[0]].shape[1]
    caption = (
        f"Paper Fig. 5 with numbers: PCA of the latent input vectors of {chains[variants[0]].shape[0]} test "
        f"problems under a forced chain of {n_steps} latents, one basis per row fitted on all {n_steps} steps of "
        "that variant (PC1/PC2 explain "
        + ", ".join(f"{100 * a:.0f}%/{100 * b:.0f}% for :{v.split(':')[-1]}" for v, (a, b) in explained.items())
        + "); the step panels of a row share one x and one y range, the two rows do not. Right: cross-sample "
        f"effective rank / cosine by step. At step {eff.index.max()}: effective rank "
        + ", ".join(f"{m} {e6[m]:.2f}" for m in e6.index)
        + "; cosine "
        + ", ".join(f"{m} {c6[m]:.3f}" for m in c6.index)
        + "."
    )
    return Figure("latent_pca_and_collapse", apply_style(fig, 1300, 600), pd.DataFrame(rows), caption)


def mismatch_figure(report) -> Figure:
    df = report.table[report.table.layer == "embed"]
    fig = make_subplots(
        1,
        3,
        subplot_titles=("Fréchet distance to tokens", "norm ratio to tokens", "cosine to nearest token"),
        horizontal_spacing=0.1,
    )
    for c, metric in enumerate(("frechet_to_tokens", "norm_ratio", "nearest_token_cosine")):
        for model, part in df.groupby("model", sort=False):
            fig.add_trace(model_curve(part.step, part[metric], model, c == 0), 1, c + 1)
    fig.update_xaxes(title="latent step")
    f = df.groupby("model", sort=False).frechet_to_tokens.mean()
    caption = (
        f"Distribution mismatch against the token-embedding cloud of the latent input vectors of {int(df.n.max())} "
        f"test problems under a forced chain of {int(df.step.max())} latents. Mean Fréchet distance over steps: "
        + ", ".join(f"{m} {v:.2f}" for m, v in f.items())
        + "."
    )
    return Figure("distribution_mismatch", apply_style(fig, 880, 320), df, caption)


def logit_lens_figure(lens, decoding, max_positions: int = LOGIT_LENS_POSITIONS) -> Figure:
    """Logit lens on trace 0, windowed (:meth:`LogitLensResult.window`) so that every latent it can and
    the whole answer are shown; the caption names the window and the answer."""
    cols = lens.window(0, max_positions)
    fig = lens.plot(trace=0, value="target_prob", max_positions=max_positions)
    fig.update_layout(width=min(1400, max(880, 18 * len(cols) + 200)), height=360)
    df = lens.to_dataframe()
    df = df[df.trace == 0]
    every = [i for i, t in enumerate(lens.trace_index) if t == 0]
    answer = "".join(lens.token[i] for i in every if lens.kind[i] == "answer" and lens.token[i].isdigit())
    latents = [i for i in every if lens.kind[i] == "latent"]
    shown_latents = sum(i in cols for i in latents)
    final = df[df.layer == df.layer.max()]
    if cols[0] == every[0]:
        start = "the whole trace"
    elif lens.kind[cols[0]] == "prompt":
        start = "from the last prompt token"
    else:
        start = f"from position {lens.position[cols[0]]}"
    decoded = len(decoding.to_dataframe().query("trace == 0")) // max(1, df.layer.max() + 1)
    caption = (
        f"Logit lens on one :lt trace (layers x positions, ◆ = latent, cell text = top-1 token, colour = "
        f"probability of the next gold token), positions {lens.position[cols[0]]}-{lens.position[cols[-1]]} of "
        f"{len(every)} ({start} through the answer {answer!r}), showing {shown_latents} of its {len(latents)} "
        f"latents. Mean prediction depth {final.prediction_depth.mean():.2f} of {df.layer.max()} layers over "
        f"the whole trace; {decoded} latent(s) decoded."
    )
    return Figure("logit_lens", fig, df, caption)


def latent_decoding_figure(decoding) -> Figure:
    df = decoding.to_dataframe()
    last = df[df.layer == df.layer.max()]
    digit = last.top1.str.fullmatch(r"\d").mean() if len(last) else float("nan")
    shown = int(df.trace.iloc[0]) if len(df) else 0
    caption = (
        f"What latent positions decode to at each layer (Coconut's decoding of continuous thoughts), drawn for "
        f"the {int((last.trace == shown).sum())} latents of one :lt trace; over the {len(last)} latents of "
        f"{last.trace.nunique()} traces, {100 * digit:.0f}% decode to a digit at the last layer."
    )
    return Figure("latent_decoding", decoding.plot(trace=shown), df, caption)


def attention_figure(attn, trace_index: int) -> Figure:
    df = attn.segment_shares()
    last = df[(df.layer == df.layer.max()) & (df.query_kind == "answer") & (df.key_kind == "latent")]
    share = float(last.share.iloc[0]) if len(last) else float("nan")
    n = len(attn.patterns)
    caption = (
        f"Left: head-averaged last-layer attention on one :lt trace (latent rows/columns dotted). Right: the share "
        f"of each query segment's attention that goes to each key segment, at the last layer, averaged over the "
        f"query positions of {n} :lt traces; answer → latent share: {share:.3f}."
    )
    fig = attn.plot(trace=trace_index)
    fig.for_each_annotation(
        lambda a: a.update(text=f"share by segment ({n} traces)") if a.text == "share by segment" else None
    )
    return Figure("attention", fig, df, caption)


def decomposition_figure(parts) -> Figure:
    """Direct logit attribution to the first answer digit of the first trace in ``parts`` (next-token
    targets): read at the position just before that digit, the one that predicts it."""
    column = parts.answer_digit_column(digit=0)
    if column is None:
        raise ValueError("no selected position predicts the first answer digit (decompose with positions='answer')")
    answer = "".join(parts.target_tokens[c] for c in parts.answer_digit_columns())
    df = parts.to_dataframe()
    df = df[(df.trace == parts.trace_index[column]) & (df.position == parts.position[column])]
    by_part = df[df.type != "head"].set_index("part").dla
    top = by_part.abs().idxmax()
    head = df[df.type == "head"].set_index("part").dla
    top_head = head.abs().idxmax()
    caption = (
        f"Direct logit attribution to the first answer digit {parts.target_tokens[column]!r} (answer {answer!r}) of "
        f"one :lt trace, read at position {parts.position[column]} ({parts.token[column]!r}), the position that "
        f"predicts it, by part and by head. The parts sum to {by_part.sum():.2f}, the digit's logit "
        f"{float(parts.logit[column]):.2f}; the largest is {top} ({by_part[top]:.2f}), the largest head "
        f"{top_head} ({head[top_head]:.2f})."
    )
    return Figure("residual_decomposition", parts.plot(column=column), df, caption)


def trails_step_figure(report) -> Figure:
    """Structure x structure step-direction similarity of chain trails, one heatmap per layer."""
    fig = report.plot_step_similarity()
    t = report.table.set_index("layer")
    layers = [label for label in t.index if pd.notna(t.chain_ratio[label])]
    df = pd.concat(
        [
            report.step_similarity(label)
            .rename_axis("structure_a")
            .reset_index()
            .melt(id_vars="structure_a", var_name="structure_b", value_name="mean_cosine")
            .assign(layer=label)
            for label in layers
        ],
        ignore_index=True,
    )[["layer", "structure_a", "structure_b", "mean_cosine"]]
    steps = len(report.chain_trails[0])
    caption = (
        f"Chain trails of {len(report.structures)} {steps}-step problems ({len(set(report.structures))} structures "
        f"= sign patterns of the steps): the residual at the newline ending each CoT line, i.e. at visible text, "
        f"no latents. Each cell is the mean centred cosine between two problems' step vectors (consecutive "
        f"differences), by pair of structures; the diagonal is within-structure. Over all pairs of problems, "
        f"within vs between: "
        + ", ".join(
            f"{label} {t.chain_within[label]:.2f} vs {t.chain_between[label]:.2f} (distance ratio "
            f"{t.chain_ratio[label]:.2f})"
            for label in layers
        )
        + "."
    )
    return Figure("trails_step_cosine", fig, df, caption)


def trails_ratio_figure(report) -> Figure:
    t = report.table
    best = t.loc[t.depth_ratio.idxmin()]
    caption = (
        f"Left: within/between-structure cosine distance of depth trails (prompt end) and chain trails (CoT "
        f"line ends) by layer (< 1: same-structure trails closer). Right: share of held-out problems whose nearest "
        f"depth trail in a library has the same structure, against a bag-of-tokens baseline "
        f"({t.baseline_capture_rate.iloc[0]:.2f}). Best depth ratio {best.depth_ratio:.3f} at {best.layer}, "
        f"capture {best.capture_rate:.2f}."
    )
    return Figure("trails_structure_ratio", report.plot(), t, caption)


def headline_figure(report) -> Figure:
    """Accuracy of every bundled variant clean and with its latents shuffled between problems."""
    return Figure("headline_latent_shuffle", report.plot(), report.to_dataframe(), " ".join(report.sentences()))


# ------------------------------------------------------------------ pipeline
@dataclass
class FigureRun:
    """The figures of one run, the headline facts (see :mod:`lensing.viz.results`) behind them, and
    the figures that failed (name -> one-line error). ``facts`` is None unless every analysis ran."""

    figures: list[Figure]
    facts: dict | None
    failed: dict[str, str] = field(default_factory=dict)


# which analysis builds each figure, and which analyses each analysis needs first
FIGURE_STEP = {
    "accuracy_by_difficulty": "eval",
    "latents_vs_difficulty": "eval",
    "entropy_and_latent_attention": "fig4",
    "latent_pca_and_collapse": "collapse",
    "distribution_mismatch": "collapse",
    "logit_lens": "probes",
    "latent_decoding": "probes",
    "attention": "probes",
    "residual_decomposition": "probes",
    "trails_step_cosine": "trails",
    "trails_structure_ratio": "trails",
    "headline_latent_shuffle": "headline",
}
STEP_NEEDS = {
    "eval": ("models",),
    "fig4": ("eval",),
    "probes": ("eval",),
    "collapse": (),
    "trails": (),
    "models": (),
    "headline": (),
}


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]


def build_figures(
    model: str = "arith-tiny",
    n_eval: int = 50,
    n_analysis: int = 120,
    n_trails: int = 160,
    n_headline: int = 120,
    log=print,
    only: list[str] | tuple[str, ...] | None = None,
) -> FigureRun:
    """Runs every analysis on the bundled variants: ``n_eval`` test problems per difficulty for the
    accuracy, ``n_analysis`` for the probes and the collapse study, ``n_trails`` three-step problems,
    ``n_headline`` test problems of its own task for each bundled model in the headline table.

    Every figure that can be built is: an analysis that fails loses only its own figures, and a
    figure whose builder fails loses only itself; failures are returned in ``FigureRun.failed``.
    ``only`` (figure names) runs just the analyses those figures need.
    """
    import lensing
    from lensing.studies import collapse_study, trails_study
    from lensing.tasks import make_splits
    from lensing.train import evaluate

    wanted = list(FIGURE_NAMES) if not only else list(only)
    unknown = [n for n in wanted if n not in FIGURE_STEP]
    if unknown:
        raise ValueError(f"unknown figure {unknown[0]!r}; available: {', '.join(FIGURE_NAMES)}")
    base = model.split(":")[0]
    state: dict = {"probes": {}}
    built: dict[str, Figure] = {}
    failed: dict[str, str] = {}

    def probe(variant: str):
        if variant not in state["probes"]:
            state["probes"][variant] = lensing.attach(lensing.load(f"{base}:{variant}"))
            state["probes"][variant].lm.eval()
        return state["probes"][variant]

    def analysis_problems():
        return make_splits(0, 0, -(-n_analysis // 6), seed=0).test[:n_analysis]

    def load_models():
        state["lms"] = {v: lensing.load(f"{base}:{v}") for v in VARIANTS}
        return {}

    def run_eval():
        problems = make_splits(0, 0, n_eval, seed=0).test
        state["evals"] = {v: evaluate(lm, problems) for v, lm in state["lms"].items()}
        return {
            "accuracy_by_difficulty": lambda: accuracy_figure(state["evals"]),
            "latents_vs_difficulty": lambda: latents_figure(state["evals"]),
        }

    def run_fig4():
        traces = {v: state["evals"][v].traces[: len(analysis_problems())] for v in ("cot", "lt")}
        probes = {v: probe(v) for v in ("cot", "lt")}
        return {"entropy_and_latent_attention": lambda: entropy_attention_figure(traces, probes)}

    def run_collapse():
        problems = analysis_problems()
        models = {f"{base}:hidden": lensing.load(f"{base}:hidden"), f"{base}:lt": lensing.load(f"{base}:lt")}
        report = collapse_study(models, problems, where="latent", force_latents=FORCED_LATENTS, probe_folds=0)
        chains = {}
        for name, lm in models.items():
            traces = lm.generate([p.prompt for p in problems[:20]], force_latents=FORCED_LATENTS)
            chains[name.split(":")[-1]] = torch.stack(
                [t.input_embeds[t.latent_positions[:FORCED_LATENTS]] for t in traces]
            )
        state["collapse"] = report
        return {
            "latent_pca_and_collapse": lambda: pca_collapse_figure(chains, report),
            "distribution_mismatch": lambda: mismatch_figure(report),
        }

    def run_probes():
        lt = probe("lt")
        traces = [t for t in state["evals"]["lt"].traces if t.n_latents][:8] or state["evals"]["lt"].traces[:8]
        results = lt.run(traces)
        return {
            "logit_lens": lambda: logit_lens_figure(results["logit_lens"], results["decode_latents"]),
            "latent_decoding": lambda: latent_decoding_figure(results["decode_latents"]),
            "attention": lambda: attention_figure(results["attention"], 0),
            "residual_decomposition": lambda: decomposition_figure(lt.decompose(traces[:1], positions="answer")),
        }

    def run_trails():
        problems = make_splits(0, 0, n_trails, seed=0, difficulties=(3,)).test
        report = trails_study(lensing.load(f"{base}:lt"), problems)
        state["trails"] = report
        return {
            "trails_step_cosine": lambda: trails_step_figure(report),
            "trails_structure_ratio": lambda: trails_ratio_figure(report),
        }

    def run_headline():
        from lensing.studies import headline
        from lensing.studies.records import bundled_variants

        names = sorted(bundled_variants(), key=lambda name: (name.split(":")[0], not name.endswith(":cot"), name))
        models = {name: lensing.load(name) for name in names}
        state["headline"] = headline(models, n=n_headline, log=lambda message: None)
        return {"headline_latent_shuffle": lambda: headline_figure(state["headline"])}

    steps = {
        "models": ("load models", load_models),
        "eval": ("accuracy and latents (eval)", run_eval),
        "fig4": ("entropy and attention (Fig. 4)", run_fig4),
        "collapse": ("collapse and mismatch (Fig. 5)", run_collapse),
        "probes": ("logit lens, attention, decomposition", run_probes),
        "trails": ("trails", run_trails),
        "headline": ("headline table (every bundled variant)", run_headline),
    }
    needed: list[str] = []

    def need(step: str) -> None:
        for before in STEP_NEEDS[step]:
            need(before)
        if step not in needed:
            needed.append(step)

    for name in wanted:
        need(FIGURE_STEP[name])
    if not only:  # the headline facts need these even if no figure did
        for step in ("eval", "collapse", "trails", "headline"):
            need(step)
    order = [s for s in steps if s in needed]
    step_error: dict[str, str] = {}
    for key in tqdm(order, desc="figures", unit="analysis", file=sys.stderr, disable=None):
        desc, fn = steps[key]
        broken = [b for b in STEP_NEEDS[key] if b in step_error]
        if broken:
            step_error[key] = f"needs {steps[broken[0]][0]}, which failed ({step_error[broken[0]]})"
            continue
        t0 = time.time()
        try:
            builders = fn()
        except Exception as err:  # noqa: BLE001 - one analysis failing must not lose the others' figures
            step_error[key] = _one_line(err)
            log(f"{desc}: FAILED after {time.time() - t0:.0f}s: {step_error[key]}")
            continue
        for name, build in builders.items():
            if name not in wanted:
                continue
            try:
                built[name] = build()
            except Exception as err:  # noqa: BLE001 - one figure failing must not lose the others
                failed[name] = _one_line(err)
        log(f"{desc}: {time.time() - t0:.0f}s")
    for name in wanted:
        if name not in built and name not in failed:
            failed[name] = step_error.get(FIGURE_STEP[name], "not built")
    facts = None
    if not only and not any(s in step_error for s in ("models", "eval", "collapse", "trails", "headline")):
        settings = {
            "n_eval": n_eval,
            "n_collapse": n_analysis,
            "n_trails": n_trails,
            "n_headline": n_headline,
            "forced_latents": FORCED_LATENTS,
        }
        facts = collect_facts(
            state["evals"],
            state["collapse"].table,
            state["trails"].table,
            len(state["trails"].chain_trails),
            settings,
            {v: lm.meta for v, lm in state["lms"].items()},
            state["headline"],
        )
    figures = [built[n] for n in FIGURE_NAMES if n in built]
    return FigureRun(figures, facts, {n: failed[n] for n in FIGURE_NAMES if n in failed})


PLOTLY_BUNDLE = "plotly.min.js"  # one copy per folder, shared by every figure's HTML page
MODEBAR_BAND = 34  # px above each HTML figure where plotly's modebar sits, clear of every title


def output_files(names: list[str] | tuple[str, ...], formats: tuple[str, ...]) -> list[str]:
    """The files a run writes for figures ``names`` in ``formats`` (unknown formats raise ValueError)."""
    unknown = set(formats) - {*STATIC_FORMATS, "html"}
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from png, svg, pdf, html")
    bundle = [PLOTLY_BUNDLE] if "html" in formats else []
    return [f"{n}.{ext}" for n in names for ext in ("csv", *formats)] + bundle + ["README.md", "results.json"]


def _manifest(out: Path) -> dict:
    """What an earlier `lensing figures` run recorded in ``out`` (files, captions); empty if nothing."""
    path = out / MANIFEST
    if not path.exists():
        return {"files": [], "captions": {}}
    try:
        record = json.loads(path.read_text())
        files = record["files"]
        captions = record.get("captions", {})
        if not isinstance(files, list) or not isinstance(captions, dict):
            raise TypeError("files must be a list and captions an object")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is corrupt ({err}); remove it if every file in {out} may be replaced") from err
    files = [f for f in files if isinstance(f, str) and "/" not in f]
    return {"files": files, "captions": {k: v for k, v in captions.items() if isinstance(v, str)}}


def _owned_files(out: Path) -> set[str]:
    """Files an earlier `lensing figures` run wrote into ``out`` (its manifest); empty if there is none."""
    return set(_manifest(out)["files"])


def figure_html(figure: Figure) -> str:
    """A small HTML page for one figure: it loads the folder's shared ``plotly.min.js`` (no network),
    keeps the modebar in a band above the plot so it covers no title, and shows the caption."""
    div = pio.to_html(
        figure.figure,
        include_plotlyjs=False,
        full_html=False,
        config={"displaylogo": False, "displayModeBar": True},
    )
    title = figure.name.replace("_", " ")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<script src="{PLOTLY_BUNDLE}"></script>
<style>
body{{font-family:"DejaVu Sans",Arial,sans-serif;margin:8px;color:#222}}
.figure{{display:inline-block;padding-top:{MODEBAR_BAND}px}}
.figure .modebar-container{{top:-{MODEBAR_BAND - 2}px !important}}
.caption{{max-width:880px;font-size:13px}}
</style></head><body>
<div class="figure">{div}</div>
<p class="caption">{html.escape(figure.caption)}</p>
</body></html>
"""


def _index(figures: dict[str, str], formats: tuple[str, ...], failed: dict[str, str]) -> str:
    """``README.md`` of the folder: one section per figure with its caption, then what is missing."""
    lines = ["# Figures", "", "Regenerated by `lensing figures` (`make figures`) from the bundled models.", ""]
    if "html" in formats:
        lines += [f"The HTML pages share one local `{PLOTLY_BUNDLE}` and work offline.", ""]
    for i, (name, caption) in enumerate(figures.items(), 1):
        links = ", ".join(f"[{fmt}]({name}.{fmt})" for fmt in formats)
        lines += [
            f"## {i}. {name}",
            "",
            f"![{name}]({name}.png)" if "png" in formats else "",
            "",
            caption,
            "",
            f"Files: {links}, [numbers]({name}.csv)",
            "",
        ]
    if failed:
        lines += ["## Failed in the last run", "", "Files an earlier run wrote for these figures are kept.", ""]
        lines += [f"- `{name}`: {error}" for name, error in failed.items()]
        lines += [""]
    lines += [
        "## Not included",
        "",
        "Paper Fig. 6 (accuracy by choice of the hidden-state layer I): no layer-choice variants are "
        "trained or bundled, so this figure is not produced.",
        "",
    ]
    return "\n".join(lines)


def check_output_folder(out: str | Path, files: list[str]) -> None:
    """Raises ValueError if writing ``files`` into ``out`` would replace a file lensing did not write."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir():
        owned = _owned_files(out)
        foreign = sorted(f for f in files if (out / f).exists() and f not in owned)
        if foreign:
            raise ValueError(
                f"{out} holds files lensing did not write and would replace: {', '.join(foreign)}; "
                "move them or choose another --out"
            )


def write_figures(
    figures: list[Figure],
    out: str | Path,
    formats: tuple[str, ...],
    facts: dict | None = None,
    keep: bool = False,
    failed: dict[str, str] | None = None,
) -> Path:
    """Writes every figure in every format plus CSV, README.md and (given ``facts``) results.json into ``out``.

    Only files lensing owns are touched: a manifest (``.lensing-figures.json``) records what each
    run wrote; a file of someone else's that a run would replace stops it before anything is
    written, and files of an earlier run that this one does not rewrite are removed, unless
    ``keep`` (a partial run: ``--only``, or some figures failed), which keeps them and their
    captions in the index. ``failed`` (name -> error) is listed in the index. HTML pages share
    one ``plotly.min.js`` written next to them. Everything is rendered into a temporary sibling
    folder first and renamed into place file by file.
    """
    out = Path(out)
    failed = dict(failed or {})
    files = output_files([f.name for f in figures], formats)
    if facts is None:
        files.remove("results.json")
    check_output_folder(out, files)
    earlier = _manifest(out) if out.is_dir() else {"files": [], "captions": {}}
    captions = {f.name: f.caption for f in figures}
    if keep:
        kept = {**{n: c for n, c in earlier["captions"].items() if n in FIGURE_NAMES}, **captions}
        captions = {n: kept[n] for n in FIGURE_NAMES if n in kept}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".figures.", dir=out.parent))
    try:
        static = [f for f in formats if f in STATIC_FORMATS]
        figs, paths = [], []
        if "html" in formats:
            from plotly.offline import get_plotlyjs

            (tmp / PLOTLY_BUNDLE).write_text(get_plotlyjs(), encoding="utf-8")
        for f in figures:
            f.data.to_csv(tmp / f"{f.name}.csv", index=False)
            if "html" in formats:
                (tmp / f"{f.name}.html").write_text(figure_html(f), encoding="utf-8")
            for fmt in static:
                figs.append(f.figure)
                paths.append(tmp / f"{f.name}.{fmt}")
        if figs:  # write_images ignores the layout size unless it is passed explicitly
            pio.write_images(
                figs,
                paths,
                width=[f.layout.width for f in figs],
                height=[f.layout.height for f in figs],
                scale=[2 if str(p).endswith(".png") else 1 for p in paths],
            )
        (tmp / "README.md").write_text(_index(captions, formats, failed))
        if facts is not None:
            (tmp / "results.json").write_text(
                json.dumps(facts, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
            )
        owned = sorted(set(files) | (set(earlier["files"]) if keep else set()))
        record = {"files": owned, "captions": captions}
        (tmp / MANIFEST).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        stale = set() if keep else set(earlier["files"]) - set(files)
        out.mkdir(exist_ok=True)
        for name in files:
            os.replace(tmp / name, out / name)
        for name in stale:
            (out / name).unlink(missing_ok=True)
        os.replace(tmp / MANIFEST, out / MANIFEST)  # last: the record of what is now there
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
