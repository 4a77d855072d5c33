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
