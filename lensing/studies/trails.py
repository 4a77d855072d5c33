"""Trails: the paths representations take (DESIGN §2), and whether same-structure inputs share them.

- depth trail: one position's residual stream across read-out layers (x^0 .. x^L);
- chain trail: the states at successive reasoning anchors (the end of each CoT line) at one layer;
- attribution trail: token -> attention head -> residual write -> logit edges that carry most of
  the direct attribution to a predicted token.

"Falling into the rut": same-structure inputs should have more similar trails than others
(the ratio of within- to between-structure cosine distance is below 1 at a layer), and a trail
should retrieve its own structure from a library better than a bag-of-tokens baseline. Collapse
is the degenerate case where everything is similar, so the report puts trail and collapse numbers
side by side.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from lensing.metrics import effective_rank, mean_pairwise_cosine
from lensing.model import LatentLM, Trace
from lensing.studies.collapse import text_anchors
from lensing.tasks import Problem
from lensing.viz.style import OKABE_ITO, apply_style


# ------------------------------------------------------------------ pure functions
def centred_cosine_matrix(x: Float[Tensor, "n d"]) -> Float[Tensor, "n n"]:
    """Cosine similarity between rows after subtracting the mean row.

    >>> centred_cosine_matrix(torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, -1.0]]))[0, 1]
    tensor(-1.)
    """
    u = torch.nn.functional.normalize(x - x.mean(0, keepdim=True), dim=-1)
    return u @ u.T


def within_between(similarity: Float[Tensor, "n n"], groups: list) -> tuple[float, float]:
    """Mean off-diagonal similarity within the same group and between different groups."""
    g = torch.tensor([hash(x) for x in groups])
    same = g[:, None] == g[None, :]
    off = ~torch.eye(len(groups), dtype=torch.bool)
    within, between = similarity[same & off], similarity[~same]
    return (
        float(within.mean()) if within.numel() else float("nan"),
        float(between.mean()) if between.numel() else float("nan"),
    )


def distance_ratio(within: float, between: float) -> float:
    """Within- over between-group cosine distance (1 - similarity); below 1 = same-group closer.

    >>> round(distance_ratio(0.8, 0.2), 6)
    0.25
    """
    return (1 - within) / (1 - between) if between < 1 - 1e-6 else float("nan")


def group_means(similarity: Float[Tensor, "n n"], groups: list) -> pd.DataFrame:
    """Mean similarity between the items of each pair of groups (groups sorted), leaving out each
    item's similarity with itself; NaN for a group of one item against itself.

    >>> group_means(torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]]), ["a", "a", "b"]).round(2)
         a    b
    a  0.5  0.1
    b  0.1  NaN
    """
    names = sorted(set(groups))
    member = torch.tensor([[g == name for g in groups] for name in names], dtype=similarity.dtype)  # [k, n]
    off = similarity * (1 - torch.eye(len(groups), dtype=similarity.dtype))
    sums = member @ off @ member.T
    counts = member.sum(1)
    pairs = counts[:, None] * counts[None, :] - torch.diag(counts)
    means = torch.where(pairs > 0, sums / pairs.clamp(min=1), torch.full_like(sums, float("nan")))
    return pd.DataFrame(means.numpy(), index=names, columns=names)


def step_direction_cosine(a: Float[Tensor, "steps d"], b: Float[Tensor, "steps d"]) -> float:
    """Mean cosine between the step directions (consecutive differences) of two equally long chains."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"chains must have the same number (>= 2) of steps, got {len(a)} and {len(b)}")
    return float(torch.nn.functional.cosine_similarity(a.diff(dim=0), b.diff(dim=0), dim=-1).mean())


def dtw_distance(a: Float[Tensor, "m d"], b: Float[Tensor, "n d"]) -> float:
    """Dynamic time warping with cosine distance, normalised by the warping-path length bound m + n.

    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> dtw_distance(x, torch.cat([x[:1], x]))
    0.0
    """
    cost = 1 - torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T
    m, n = cost.shape
    acc = torch.full((m + 1, n + 1), float("inf"), dtype=cost.dtype)
    acc[0, 0] = 0
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            acc[i, j] = cost[i - 1, j - 1] + torch.min(torch.stack([acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1]]))
    return float(acc[m, n] / (m + n))


def capture_rate(features: Float[Tensor, "n f"], groups: list, library_fraction: float = 0.5, seed: int = 0) -> float:
    """Share of query items whose nearest library item (cosine, centred) has the same group.

    Items are split at random into a library and queries; chance is about the share of library
    items in the query's own group.
    """
    n = len(groups)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut = max(1, int(n * library_fraction))
    lib, queries = order[:cut], order[cut:]
    sim = centred_cosine_matrix(features.double())
    nearest = sim[queries][:, lib].argmax(dim=1)
    return sum(groups[q] == groups[lib[int(j)]] for q, j in zip(queries, nearest, strict=True)) / len(queries)


def bag_of_tokens(traces: list[Trace], vocab_size: int) -> Int[Tensor, "n vocab"]:
    """Counts of each token id in each trace's prompt: the baseline a trail must beat."""
    out = torch.zeros(len(traces), vocab_size)
    for i, t in enumerate(traces):
        ids = t.token_ids[: t.prompt_length]
        out[i].index_add_(0, ids, torch.ones(len(ids)))
    return out


def pca_3d(x: Float[Tensor, "n d"]) -> Float[Tensor, "n 3"]:
    """Projection on the top-3 principal components."""
    centred = x.double() - x.double().mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:3].T).float()


# ------------------------------------------------------------------ the study
@dataclass
class TrailsReport:
    """Per read-out layer: trail similarity within vs between structures, retrieval and collapse."""

    table: pd.DataFrame
    chain_trails: list[Float[Tensor, "steps layer d_model"]]
    structures: list[str]
    attribution: pd.DataFrame

    def to_dataframe(self) -> pd.DataFrame:
        return self.table

    def pca_trajectories(self, layer: int = -1) -> tuple[Float[Tensor, "n steps 3"], list[str]]:
        """Chain trails at one layer projected on their joint top-3 principal components."""
        steps = {len(c) for c in self.chain_trails}
        if len(steps) != 1:
            raise ValueError(f"chain trails have different lengths {sorted(steps)}: use problems with one step count")
        x = torch.stack([c[:, layer] for c in self.chain_trails])  # [n, steps, d]
        flat = pca_3d(x.reshape(-1, x.shape[-1]))
        return flat.reshape(x.shape[0], x.shape[1], 3), self.structures

    def step_similarity(self, layer: int | str) -> pd.DataFrame:
        """Structure x structure mean similarity of chain trails at one read-out layer (index or label):
        the centred cosine between their step vectors (consecutive differences, concatenated), the
        similarity behind ``chain_within``/``chain_between``; the diagonal is within-structure."""
        labels = list(self.table.layer)
        index = labels.index(layer) if isinstance(layer, str) else range(len(labels))[layer]
        if len(self.chain_trails) < 2 or len({len(c) for c in self.chain_trails}) != 1:
            raise ValueError("step similarity needs at least two complete chain trails of one length")
        deltas = torch.stack([c[:, index].diff(dim=0).flatten() for c in self.chain_trails]).double()
        if float(effective_rank(deltas)) == 0:
            raise ValueError(f"every chain trail takes the same steps at layer {labels[index]}")
        return group_means(centred_cosine_matrix(deltas), self.structures)

    def plot_step_similarity(self, layers: list[str] | None = None) -> go.Figure:
        """One structure x structure heatmap of :meth:`step_similarity` per layer (default: every layer
        with a chain ratio), on one colour scale; each panel's title gives the layer's chain ratio."""
        t = self.table.set_index("layer")
        if layers is None:
            layers = [label for label in t.index if "chain_ratio" in t and pd.notna(t.chain_ratio[label])]
        if not layers:
            raise ValueError("no layer has chain trail statistics")
        grids = {label: self.step_similarity(label) for label in layers}
        bound = max(float(abs(g.to_numpy()[~pd.isna(g.to_numpy())]).max()) for g in grids.values()) or 1.0
        titles = [f"{label} (distance ratio {t.chain_ratio[label]:.2f})" for label in layers]
        fig = make_subplots(1, len(layers), subplot_titles=titles, horizontal_spacing=0.035)
        for c, (label, grid) in enumerate(grids.items(), 1):
            values = grid.to_numpy()
            fig.add_trace(
                go.Heatmap(
                    z=values,
                    x=list(grid.columns),
                    y=list(grid.index),
                    text=[["" if pd.isna(v) else f"{v:.2f}" for v in row] for row in values],
                    texttemplate="%{text}",
                    textfont={"size": 9},
                    colorscale="RdBu",
                    zmin=-bound,
                    zmax=bound,
                    zmid=0,
                    showscale=c == 1,
                    colorbar={"title": "cosine", "len": 0.9},
                    hovertemplate=label + "<br>%{y} vs %{x}: %{z:.3f}<extra></extra>",
                ),
                1,
                c,
            )
            for k in range(len(grid)):  # outline the within-structure diagonal
                fig.add_shape(
                    type="rect",
                    x0=k - 0.5,
                    x1=k + 0.5,
                    y0=k - 0.5,
                    y1=k + 0.5,
                    line={"color": "black", "width": 1.5},
                    fillcolor="rgba(0,0,0,0)",
                    row=1,
                    col=c,
                )
            fig.update_yaxes(autorange="reversed", showticklabels=c == 1, row=1, col=c)
        fig.update_xaxes(tickangle=0, tickfont={"size": 9}, title="structure")
        fig.update_yaxes(title="structure", row=1, col=1)
        return apply_style(
            fig,
            max(420, 290 * len(layers) + 120),
            380,
            "chain trails: mean step-direction cosine by pair of structures (outlined: same structure)",
        ).update_layout(margin={"t": 80})

    def plot(self) -> go.Figure:
        """Two panels on one x axis (read-out layer), one quantity each: within/between-structure
        distance ratios of depth and chain trails, and library capture against the bag-of-tokens baseline."""
        t = self.table
        fig = make_subplots(
            1,
            2,
            subplot_titles=("within / between-structure distance (< 1: rut)", "structure retrieval from a library"),
            horizontal_spacing=0.12,
        )
        green = OKABE_ITO["green"]
        curves = (  # column, name, line, panel
            ("depth_ratio", "depth trail: within/between distance", {"color": OKABE_ITO["vermillion"]}, 1),
            ("chain_ratio", "chain trail: within/between distance", {"color": OKABE_ITO["blue"]}, 1),
            ("capture_rate", "depth trail: library capture rate", {"color": green}, 2),
            ("baseline_capture_rate", "bag-of-tokens capture rate", {"color": OKABE_ITO["grey"], "dash": "dash"}, 2),
        )
        for column, name, line, panel in curves:
            if column in t:
                fig.add_trace(
                    go.Scatter(
                        x=t.layer,
                        y=t[column],
                        mode="lines" if "dash" in line else "lines+markers",
                        name=name,
                        line=line,
                    ),
                    1,
                    panel,
                )
        fig.add_hline(y=1, line={"color": "#999999", "dash": "dot"}, row=1, col=1)
        ratios = [float(v) for c in ("depth_ratio", "chain_ratio") if c in t for v in t[c] if pd.notna(v)]
        top = max([1.0, *ratios]) + 0.05  # from 0, with the reference line at 1 in view
        fig.update_yaxes(title="cosine distance ratio", range=[0, top], row=1, col=1)
        fig.update_yaxes(title="share of queries", range=[0, 1.02], row=1, col=2)
        fig.update_xaxes(title="read-out layer")
        fig.update_layout(legend={"orientation": "h", "y": -0.3, "x": 0})
        return apply_style(fig, 880, 400, "trails: same-structure similarity and retrieval by layer").update_layout(
            margin={"t": 70, "b": 110}
        )

    def plot_pca(self, layer: int = -1) -> go.Figure:
        traj, structures = self.pca_trajectories(layer)
        palette = list(OKABE_ITO.values())
        names = sorted(set(structures))
        fig = go.Figure()
        for i, s in enumerate(structures):
            c = palette[names.index(s) % len(palette)]
            fig.add_trace(
                go.Scatter3d(
                    x=traj[i, :, 0],
                    y=traj[i, :, 1],
                    z=traj[i, :, 2],
                    mode="lines+markers",
                    line={"color": c, "width": 3},
                    marker={"size": 3, "color": c},
                    name=s,
                    legendgroup=s,
                    showlegend=s not in structures[:i],
                )
            )
        return apply_style(fig, 640, 520, f"chain trails in PCA space (layer {layer}), colour = structure")


def _anchor_prompt_end(trace: Trace) -> int:
    return trace.prompt_length - 1


@torch.no_grad()
def attribution_trail(probe, trace: Trace, position: int, top_k: int = 3) -> pd.DataFrame:
    """The strongest token -> head -> logit edges for the token predicted at ``position``.

    Each edge's weight is the head's direct logit attribution times the attention weight from
    ``position`` to the source token: how much of the head's write came from that token.
    """
    parts = probe.decompose([trace], positions=[position])
    attn = probe.attention([trace]).patterns[0]  # [layer, head, q, k]
    n_heads = probe.n_heads
    order = parts.head_dla[:, 0].abs().argsort(descending=True)[:top_k]
    rows = []
    for h in order.tolist():
        layer, head = divmod(h, n_heads)
        weights = attn[layer, head, position]
        for src in weights.topk(min(top_k, len(weights))).indices.tolist():
            rows.append(
                {
                    "source_position": src,
                    "source_token": trace.tokens[src],
                    "source_kind": trace.kinds[src],
                    "head": parts.head_labels[h],
                    "head_dla": float(parts.head_dla[h, 0]),
                    "attention": float(weights[src]),
                    "edge": float(parts.head_dla[h, 0] * weights[src]),
                    "target_token": probe.lm.tokenizer.decode([int(parts.target_ids[0])]),
                }
            )
    return pd.DataFrame(rows).sort_values("edge", key=abs, ascending=False, ignore_index=True)


@torch.no_grad()
def trails_study(lm: LatentLM, problems: list[Problem], seed: int = 0) -> TrailsReport:
    """Depth and chain trails for ``problems`` (use one step count so chains align), grouped by structure."""
    from lensing.probes import attach

    if not problems:
        raise ValueError("empty problem list: nothing to trace")
    probe = attach(lm)
    traces = lm.generate([p.prompt for p in problems], max_new_tokens=160)
    _, cache, batch = probe.run_with_cache(traces, probe.resid_names())
    stack = probe.resid_stack(cache).float().cpu()  # [layer, batch, pos, d]
    structures = [p.structure for p in problems]
    depth = torch.stack([stack[:, i, _anchor_prompt_end(t)] for i, t in enumerate(traces)])  # [n, layer, d]
    chains, chain_structures = [], []
    for i, t in enumerate(traces):
        anchors = text_anchors(t)
        if len(anchors) == problems[i].steps:  # keep complete chains only
            chains.append(stack[:, i, anchors].permute(1, 0, 2))  # [steps, layer, d]
            chain_structures.append(structures[i])
    bag = bag_of_tokens(traces, lm.model.get_input_embeddings().num_embeddings)
    baseline = capture_rate(bag, structures, seed=seed)
    rows = []
    for layer, label in enumerate(probe.layer_labels):
        rank = float(effective_rank(depth[:, layer]))
        if rank == 0:  # every trail is the same point here (e.g. the prompt's last token before any block)
            within = between = capture = float("nan")
        else:
            within, between = within_between(centred_cosine_matrix(depth[:, layer]), structures)
            capture = capture_rate(depth[:, layer], structures, seed=seed)
        row = {
            "layer": label,
            "depth_within": within,
            "depth_between": between,
            "depth_ratio": distance_ratio(within, between),
            "capture_rate": capture,
            "baseline_capture_rate": baseline,
            "effective_rank": rank,
            "mean_cosine": float(mean_pairwise_cosine(depth[:, layer])) if len(depth) > 1 else float("nan"),
        }
        if len(chains) >= 2 and len({len(c) for c in chains}) == 1 and len(chains[0]) >= 2:
            deltas = torch.stack([c[:, layer].diff(dim=0).flatten() for c in chains])
            c_within, c_between = (
                within_between(centred_cosine_matrix(deltas), chain_structures)
                if float(effective_rank(deltas)) > 0
                else (float("nan"), float("nan"))
            )
            row.update(chain_within=c_within, chain_between=c_between, chain_ratio=distance_ratio(c_within, c_between))
        rows.append(row)
    answer_positions = [t.kinds.index("answer") for t in traces[:1] if "answer" in t.kinds]
    attribution = (
        attribution_trail(probe, traces[0], answer_positions[0] + 2)
        if answer_positions and answer_positions[0] + 2 < len(traces[0])
        else pd.DataFrame()
    )
    return TrailsReport(pd.DataFrame(rows), chains, chain_structures, attribution)
