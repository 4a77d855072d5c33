"""Feature collapse and distribution mismatch of latent tokens, as numbers (the paper shows only a PCA).

For each model, every sample contributes one vector per (step, read-out layer): the k-th latent of
a chain (``where="latent"``; the ``embed`` read-out is the latent input vector itself) or the
residual at the end of the k-th CoT line (``where="text"``). Statistics accumulate in mergeable
moments (O(d^2) per step and layer, any number of traces) plus a bounded, seeded reservoir of
samples for the metrics that need pairs (distances, MMD, linear probes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from lensing.metrics import (
    MomentStats,
    latent_distance,
    mmd_rbf,
    nearest_token_cosine,
    probe_accuracy,
    vocab_distance,
)
from lensing.model import LatentLM, Trace
from lensing.tasks import Problem
from lensing.viz.style import apply_style, model_curve


def latent_anchors(trace: Trace) -> list[int]:
    """Positions of the trace's latents, in order (latent step 1, 2, ...)."""
    return trace.latent_positions


def text_anchors(trace: Trace) -> list[int]:
    """Positions of the newline that ends each CoT line (reasoning step 1, 2, ...)."""
    return [i for i, (k, t) in enumerate(zip(trace.kinds, trace.tokens, strict=True)) if k == "cot" and t == "\n"]


def cot_lines(trace: Trace, positions: list[int]) -> list[int]:
    """The CoT line (1-based) each position sits in: one plus the CoT newlines before it.

    A latent after the last CoT line (just before the answer) gets ``lines + 1``.
    """
    ends = text_anchors(trace)
    return [1 + sum(end < pos for end in ends) for pos in positions]


@dataclass
class CollapseAccumulator:
    """Streaming statistics per (step, layer): moments for every sample, a reservoir for pairwise metrics."""

    layer_labels: list[str]
    reservoir_size: int = 512
    seed: int = 0
    moments: dict = field(default_factory=dict)
    reservoir: dict = field(default_factory=dict)
    seen: dict = field(default_factory=dict)
    step_cos: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def add(self, states: Float[Tensor, "steps layer d_model"], labels: tuple[int, ...]) -> None:
        """One sample: its vector at each step and layer, and the labels a probe should decode."""
        self.add_many(states[None], [labels])

    def add_many(self, states: Float[Tensor, "n steps layer d_model"], labels: list[tuple[int, ...]]) -> None:
        """Samples with the same number of steps, in one vectorised update per (step, layer)."""
        states = states.double()
        for step in range(states.shape[1]):
            for layer, label in enumerate(self.layer_labels):
                key = (step + 1, label)
                v = states[:, step, layer]
                self.moments[key] = self.moments.get(key, MomentStats.empty(v.shape[1])).update(v)
                bucket = self.reservoir.setdefault(key, [])
                for row, lab in zip(v.float().unbind(0), labels, strict=True):
                    row = row.clone()  # a view would keep its whole batch alive
                    seen = self.seen[key] = self.seen.get(key, 0) + 1
                    if len(bucket) < self.reservoir_size:
                        bucket.append((row, lab))
                    else:
                        j = self._rng.randrange(seen)
                        if j < self.reservoir_size:
                            bucket[j] = (row, lab)
                if step > 0:
                    cos = torch.nn.functional.cosine_similarity(v, states[:, step - 1, layer], dim=-1)
                    total, count = self.step_cos.get(key, (0.0, 0))
                    self.step_cos[key] = (total + float(cos.sum()), count + len(cos))

    def merge(self, other: CollapseAccumulator) -> CollapseAccumulator:
        """Exact for the moment statistics and step cosines; reservoirs are concatenated then capped."""
        merged = CollapseAccumulator(self.layer_labels, self.reservoir_size, self.seed)
        for key in set(self.moments) | set(other.moments):
            parts = [a.moments[key] for a in (self, other) if key in a.moments]
            merged.moments[key] = parts[0] if len(parts) == 1 else parts[0].merge(parts[1])
            merged.seen[key] = self.seen.get(key, 0) + other.seen.get(key, 0)
            pooled = self.reservoir.get(key, []) + other.reservoir.get(key, [])
            merged.reservoir[key] = merged._rng.sample(pooled, min(len(pooled), self.reservoir_size))
            a, b = self.step_cos.get(key, (0.0, 0)), other.step_cos.get(key, (0.0, 0))
            if a[1] + b[1]:
                merged.step_cos[key] = (a[0] + b[0], a[1] + b[1])
        return merged

    def table(self, embeddings: Float[Tensor, "vocab d_model"], probe_folds: int = 5) -> pd.DataFrame:
        """Every metric per (step, layer). Distribution distances compare with the token-embedding cloud.

        ``probe_folds=0`` skips the linear probes (the slowest part: one logistic regression per fold).
        """
        emb = embeddings.detach().double()
        token_stats = MomentStats.empty(emb.shape[1]).update(emb)
        emb_sample = emb[torch.randperm(emb.shape[0], generator=torch.Generator().manual_seed(self.seed))[:2048]]
        token_norm = emb.norm(dim=-1).mean()
        rows = []
        for (step, layer), stats in sorted(
            self.moments.items(), key=lambda kv: (kv[0][0], self.layer_labels.index(kv[0][1]))
        ):
            sample = torch.stack([v for v, _ in self.reservoir[(step, layer)]]).double()
            row = {
                "step": step,
                "layer": layer,
                "n": stats.count,
                "effective_rank": float(stats.effective_rank()),
                "rankme": float(stats.rankme()),
                "participation_ratio": float(stats.participation_ratio()),
                "stable_rank": float(stats.stable_rank()),
                "mean_cosine": float(stats.mean_pairwise_cosine()) if stats.unit_count > 1 else float("nan"),
                "step_cosine": (
                    self.step_cos[(step, layer)][0] / self.step_cos[(step, layer)][1]
                    if (step, layer) in self.step_cos
                    else float("nan")
                ),
                "norm_ratio": float(stats.mean_norm() / token_norm),
                "frechet_to_tokens": float(stats.frechet_distance(token_stats)) if stats.count > 1 else float("nan"),
            }
            if len(sample) >= 2:
                row["latent_distance"] = float(latent_distance(sample))
                row["vocab_distance"] = float(vocab_distance(sample, emb))
                row["nearest_token_cosine"] = float(nearest_token_cosine(sample, emb).cosine.mean())
                try:
                    row["mmd_to_tokens"] = float(mmd_rbf(sample, emb_sample))
                except ValueError:  # all samples coincide: the median bandwidth is zero
                    row["mmd_to_tokens"] = float("nan")
            labels = [lab for _, lab in self.reservoir[(step, layer)]]
            for name, index in (("probe_first_result", 0), ("probe_answer", -1)):
                y = torch.tensor([lab[index] % 10 for lab in labels])
                if probe_folds and len(y) >= 2 * probe_folds and len(set(y.tolist())) > 1:
                    result = probe_accuracy(sample.float(), y, folds=probe_folds, seed=self.seed)
                    row[name], row[name + "_baseline"] = result.accuracy, result.baseline
            rows.append(row)
        return pd.DataFrame(rows)


@dataclass
class CollapseReport:
    """Collapse and mismatch metrics for several models, per step and read-out layer."""

    table: pd.DataFrame  # columns: model, where, step, layer, n, metrics...

    def to_dataframe(self) -> pd.DataFrame:
        return self.table

    def compare(self, metric: str, layer: str = "embed", where: str = "latent") -> pd.DataFrame:
        """One metric as a step x model table at one layer."""
        sub = self.table[(self.table.layer == layer) & (self.table["where"] == where)]
        return sub.pivot(index="step", columns="model", values=metric)

    def plot(self, layer: str = "embed", where: str = "latent") -> go.Figure:
        metrics = ["effective_rank", "mean_cosine", "latent_distance", "frechet_to_tokens"]
        titles = [
            "effective rank (higher = diverse)",
            "cross-sample cosine (1 = collapsed)",
            "latent distance",
            "Fréchet distance to token embeddings",
        ]
        fig = make_subplots(2, 2, subplot_titles=titles, vertical_spacing=0.16, horizontal_spacing=0.12)
        sub = self.table[(self.table.layer == layer) & (self.table["where"] == where)]
        for m, metric in enumerate(metrics):
            for model, part in sub.groupby("model", sort=False):
                fig.add_trace(model_curve(part.step, part[metric], model, m == 0), m // 2 + 1, m % 2 + 1)
        fig.update_xaxes(title=f"{where} step")
        return apply_style(fig, 880, 560, f"collapse metrics at layer '{layer}' ({where} positions)")


@torch.no_grad()
def collect(
    lm: LatentLM,
    problems: list[Problem],
    where: str = "latent",
    force_latents: int = 6,
    batch_size: int = 100,
    accumulator: CollapseAccumulator | None = None,
) -> CollapseAccumulator:
    """Generates for ``problems`` and adds every sample's anchor states to an accumulator.

    ``where="latent"`` forces a chain of ``force_latents`` latents after each prompt and reads
    them; ``where="text"`` generates normally and reads the end of each CoT line.
    """
    from lensing.probes import attach

    if where not in ("latent", "text"):
        raise ValueError(f"where must be 'latent' or 'text', got {where!r}")
    if not problems:
        raise ValueError("empty problem list: nothing to measure")
    probe = attach(lm)
    acc = accumulator or CollapseAccumulator(probe.layer_labels)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        traces = lm.generate(
            [p.prompt for p in chunk], max_new_tokens=160, force_latents=force_latents if where == "latent" else 0
        )
        _, cache, batch = probe.run_with_cache(traces, probe.resid_names())
        stack = probe.resid_stack(cache).cpu()  # [layer, batch, pos, d]
        for i, (trace, problem) in enumerate(zip(traces, chunk, strict=True)):
            anchors = (latent_anchors if where == "latent" else text_anchors)(trace)
            anchors = anchors[:force_latents] if where == "latent" else anchors
            if anchors:
                acc.add(stack[:, i, anchors].permute(1, 0, 2), problem.intermediates)
    return acc


def collapse_study(
    models: dict[str, LatentLM],
    problems: list[Problem],
    where: str = "latent",
    force_latents: int = 6,
    probe_folds: int = 5,
) -> CollapseReport:
    """The collapse table for several models on the same problems (``probe_folds=0``: no linear probes)."""
    frames = []
    for name, lm in models.items():
        acc = collect(lm, problems, where, force_latents)
        table = acc.table(lm.model.get_input_embeddings().weight, probe_folds)
        table.insert(0, "where", where)
        table.insert(0, "model", name)
        frames.append(table)
    return CollapseReport(pd.concat(frames, ignore_index=True))


# ---------------------------------------------------------------------------------------------
# Natural vs forced latents, with bootstrap confidence intervals over problems
# ---------------------------------------------------------------------------------------------

LATENT_KINDS = ("natural", "forced")
CI_METRICS = ("effective_rank", "mean_cosine", "frechet_to_tokens", "norm_ratio")


@dataclass
class LatentSet:
    """The latent vectors one model gives for each problem, at every read-out layer.

    ``states[i]`` is ``[n_i, layer, d_model]``: the i-th problem's latents in trace order
    (``latents="natural"``: every position generation marked latent, without forcing;
    ``"forced"``: the first ``force_latents`` of a chain forced right after the prompt;
    ``"text"``: the newline ending each CoT line, a non-latent reference). ``h`` and ``e_pred``
    hold the two fusion parts of each latent (empty for ``"text"``); ``alpha`` is the model's
    fusion weight (the latent input is ``alpha*h + (1-alpha)*e_pred`` in fusion mode).
    ``lines[i]`` gives, for each of those vectors, the CoT line it sits in (see :func:`cot_lines`;
    empty when unknown, e.g. for sets built by hand).
    """

    model: str
    latents: str
    layer_labels: list[str]
    states: list[Tensor]
    h: list[Tensor]
    e_pred: list[Tensor]
    mode: str
    alpha: float
    lines: list[list[int]] = field(default_factory=list)

    @property
    def counts(self) -> list[int]:
        return [len(s) for s in self.states]

    def rows(self, problems: list[int] | np.ndarray, layer: int, step: int | None = None) -> Tensor:
        """Stacked vectors of the given problems (repeats allowed) at one layer: all latents, or the ``step``-th."""
        if step is None:
            parts = [self.states[i][:, layer] for i in problems]
        else:
            parts = [self.states[i][step - 1 : step, layer] for i in problems]
        return torch.cat(parts) if parts else torch.zeros(0, self.states[0].shape[-1])


@torch.no_grad()
def latent_states(
    lm: LatentLM,
    problems: list[Problem],
    latents: str = "natural",
    force_latents: int = 6,
    batch_size: int = 100,
    max_new_tokens: int = 160,
    name: str = "model",
    traces: list[Trace] | None = None,
) -> LatentSet:
    """Runs ``lm`` on ``problems`` and keeps every problem's latent vectors at every layer (see :class:`LatentSet`).

    ``natural`` runs each model the way it reasons: a model that decides itself when to think
    (LT, CoT) generates without forcing and every ``trace.latent_positions`` is kept, each standing
    for the CoT line it sits in; a model trained with latents in place of CoT steps (Coconut,
    step supervision, pause) gets the latents its checkpoint prescribes for each problem
    (:func:`lensing.train.evaluate.forced_latents`), latent k standing for step k. ``forced``
    forces ``force_latents`` latents after the prompt (Coconut's "forcing k thoughts") and keeps
    those; ``text`` keeps the CoT line ends of a normal generation. ``traces``: this model's natural
    generations of ``problems`` when already made (e.g. by :func:`lensing.train.evaluate`), read
    instead of generating again.
    """
    from lensing.probes import attach
    from lensing.train.evaluate import forced_latents

    if latents not in (*LATENT_KINDS, "text"):
        raise ValueError(f"latents must be 'natural', 'forced' or 'text', got {latents!r}")
    if not problems:
        raise ValueError("empty problem list: nothing to measure")
    if traces is not None and (latents != "natural" or len(traces) != len(problems)):
        raise ValueError(f"traces are reused for natural latents only, one per problem ({len(problems)})")
    probe = attach(lm)
    rule = forced_latents(lm) if latents == "natural" else None
    counts = [rule(p) if rule else (force_latents if latents == "forced" else 0) for p in problems]
    out: list[tuple | None] = [None] * len(problems)  # (state, h, e_pred, lines) per problem, in input order
    for count in sorted(set(counts)):
        group = [i for i, c in enumerate(counts) if c == count]
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            prompts = [problems[i].prompt for i in chunk]
            batch = (
                [traces[i] for i in chunk]
                if traces is not None
                else lm.generate(prompts, max_new_tokens=max_new_tokens, force_latents=count)
            )
            _, cache, _ = probe.run_with_cache(batch, probe.resid_names())
            stack = probe.resid_stack(cache).cpu()  # [layer, batch, pos, d]
            for row, (i, trace) in enumerate(zip(chunk, batch, strict=True)):
                if latents == "text":
                    anchors = text_anchors(trace)
                    h = e = torch.zeros(0, stack.shape[-1])
                else:
                    anchors = trace.latent_positions[:count] if count else trace.latent_positions
                    h, e = trace.latent_h[: len(anchors)], trace.latent_pred[: len(anchors)]
                lines = list(range(1, len(anchors) + 1)) if rule else cot_lines(trace, anchors)
                state = stack[:, row, anchors].permute(1, 0, 2).double().clone()
                out[i] = (state, h.double().clone(), e.double().clone(), lines)
    states, hs, preds, lines = (list(column) for column in zip(*out, strict=True))
    return LatentSet(
        name, latents, probe.layer_labels, states, hs, preds, lm.config.mode, float(lm.config.alpha), lines
    )


def _ci_metrics(x: Tensor, token_stats: MomentStats, token_norm: Tensor) -> dict[str, float]:
    """The headline metrics of one set of rows (NaN where the set is too small)."""
    nan = float("nan")
    if len(x) < 2:
        return dict.fromkeys(CI_METRICS, nan)
    stats = MomentStats.empty(x.shape[1]).update(x)
    return {
        "effective_rank": float(stats.effective_rank()),
        "mean_cosine": float(stats.mean_pairwise_cosine()) if stats.unit_count > 1 else nan,
        "frechet_to_tokens": float(stats.frechet_distance(token_stats)),
        "norm_ratio": float(stats.mean_norm() / token_norm),
    }


def collapse_ci(
    sets: list[LatentSet],
    embeddings: Float[Tensor, "vocab d_model"] | dict[str, Tensor],
    layers: list[str] | None = None,
    max_step: int = 6,
    min_problems: int = 10,
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    h_only: bool = True,
    vectors: int | None = None,
) -> pd.DataFrame:
    """Long table of the headline collapse metrics at a matched sample size, with bootstrap CIs over problems.

    Rank and distribution metrics depend on how many vectors they see (with fewer vectors than
    dimensions the effective rank grows with the count), and a bootstrap resample that repeats a
    problem repeats its vectors, which lowers the rank. So every replicate draws problems with
    replacement (``bootstrap_indices``, the same draws for every set, so sets over the same
    problems are paired), keeps the distinct problems drawn, and measures a random subset of
    exactly ``vectors`` of their latents without repeats. ``vectors`` defaults, per step, to half
    the smallest count among ``sets`` (every set then compares at one size). ``value`` is the
    mean over replicates, ``ci_low``/``ci_high`` their ``level`` percentiles, ``value_all`` the
    metric on all vectors of the set (its own count, ``n``).

    One row per (model, latents, vector, step, layer, metric). ``step`` is NaN for every latent
    of a trace pooled, else the latent's order in the trace (1..``max_step``, kept where at least
    ``min_problems`` problems reach it in every set). ``vector="input"`` is the latent's
    read-out at each layer; with ``h_only`` fusion-mode sets also get ``vector="alpha*h"`` at
    ``embed``: the input the model would get with the ``e_pred`` part dropped (an ablation of
    the fusion). ``embeddings`` is one matrix or one per model name.
    """
    from lensing.interventions.stats import bootstrap_indices

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    counts = {id(s): np.array(s.counts) for s in sets}
    steps: list[int | None] = [None] + [
        k for k in range(1, max_step + 1) if all((c >= k).sum() >= min_problems for c in counts.values())
    ]
    rows = []
    for step in steps:
        sizes = [int(c.sum()) if step is None else int((c >= step).sum()) for c in counts.values()]
        size = vectors or max(2, min(sizes) // 2)
        for lset in sets:
            emb = embeddings[lset.model] if isinstance(embeddings, dict) else embeddings
            emb = emb.detach().double().cpu()
            token_stats = MomentStats.empty(emb.shape[1]).update(emb)
            token_norm = emb.norm(dim=-1).mean()
            labels = layers or lset.layer_labels
            kinds = [("input", lset.layer_labels.index(lab), lab) for lab in labels]
            if h_only and lset.mode == "fusion" and lset.latents != "text" and "embed" in labels:
                kinds.append(("alpha*h", None, "embed"))
            count = counts[id(lset)]
            have = np.flatnonzero(count >= (step or 1))
            if len(have) < 2:
                continue
            draws = have[bootstrap_indices(len(have), resamples, seed)]
            gen = torch.Generator().manual_seed(seed)
            picks = []  # the same distinct problems and row subset for every layer of one replicate
            for draw in draws:
                distinct = np.unique(draw)
                total = int(count[distinct].sum()) if step is None else len(distinct)
                picks.append((distinct, torch.randperm(total, generator=gen)[:size] if total >= size else None))
            for vector, layer, label in kinds:

                def rows_of(idx, layer=layer):
                    if layer is not None:
                        return lset.rows(idx, layer, step)
                    parts = [lset.h[i] if step is None else lset.h[i][step - 1 : step] for i in idx]
                    return lset.alpha * torch.cat(parts)

                everything = _ci_metrics(rows_of(have), token_stats, token_norm)
                boot = [
                    _ci_metrics(rows_of(distinct)[sub], token_stats, token_norm)
                    if sub is not None
                    else dict.fromkeys(CI_METRICS, float("nan"))
                    for distinct, sub in picks
                ]
                for metric in CI_METRICS:
                    values = np.array([b[metric] for b in boot])
                    finite = values[np.isfinite(values)]
                    value, lo, hi = (
                        (finite.mean(), *np.quantile(finite, [(1 - level) / 2, (1 + level) / 2]))
                        if len(finite)
                        else (np.nan, np.nan, np.nan)
                    )
                    rows.append(
                        {
                            "model": lset.model,
                            "latents": lset.latents,
                            "vector": vector,
                            "step": float("nan") if step is None else step,
                            "layer": label,
                            "metric": metric,
                            "value": float(value),
                            "ci_low": float(lo),
                            "ci_high": float(hi),
                            "vectors": size,
                            "value_all": everything[metric],
                            "n": int(count[have].sum()) if step is None else len(have),
                            "problems": len(have),
                        }
                    )
    return pd.DataFrame(rows)


def fusion_parts(lset: LatentSet, resamples: int = 2000, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Mean norms of the two fusion parts, ``|alpha*h|`` and ``|(1-alpha)*e_pred|``, over problems with latents.

    Each value is ``bootstrap_ci``'s ``(mean, lo, hi)`` of the per-problem mean norm, plus
    ``latents_per_problem`` over all problems.
    """
    from lensing.interventions.stats import bootstrap_ci

    have = [i for i, h in enumerate(lset.h) if len(h)]
    if not have:
        raise ValueError(f"{lset.model} ({lset.latents}) has no latents: no fusion parts to measure")
    h = np.array([float((lset.alpha * lset.h[i]).norm(dim=-1).mean()) for i in have])
    e = np.array([float(((1 - lset.alpha) * lset.e_pred[i]).norm(dim=-1).mean()) for i in have])
    return {
        "alpha_h_norm": bootstrap_ci(h, resamples=resamples, seed=seed),
        "pred_norm": bootstrap_ci(e, resamples=resamples, seed=seed),
        "latents_per_problem": bootstrap_ci(np.array(lset.counts, dtype=float), resamples=resamples, seed=seed),
    }


def natural_vs_forced(
    models: dict[str, LatentLM],
    problems: list[Problem],
    latents: str = "both",
    force_latents: int = 6,
    layers: list[str] | None = None,
    resamples: int = 200,
    seed: int = 0,
    text: bool = False,
) -> pd.DataFrame:
    """:func:`collapse_ci` for several models on the same problems: ``latents`` is natural, forced or both.

    ``text=True`` adds the CoT line ends of each model as a non-latent reference (``latents="text"``).
    """
    kinds = {"both": LATENT_KINDS, "natural": ("natural",), "forced": ("forced",)}
    if latents not in kinds:
        raise ValueError(f"latents must be 'natural', 'forced' or 'both', got {latents!r}")
    sets, emb = [], {}
    for name, lm in models.items():
        emb[name] = lm.model.get_input_embeddings().weight
        for kind in kinds[latents] + (("text",) if text else ()):
            sets.append(latent_states(lm, problems, kind, force_latents, name=name))
    return collapse_ci(sets, emb, layers=layers, max_step=force_latents, resamples=resamples, seed=seed)


def bundled_headline(
    base: str = "arith-tiny", n: int = 60, resamples: int = 100, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The README's natural-vs-forced numbers: ``:lt`` and ``:hidden`` on ``n`` test problems, every
    latent of a trace pooled, ``embed`` read-out (the latent input vectors); and each model's fusion
    parts on its natural latents."""
    from lensing.tasks import MAX_STEPS, make_splits
    from lensing.zoo import load

    problems = make_splits(0, 0, -(-n // MAX_STEPS), seed=seed).test[:n]
    sets, emb, parts = [], {}, {}
    for variant in ("lt", "hidden"):
        name = f"{base}:{variant}"
        lm = load(name)
        emb[name] = lm.model.get_input_embeddings().weight
        for kind in LATENT_KINDS:
            sets.append(latent_states(lm, problems, kind, name=name))
        parts[name] = fusion_parts(sets[-2], seed=seed)
    table = collapse_ci(sets, emb, layers=["embed"], max_step=0, resamples=resamples, seed=seed)
    return table, parts
