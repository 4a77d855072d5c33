"""Residual-stream decomposition (embed / heads / attention / MLP) and direct logit attribution.

The final residual is the sum of the embedding and every layer's attention and MLP writes;
with the final RMSNorm's scale frozen at its value for that position, the logit of a token is
linear in those parts, so each part's direct logit attribution (DLA) sums exactly to the logit
(or to the target-minus-foil logit difference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from lensing.viz.style import KIND_COLORS, OKABE_ITO, apply_style, token_label


@dataclass
class DecompositionResult:
    """Parts of the residual at the chosen positions and their direct logit attributions."""

    component_labels: list[str]  # embed, L0.attn, L0.mlp, ...
    head_labels: list[str]  # L0H0, L0H1, ...
    trace_index: list[int]
    position: list[int]
    kind: list[str]
    token: list[str]
    target_ids: Int[Tensor, " n"]
    foil_ids: Int[Tensor, " n"] | None
    components: Float[Tensor, "component n d_model"]
    heads: Float[Tensor, "head n d_model"]
    dla: Float[Tensor, "component n"]
    head_dla: Float[Tensor, "head n"]
    logit: Float[Tensor, " n"]  # the model's target logit (minus the foil's)
    final_resid: Float[Tensor, "n d_model"]
    resid_norm: Float[Tensor, "layer n"]
    rms_scale: Float[Tensor, "layer n"]
    layer_labels: list[str]
    target_tokens: list[str] = field(default_factory=list)  # each column's target (minus foil) token, decoded
    target_kinds: list[str] = field(default_factory=list)  # kind of the position the target sits at ("" if none)

    def answer_digit_columns(self, trace: int | None = None) -> list[int]:
        """The columns whose targets are the answer digits of ``trace`` (default: the first trace here),
        in order: with next-token targets, the positions just before each digit."""
        if trace is None:
            trace = self.trace_index[0] if self.trace_index else -1
        return [
            i
            for i, (t, kind, token) in enumerate(zip(self.trace_index, self.target_kinds, self.target_tokens))
            if t == trace and kind == "answer" and token.isdigit()
        ]

    def answer_digit_column(self, trace: int | None = None, digit: int = 0) -> int | None:
        """The column whose target is digit ``digit`` (0: the first) of the answer of ``trace``; ``None``
        if no selected position predicts it."""
        found = self.answer_digit_columns(trace)
        return found[digit] if digit < len(found) else None

    def to_dataframe(self) -> pd.DataFrame:
        """Long format: one row per (part, position) with its DLA; heads have type ``head``."""
        frames = []
        for labels, values, kind in (
            (self.component_labels, self.dla, None),
            (self.head_labels, self.head_dla, "head"),
        ):
            for c, label in enumerate(labels):
                frames.append(
                    pd.DataFrame(
                        {
                            "part": label,
                            "type": kind or label.split(".")[-1],
                            "trace": self.trace_index,
                            "position": self.position,
                            "kind": self.kind,
                            "token": self.token,
                            "target": self.target_tokens or None,
                            "dla": values[c].numpy(),
                            "logit": self.logit.numpy(),
                        }
                    )
                )
        return pd.concat(frames, ignore_index=True)

    def norms_dataframe(self) -> pd.DataFrame:
        """Residual norm and RMS scale at every read-out layer and position."""
        frames = [
            pd.DataFrame(
                {
                    "layer_label": label,
                    "trace": self.trace_index,
                    "position": self.position,
                    "kind": self.kind,
                    "resid_norm": self.resid_norm[i].numpy(),
                    "rms_scale": self.rms_scale[i].numpy(),
                }
            )
            for i, label in enumerate(self.layer_labels)
        ]
        return pd.concat(frames, ignore_index=True)

    def plot(self, column: int | None = None) -> go.Figure:
        """DLA by layer part and by head for one column (default: the position that predicts the first
        answer digit of the first trace, else the last column); the title names the target token."""
        if column is None:
            first = self.answer_digit_column()
            column = first if first is not None else len(self.position) - 1
        n_layers = len(self.layer_labels) - 1
        heads = self.head_dla[:, column].reshape(n_layers, -1).numpy()
        colors = [
            OKABE_ITO["grey"] if "embed" in p else OKABE_ITO["blue"] if "attn" in p else OKABE_ITO["orange"]
            for p in self.component_labels
        ]
        fig = make_subplots(
            1, 2, column_widths=[0.6, 0.4], horizontal_spacing=0.14, subplot_titles=("DLA by part", "DLA by head")
        )
        fig.add_trace(
            go.Bar(x=self.component_labels, y=self.dla[:, column].numpy(), marker_color=colors, showlegend=False), 1, 1
        )
        bound = float(abs(heads).max()) or 1.0
        fig.add_trace(
            go.Heatmap(
                z=heads,
                x=[f"H{h}" for h in range(heads.shape[1])],
                y=[f"L{layer}" for layer in range(n_layers)],
                colorscale="RdBu",
                zmid=0,
                zmin=-bound,
                zmax=bound,
                colorbar={"title": "DLA"},
            ),
            1,
            2,
        )
        label = token_label(self.position[column], self.token[column], self.kind[column])
        target = repr(self.target_tokens[column]) if self.target_tokens else "the target"
        if self.foil_ids is not None:
            target = f"{target} minus foil"
        digits = self.answer_digit_columns(self.trace_index[column])
        if column in digits:
            target = f"{target} (answer digit {digits.index(column) + 1})"
        title = (
            f"trace {self.trace_index[column]}: logit of {target} at position {label} = "
            f"{float(self.logit[column]):.2f}"
        )
        fig.update_yaxes(title="direct logit attribution", row=1, col=1)
        fig.update_layout(title_font={"color": KIND_COLORS.get(self.kind[column], "black")})
        return apply_style(fig, 880, 380, f"{title} ({self.kind[column]})").update_layout(margin={"t": 70})


def _select_columns(batch, positions) -> list[int]:
    trace_index, position, kind, _ = batch.index()
    if isinstance(positions, str):
        if positions == "all":
            return list(range(len(kind)))
        if positions in ("latent", "answer", "cot", "prompt"):
            return [i for i, k in enumerate(kind) if k == positions]
        if positions == "last":
            return [i for i in range(len(kind)) if i + 1 == len(kind) or trace_index[i + 1] != trace_index[i]]
        raise ValueError(
            f"positions must be all, latent, answer, cot, prompt, last or a list of ints, got {positions!r}"
        )
    wanted = set(positions)
    return [i for i, p in enumerate(position) if p in wanted]


@torch.no_grad()
def compute_decomposition(probe, cache, batch, target, foil, positions: str | Sequence[int]) -> DecompositionResult:
    from lensing.probes.core import resolve_token

    cols = _select_columns(batch, positions)
    if not cols:
        raise ValueError(f"no positions selected by {positions!r}")
    sel = torch.tensor(cols)

    def flat(name):
        return batch.flat(cache[name])[sel].float()

    n_layers = probe.n_layers
    parts, labels, heads, head_labels = [flat("blocks.0.hook_resid_pre")], ["embed"], [], []
    for layer in range(n_layers):
        parts += [flat(f"blocks.{layer}.hook_attn_out"), flat(f"blocks.{layer}.hook_mlp_out")]
        labels += [f"L{layer}.attn", f"L{layer}.mlp"]
        z = flat(f"blocks.{layer}.attn.hook_z")  # [n, head, d_head]
        W_O = probe.bridge.blocks[layer].attn.W_O.float()  # [head, d_head, d_model]
        heads.append(torch.einsum("nhe,hed->hnd", z, W_O))
        head_labels += [f"L{layer}H{h}" for h in range(W_O.shape[0])]
    components, heads = torch.stack(parts), torch.cat(heads)
    stack = batch.flat(probe.resid_stack(cache), batch_dim=1)[:, sel].float()  # [layer, n, d]
    final = stack[-1]
    scale = flat("ln_final.hook_scale")  # [n, 1]
    gamma = probe.bridge.ln_final.weight.float()
    logits = probe.unembed(final).float()
    if target is None:  # the next token; at a trace's last position, the model's own prediction
        targets = batch.next_tokens()[sel]
        targets = torch.where(targets < 0, logits.argmax(-1).cpu(), targets)
    else:
        targets = torch.full((len(cols),), resolve_token(probe.lm, target), dtype=torch.long)
    W_U = probe.W_U.float()
    direction = W_U[:, targets.to(W_U.device)].T  # [n, d]
    foils = None
    if foil is not None:
        foils = torch.full_like(targets, resolve_token(probe.lm, foil))
        direction = direction - W_U[:, foils.to(W_U.device)].T
    readout = direction * gamma / scale  # [n, d]: the linear map from a residual part to the logit (difference)
    dla = torch.einsum("pnd,nd->pn", components, readout)  # a batched product: no [part, n, d] temporary
    head_dla = torch.einsum("pnd,nd->pn", heads, readout)
    logit = logits.gather(1, targets[:, None].to(logits.device)).squeeze(1)
    if foils is not None:
        logit = logit - logits.gather(1, foils[:, None].to(logits.device)).squeeze(1)
    eps = probe.bridge.cfg.eps
    trace_index, position, kind, token = batch.index()
    if target is None:  # the target sits at the next position, if the trace goes on
        target_kinds = [
            kind[i + 1] if i + 1 < len(kind) and trace_index[i + 1] == trace_index[i] else "" for i in cols
        ]
    else:
        target_kinds = [""] * len(cols)
    thinking = getattr(probe.lm, "thinking_id", None)
    target_tokens = [
        "<thinking>" if int(t) == thinking else probe.lm.tokenizer.decode([int(t)]) for t in targets.tolist()
    ]
    pick = lambda xs: [xs[i] for i in cols]  # noqa: E731
    return DecompositionResult(
        labels,
        head_labels,
        pick(trace_index),
        pick(position),
        pick(kind),
        pick(token),
        targets,
        foils,
        components.cpu(),
        heads.cpu(),
        dla.cpu(),
        head_dla.cpu(),
        logit.cpu(),
        final.cpu(),
        stack.norm(dim=-1).cpu(),
        (stack.pow(2).mean(-1) + eps).sqrt().cpu(),
        probe.layer_labels,
        target_tokens,
        target_kinds,
    )
