"""Attention patterns, the share of attention each segment (prompt / cot / latent / answer) gets, and head entropy."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from lensing.model.trace import KINDS
from lensing.viz.style import apply_style, token_label


@dataclass
class AttentionResult:
    """Per trace: patterns ``[layer, head, query, key]``; shares and entropies derived from them."""

    patterns: list[Float[Tensor, "layer head query key"]]
    kinds: list[list[str]]
    tokens: list[list[str]]

    def share_on(self, key_kind: str = "latent", layer: int = -1) -> list[Float[Tensor, " query"]]:
        """Per trace and query position: the head-averaged attention mass on ``key_kind`` positions."""
        out = []
        for pattern, kinds in zip(self.patterns, self.kinds, strict=True):
            keys = torch.tensor([k == key_kind for k in kinds])
            out.append(pattern[layer].mean(0)[:, keys].sum(-1))
        return out

    def segment_shares(self) -> pd.DataFrame:
        """Mean attention mass from queries of one kind to keys of another, per layer (head-averaged)."""
        rows = []
        n_layers = self.patterns[0].shape[0]
        for layer in range(n_layers):
            for q_kind in KINDS:
                for k_kind in KINDS:
                    values = []
                    for pattern, kinds in zip(self.patterns, self.kinds, strict=True):
                        q = torch.tensor([k == q_kind for k in kinds])
                        k = torch.tensor([k == k_kind for k in kinds])
                        if q.any():
                            values.append(pattern[layer].mean(0)[q][:, k].sum(-1))
                    if values:
                        rows.append(
                            {
                                "layer": layer,
                                "query_kind": q_kind,
                                "key_kind": k_kind,
                                "share": float(torch.cat(values).mean()),
                            }
                        )
        return pd.DataFrame(rows)

    def head_entropy(self) -> Float[Tensor, "layer head"]:
        """Mean entropy (nats) of each head's attention distribution over all query positions."""
        totals, count = None, 0
        for pattern in self.patterns:
            p = pattern.clamp(min=1e-12)
            h = -(pattern * p.log()).sum(-1).sum(-1)  # [layer, head]
            totals = h if totals is None else totals + h
            count += pattern.shape[2]
        return totals / count

    def to_dataframe(self) -> pd.DataFrame:
        """Segment shares per layer, with each layer's mean head entropy alongside."""
        shares = self.segment_shares()
        entropy = self.head_entropy().mean(1)
        shares["layer_mean_head_entropy"] = shares["layer"].map(lambda layer: float(entropy[layer]))
        return shares

    def plot(self, trace: int = 0, layer: int = -1) -> go.Figure:
        """Head-averaged pattern of one layer (latent rows and columns marked) and the segment shares."""
        pattern = self.patterns[trace][layer].mean(0).numpy()
        labels = [
            token_label(i, t, k) for i, (t, k) in enumerate(zip(self.tokens[trace], self.kinds[trace], strict=True))
        ]
        layer_index = layer % self.patterns[trace].shape[0]
        shares = self.segment_shares()
        shares = shares[shares.layer == layer_index].pivot(index="query_kind", columns="key_kind", values="share")
        fig = make_subplots(
            1,
            2,
            column_widths=[0.58, 0.42],
            horizontal_spacing=0.2,
            subplot_titles=(f"layer {layer_index} pattern (head mean)", "share by segment"),
        )
        fig.add_trace(
            go.Heatmap(
                z=pattern,
                x=labels,
                y=labels,
                colorscale="Viridis",
                zmin=0,
                zmax=1,
                colorbar={"x": 0.47, "len": 0.9, "title": "attn"},
            ),
            1,
            1,
        )
        fig.add_trace(
            go.Heatmap(
                z=shares.values,
                x=list(shares.columns),
                y=list(shares.index),
                colorscale="Viridis",
                zmin=0,
                zmax=1,
                text=shares.round(2).values,
                texttemplate="%{text}",
                showscale=False,
            ),
            1,
            2,
        )
        for i, kind in enumerate(self.kinds[trace]):
            if kind == "latent":
                fig.add_vline(x=i, line={"color": "#D55E00", "width": 1, "dash": "dot"}, row=1, col=1)
                fig.add_hline(y=i, line={"color": "#D55E00", "width": 1, "dash": "dot"}, row=1, col=1)
        fig.update_yaxes(autorange="reversed", tickfont={"size": 7}, row=1, col=1)
        fig.update_xaxes(tickfont={"size": 7}, row=1, col=1)
        fig.update_xaxes(title="key segment", row=1, col=2)
        fig.update_yaxes(title="query segment", row=1, col=2)
        return apply_style(fig, 960, 480)


def compute_attention(probe, cache, batch) -> AttentionResult:
    stacked = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(probe.n_layers)], 1)
    patterns = [stacked[i, :, :, :n, :n].float().cpu() for i, n in enumerate(batch.lengths)]
    return AttentionResult(patterns, [t.kinds for t in batch.traces], [t.tokens for t in batch.traces])
