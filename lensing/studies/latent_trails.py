"""Trails on latents, and the rut test with confidence intervals (DESIGN §2).

:mod:`lensing.studies.trails` takes its trails at *text* positions (the prompt end and the
newline ending each CoT line), so a "rut" it finds can be the visible +/- signs of the text.
This module takes them where the latents are:

- **chain trail through the latents**: a problem's latent vectors at one read-out layer, step by
  step (``align="order"``: the k-th latent of the trace, Coconut's "latent k stands for CoT step
  k"; ``align="line"``: the mean of the latents sitting in CoT line k), compared by the centred
  cosine of their step directions (consecutive differences, concatenated);
- **depth trail at a latent**: the residual stream across read-out layers at the k-th latent
  position, compared layer by layer (centred cosine);

and runs the same **rut test** on the text-position trails, labelled ``"text positions"``, so
both sit in one table. The rut test for a set of trails grouped by reasoning structure:

- ``within`` / ``between``: mean centred-cosine similarity of trail pairs from the same / from
  different structures; ``ratio``: within- over between-structure cosine distance (below 1: a rut);
- ``capture_rate``: how often a trail's nearest neighbour in a random library (half the trails,
  as :func:`lensing.studies.trails.capture_rate`) has its structure, averaged over ``splits``
  library draws; ``capture_chance``: the rate a random library pick would reach;
- against the **bag-of-tokens baseline** (prompt token counts, the same problems and library
  draws): ``bag_ratio``, ``bag_capture_rate`` and ``capture_gain`` (trail minus bag, paired).

Every number has a percentile-bootstrap interval over problems (the same draws for every metric
of a row; pairs of one problem with itself are never counted).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from lensing.model import LatentLM
from lensing.studies.collapse import LatentSet, cot_lines, text_anchors
from lensing.studies.trails import bag_of_tokens, centred_cosine_matrix, distance_ratio
from lensing.tasks import Problem
from lensing.viz.style import OKABE_ITO, apply_style

TEXT = "text positions"
RUT_METRICS = (
    "within",
    "between",
    "ratio",
    "capture_rate",
    "capture_chance",
    "bag_ratio",
    "bag_capture_rate",
    "capture_gain",
)


def positions_label(latents: str) -> str:
    """The ``positions`` column of a latent kind: ``"latent (natural)"``, ``"latent (forced)"``."""
    return f"latent ({latents})"


# ------------------------------------------------------------------ the rut test (pure)
def _group_ids(groups: list) -> np.ndarray:
    ids = {g: k for k, g in enumerate(dict.fromkeys(groups))}
    return np.array([ids[g] for g in groups])


def pair_means(
    similarity: Float[Tensor, "n n"], groups: list, counts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Within- and between-group mean similarity for each row of ``counts`` (how many times each
    item is drawn; default: every item once), over pairs of two different items.

    >>> s = torch.tensor([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]], dtype=torch.float64)
    >>> pair_means(s, ["a", "a", "b"])
    (array([0.8]), array([0.2]))
    >>> pair_means(s, ["a", "a", "b"], np.array([[2, 1, 0]]))  # item 0 twice: pairs (0,1) twice, never (0,0)
    (array([0.8]), array([nan]))
    """
    sim = similarity.double().numpy()
    g = _group_ids(groups)
    same = g[:, None] == g[None, :]
    off = ~np.eye(len(g), dtype=bool)
    c = np.ones((1, len(g))) if counts is None else np.asarray(counts, dtype=np.float64)
    out = []
    for mask in (same & off, ~same):
        total = np.einsum("ri,ij,rj->r", c, np.where(mask, sim, 0.0), c)
        pairs = np.einsum("ri,ij,rj->r", c, mask.astype(np.float64), c)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(pairs > 0, total / np.where(pairs > 0, pairs, 1), np.nan))
    return out[0], out[1]


def capture_hits(
    features: Float[Tensor, "n f"], groups: list, splits: int = 50, library_fraction: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the share of library draws, among those where it was a query, in which its nearest
    library item (centred cosine) had its group, and the share a random library pick would give.

    Draw ``s`` splits the items as :func:`lensing.studies.trails.capture_rate` with ``seed + s``
    does, so the mean hit over the queries of one draw is that function's capture rate. NaN for
    an item that was never a query.
    """
    n = len(groups)
    if n < 2:
        raise ValueError(f"capture needs at least two items, got {n}")
    g = _group_ids(groups)
    sim = centred_cosine_matrix(features.double()).numpy()
    hits, chance, seen = np.zeros(n), np.zeros(n), np.zeros(n)
    cut = max(1, int(n * library_fraction))
    for s in range(splits):
        order = list(range(n))
        random.Random(seed + s).shuffle(order)
        lib, queries = np.array(order[:cut]), np.array(order[cut:])
        if not len(queries):
            continue
        nearest = lib[sim[np.ix_(queries, lib)].argmax(1)]
        hits[queries] += g[nearest] == g[queries]
        chance[queries] += (g[lib][None, :] == g[queries][:, None]).mean(1)
        seen[queries] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / seen, chance / seen


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def rut_test(
    features: Float[Tensor, "n f"],
    groups: list,
    baseline: Float[Tensor, "n b"] | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    splits: int = 50,
    cache: dict | None = None,
) -> dict[str, tuple[float, float, float]]:
    """``(value, ci_low, ci_high)`` of each rut metric (see the module docstring) for trails given as
    feature rows, grouped by structure; the ``bag_*`` and ``capture_gain`` metrics need
    ``baseline`` (one row per trail, e.g. :func:`lensing.studies.trails.bag_of_tokens`).

    Values use every trail; intervals resample problems with replacement (pairs of a problem with
    itself left out, capture averaged over the drawn problems with their multiplicity). NaN where
    the trails are all one point, or where one structure only is present. An interval that misses
    its value (possible for strongly skewed draws) is widened to include it. ``cache`` (a dict the
    caller keeps) spares recomputing the baseline for the same problems, e.g. at every layer.
    """
    from lensing.interventions.stats import bootstrap_indices

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(groups)
    if features.shape[0] != n or (baseline is not None and baseline.shape[0] != n):
        raise ValueError(f"{n} groups for {features.shape[0]} trails: give one group per trail")
    nan = (float("nan"),) * 3
    out = dict.fromkeys(RUT_METRICS, nan)
    if n < 3 or len(set(groups)) < 2:
        return out
    draws = bootstrap_indices(n, resamples, seed)
    counts = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)

    def measure(x: Tensor, prefix: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        x = x.double()
        if float((x - x.mean(0)).abs().max()) < 1e-12:  # every trail the same point: no similarity defined
            return {}
        sim = centred_cosine_matrix(x)
        (w,), (b,) = pair_means(sim, groups)
        ws, bs = pair_means(sim, groups, counts)
        ratio = np.array([distance_ratio(a, c) for a, c in zip(ws, bs, strict=True)])
        hit, chance = capture_hits(x, groups, splits, seed=seed)
        ok = np.isfinite(hit)
        per_draw = (counts[:, ok] @ hit[ok]) / counts[:, ok].sum(1)
        found = {
            "ratio": (np.array(distance_ratio(w, b)), ratio),
            "capture_rate": (hit[ok].mean(), per_draw),
        }
        if prefix == "":
            found["within"] = (np.array(w), ws)
            found["between"] = (np.array(b), bs)
            found["capture_chance"] = (chance[ok].mean(), (counts[:, ok] @ chance[ok]) / counts[:, ok].sum(1))
        found["_hits"] = (hit, ok)
        return {prefix + k: v for k, v in found.items()}

    got = measure(features, "")
    if baseline is not None:
        key = (baseline.double().numpy().tobytes(), tuple(groups), resamples, seed, splits)
        if cache is None or key not in cache:
            found = measure(baseline, "bag_")
            if cache is not None:
                cache[key] = found
        got.update(found if cache is None else cache[key])
        if "_hits" in got and "bag__hits" in got:
            (hit, ok), (bag, bag_ok) = got["_hits"], got["bag__hits"]
            both = ok & bag_ok
            diff = hit[both] - bag[both]
            got["capture_gain"] = (diff.mean(), (counts[:, both] @ diff) / counts[:, both].sum(1))
    for name in RUT_METRICS:
        if name in got:
            value, draws_of = got[name]
            value = float(value)
            lo, hi = _interval(np.asarray(draws_of, dtype=np.float64), level)
            out[name] = (value, min(lo, value), max(hi, value)) if np.isfinite(value) else nan
    return out


# ------------------------------------------------------------------ trails from a LatentSet
def chain_length(lset: LatentSet, align: str = "order", share: float = 0.5) -> int:
    """The longest chain (at least 2 steps) that at least ``share`` of the problems have; 2 if none."""
    reach = [_reach(lset, i, align) for i in range(len(lset.states))]
    for length in range(max(reach, default=0), 1, -1):
        if sum(r >= length for r in reach) >= share * len(reach):
            return length
    return 2


def _reach(lset: LatentSet, i: int, align: str) -> int:
    """How many chain steps problem ``i`` has: its latents (order), or its first lines that all hold a latent."""
    if align == "order":
        return len(lset.states[i])
    lines = set(lset.lines[i]) if lset.lines else set()
    k = 0
    while k + 1 in lines:
        k += 1
    return k


def chain_trails(
    lset: LatentSet, layer: int, length: int, align: str = "order"
) -> tuple[Float[Tensor, "m steps d"], list[int]]:
    """Every problem's chain trail of ``length`` steps at read-out ``layer`` (problems too short are
    left out) and the indices of the problems kept.

    ``align="order"``: the first ``length`` latents of the trace; ``align="line"``: for CoT lines
    1..``length``, the mean of the latents sitting in that line (needs ``lset.lines``).
    """
    if align not in ("order", "line"):
        raise ValueError(f"align must be 'order' or 'line', got {align!r}")
    if align == "line" and not lset.lines:
        raise ValueError("align='line' needs the CoT line of each latent (latent_states records it)")
    trails, kept = [], []
    for i, states in enumerate(lset.states):
        if _reach(lset, i, align) < length:
            continue
        if align == "order":
            trails.append(states[:length, layer])
        else:
            lines = torch.tensor(lset.lines[i])
            trails.append(torch.stack([states[lines == k, layer].mean(0) for k in range(1, length + 1)]))
        kept.append(i)
    d = lset.states[0].shape[-1] if lset.states else 0
    return (torch.stack(trails) if trails else torch.zeros(0, length, d)), kept


def step_features(trails: Float[Tensor, "m steps d"]) -> Float[Tensor, "m f"]:
    """Each chain's step directions (consecutive differences), concatenated: what chain trails are compared on."""
    return trails.double().diff(dim=1).flatten(1)


def _rows(result: dict, base: dict, n: int, structures: int) -> list[dict]:
    return [
        {**base, "metric": m, "value": v, "ci_low": lo, "ci_high": hi, "n": n, "structures": structures}
        for m, (v, lo, hi) in result.items()
    ]


def latent_rut(
    lset: LatentSet,
    structures: list[str],
    bag: Float[Tensor, "n b"] | None = None,
    layers: list[str] | None = None,
    length: int | None = None,
    align: str = "order",
    depth_steps: int | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    splits: int = 50,
) -> pd.DataFrame:
    """The rut test on a set's latent trails: one chain-trail row set per layer and one depth-trail
    row set per (latent step 1..``depth_steps``, layer), long format (see :class:`LatentTrailsReport`).

    ``structures[i]`` and ``bag[i]`` belong to the i-th problem of the set; ``length`` defaults to
    :func:`chain_length`, ``depth_steps`` to that length.
    """
    if len(structures) != len(lset.states):
        raise ValueError(f"{len(structures)} structures for a set of {len(lset.states)} problems")
    layers = layers or list(lset.layer_labels)
    length = length or chain_length(lset, align)
    depth_steps = length if depth_steps is None else depth_steps
    where = positions_label(lset.latents)
    rows: list[dict] = []
    cache: dict = {}
    for label in layers:
        layer = lset.layer_labels.index(label)
        trails, kept = chain_trails(lset, layer, length, align)
        if len(kept) >= 3:
            groups = [structures[i] for i in kept]
            result = rut_test(
                step_features(trails), groups, None if bag is None else bag[kept], resamples, level, seed, splits, cache
            )
            base = {
                "positions": where,
                "trail": "chain",
                "anchor": f"latents 1-{length} ({'trace order' if align == 'order' else 'mean per CoT line'})",
                "step": float("nan"),
                "layer": label,
            }
            rows += _rows(result, base, len(kept), len(set(groups)))
        for step in range(1, depth_steps + 1):
            kept = [i for i, s in enumerate(lset.states) if len(s) >= step]
            if len(kept) < 3:
                continue
            groups = [structures[i] for i in kept]
            x = torch.stack([lset.states[i][step - 1, layer] for i in kept])
            result = rut_test(x, groups, None if bag is None else bag[kept], resamples, level, seed, splits, cache)
            base = {"positions": where, "trail": "depth", "anchor": f"latent {step}", "step": step, "layer": label}
            rows += _rows(result, base, len(kept), len(set(groups)))
    return pd.DataFrame(rows)


def text_rut(
    depth: Float[Tensor, "n layer d"],
    chains: list[Float[Tensor, "steps layer d"] | None],
    structures: list[str],
    layer_labels: list[str],
    bag: Float[Tensor, "n b"] | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    splits: int = 50,
) -> pd.DataFrame:
    """The same rut test at text positions (``positions="text positions"``), as
    :func:`lensing.studies.trails_study` takes them: depth trails at the prompt end, chain trails
    at the newlines ending the CoT lines (``chains[i]`` None for an incomplete chain)."""
    rows: list[dict] = []
    cache: dict = {}
    kept = [i for i, c in enumerate(chains) if c is not None]
    lengths = {len(chains[i]) for i in kept}
    if len(lengths) > 1:
        raise ValueError(f"text chains of lengths {sorted(lengths)}: use problems with one step count")
    for layer, label in enumerate(layer_labels):
        result = rut_test(depth[:, layer], structures, bag, resamples, level, seed, splits, cache)
        base = {"positions": TEXT, "trail": "depth", "anchor": "prompt end", "step": float("nan"), "layer": label}
        rows += _rows(result, base, len(structures), len(set(structures)))
        if len(kept) >= 3 and lengths and min(lengths) >= 2:
            groups = [structures[i] for i in kept]
            trails = torch.stack([chains[i][:, layer] for i in kept])
            result = rut_test(
                step_features(trails), groups, None if bag is None else bag[kept], resamples, level, seed, splits, cache
            )
            base = {
                "positions": TEXT,
                "trail": "chain",
                "anchor": f"CoT line ends 1-{min(lengths)}",
                "step": float("nan"),
                "layer": label,
            }
            rows += _rows(result, base, len(kept), len(set(groups)))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ the report and the study
@dataclass
class LatentTrailsReport:
    """Long table: one row per (positions, trail, anchor, step, layer, metric) with ``value``,
    ``ci_low``, ``ci_high``, ``n`` (trails) and ``structures`` (distinct structures among them).

    ``positions`` is ``"latent (natural)"``, ``"latent (forced)"`` or ``"text positions"`` (the
    trails of :func:`lensing.studies.trails_study`); ``trail`` is ``chain`` or ``depth``;
    ``anchor`` says where the trail was taken; ``metric`` is one of :data:`RUT_METRICS`.
    """

    table: pd.DataFrame
    model: str = "model"

    def to_dataframe(self) -> pd.DataFrame:
        return self.table

    def summary(
        self, metrics: tuple[str, ...] = ("ratio", "capture_rate", "bag_capture_rate", "capture_gain")
    ) -> pd.DataFrame:
        """One row per trail and layer, one ``value [ci_low, ci_high]`` column per metric."""
        t = self.table[self.table.metric.isin(metrics)]
        t = t.assign(
            cell=[
                "n/a" if pd.isna(v) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"
                for v, lo, hi in zip(t.value, t.ci_low, t.ci_high, strict=True)
            ]
        )
        wide = t.pivot_table(
            index=["positions", "trail", "anchor", "layer", "n"],
            columns="metric",
            values="cell",
            aggfunc="first",
            sort=False,
        )
        return wide[[m for m in metrics if m in wide.columns]]

    def plot(self, depth_anchor: str | None = None) -> go.Figure:
        """Two panels over read-out layers, 95% CI bars: the within/between distance ratio (below 1: a
        rut) and the library capture rate, for chain trails (solid) and depth trails (dotted) at
        each kind of position; the bag-of-tokens capture of the same problems dashed grey. Depth
        trails at latents are shown at ``depth_anchor`` (default ``"latent 1"``)."""
        anchor = depth_anchor or "latent 1"
        t = self.table
        keep = (t.trail == "chain") | (t.anchor == anchor) | (t.positions == TEXT)
        t = t[keep]
        if t.empty:
            raise ValueError("no trails to plot")
        fig = make_subplots(
            1,
            2,
            subplot_titles=("within / between-structure distance (< 1: rut)", "structure retrieval from a library"),
            horizontal_spacing=0.12,
        )
        palette = {
            TEXT: OKABE_ITO["grey"],
            "latent (natural)": OKABE_ITO["vermillion"],
            "latent (forced)": OKABE_ITO["blue"],
        }
        for (where, trail, anch), part in t.groupby(["positions", "trail", "anchor"], sort=False):
            color = palette.get(where, OKABE_ITO["green"])
            name = f"{where}: {trail} ({anch})"
            for col, metric in ((1, "ratio"), (2, "capture_rate")):
                rows = part[part.metric == metric]
                fig.add_trace(_curve(rows, name, color, "solid" if trail == "chain" else "dot", col == 1), 1, col)
        bag = t[(t.metric == "bag_capture_rate") & (t.trail == "chain")]
        shown: set[tuple] = set()  # one dashed line per distinct set of problems
        for (_, n), rows in bag.groupby(["positions", "n"], sort=False):
            key = tuple(rows.value.round(12))
            if key in shown:
                continue
            shown.add(key)
            fig.add_trace(_curve(rows, f"bag of tokens ({n} problems)", OKABE_ITO["black"], "dash", True), 1, 2)
        fig.add_hline(y=1, line={"color": "#999999", "dash": "dot"}, row=1, col=1)
        fig.update_yaxes(title="cosine distance ratio", row=1, col=1)
        fig.update_yaxes(title="share of queries", range=[0, 1.02], row=1, col=2)
        fig.update_xaxes(title="read-out layer")
        fig.update_layout(legend={"orientation": "h", "y": -0.3, "x": 0})
        return apply_style(fig, 880, 460, f"{self.model}: trails through latents vs text positions").update_layout(
            margin={"t": 70, "b": 150}
        )

    def records(self) -> list[dict]:
        """The table as JSON-ready dicts (non-finite numbers stay NaN for :mod:`lensing._json`)."""
        return self.table.to_dict(orient="records")


def _curve(rows: pd.DataFrame, name: str, color: str, dash: str, legend: bool) -> go.Scatter:
    return go.Scatter(
        x=rows.layer,
        y=rows.value,
        error_y={
            "type": "data",
            "symmetric": False,
            "array": rows.ci_high - rows.value,
            "arrayminus": rows.value - rows.ci_low,
        },
        mode="lines+markers",
        name=name,
        legendgroup=name,
        showlegend=legend,
        line={"color": color, "dash": dash},
    )


@torch.no_grad()
def _collect(lm: LatentLM, problems: list[Problem], forced: int, batch_size: int) -> dict:
    """One generation pass: latents (states, lines), text anchors, prompt-end states, prompt tokens."""
    from lensing.probes import attach

    probe = attach(lm)
    out = {
        "layer_labels": probe.layer_labels,
        "states": [],
        "lines": [],
        "h": [],
        "pred": [],
        "depth": [],
        "chains": [],
        "traces": [],
    }
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        traces = lm.generate([p.prompt for p in chunk], max_new_tokens=160, force_latents=forced)
        _, cache, _ = probe.run_with_cache(traces, probe.resid_names())
        stack = probe.resid_stack(cache).double().cpu()  # [layer, batch, pos, d]
        for i, (trace, problem) in enumerate(zip(traces, chunk, strict=True)):
            anchors = trace.latent_positions[:forced] if forced else trace.latent_positions
            out["states"].append(stack[:, i, anchors].permute(1, 0, 2).clone())
            out["lines"].append(cot_lines(trace, anchors))
            out["h"].append(trace.latent_h[: len(anchors)].double())
            out["pred"].append(trace.latent_pred[: len(anchors)].double())
            out["depth"].append(stack[:, i, trace.prompt_length - 1].clone())
            ends = text_anchors(trace)
            out["chains"].append(stack[:, i, ends].permute(1, 0, 2).clone() if len(ends) == problem.steps else None)
            out["traces"].append(trace)
    return out


def latent_trails_study(
    lm: LatentLM,
    problems: list[Problem],
    latents: tuple[str, ...] = ("natural", "forced"),
    text: bool = True,
    force_latents: int = 6,
    length: int | None = None,
    align: str = "order",
    layers: list[str] | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    splits: int = 50,
    batch_size: int = 100,
    name: str = "model",
) -> LatentTrailsReport:
    """Chain and depth trails through ``lm``'s latents (natural, forced or both) and, with ``text``,
    the text-position trails, each put through the rut test against a bag-of-tokens baseline.

    Use problems of one difficulty so text chains align; structures come from ``Problem.structure``.
    ``length`` is the latent chain length (default per set: :func:`chain_length`; forced chains:
    ``force_latents``).
    """
    if not problems:
        raise ValueError("empty problem list: nothing to trace")
    unknown = [k for k in latents if k not in ("natural", "forced")]
    if unknown:
        raise ValueError(f"latents must be 'natural' and/or 'forced', got {unknown}")
    structures = [p.structure for p in problems]
    vocab = lm.model.get_input_embeddings().num_embeddings
    frames = []
    runs = {kind: _collect(lm, problems, force_latents if kind == "forced" else 0, batch_size) for kind in latents}
    if text and "natural" not in runs:
        runs["natural"] = _collect(lm, problems, 0, batch_size)
    for kind, run in runs.items():
        bag = bag_of_tokens(run["traces"], vocab)
        if kind in latents:
            lset = LatentSet(
                name,
                kind,
                run["layer_labels"],
                run["states"],
                run["h"],
                run["pred"],
                lm.config.mode,
                float(lm.config.alpha),
                run["lines"],
            )
            if sum(lset.counts):
                chain = length or (force_latents if kind == "forced" else chain_length(lset, align))
                frames.append(
                    latent_rut(lset, structures, bag, layers, chain, align, None, resamples, level, seed, splits)
                )
        if text and kind == "natural":
            table = text_rut(
                torch.stack(run["depth"]),
                run["chains"],
                structures,
                run["layer_labels"],
                bag,
                resamples,
                level,
                seed,
                splits,
            )
            frames.append(table[table.layer.isin(layers)] if layers else table)
    table = (
        pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    )
    return LatentTrailsReport(table, name)
