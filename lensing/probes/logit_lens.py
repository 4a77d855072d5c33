"""Logit lens (and tuned lens) over every layer and position, and the decoding of latent positions.

Statistics are computed chunk by chunk of positions, one layer at a time, so the full
layers x positions x vocabulary tensor is never held: peak memory is of order chunk x vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensing.viz.style import apply_style, mark_latent_columns, token_label


@dataclass
class LensStats:
    """Per read-out layer and position statistics of a lens."""

    top_ids: Int[Tensor, "layer n k"]
    top_probs: Float[Tensor, "layer n k"]
    entropy: Float[Tensor, "layer n"]
    kl_to_final: Float[Tensor, "layer n"]
    target_rank: Int[Tensor, "layer n"]
    target_prob: Float[Tensor, "layer n"]


@torch.no_grad()
def lens_statistics(
    probe,
    resid: Float[Tensor, "layer n d_model"],
    targets: Int[Tensor, " n"],
    top_k: int = 5,
    chunk: int = 256,
    translators=None,
    vocab_chunk: int | None = None,
) -> LensStats:
    """Reads every residual through the final norm and unembedding (after a tuned-lens translator
    when given) and reduces the logits to statistics without ever holding a layer's full logits.

    Logits are produced in slices of the vocabulary small enough to stay in cache, and every
    statistic is accumulated online across slices (running max and sum of exponentials for the
    log-normaliser, a running dot product for the entropy, merged top-k, running rank count), so
    the cost over the unavoidable unembedding products stays small even at 50k tokens. The KL's
    cross term needs no pass over the vocabulary: sum_v p_final(v) logit(v) = h . (p_final @ W).
    """
    n_layers, n = resid.shape[:2]
    head = probe.lm.model.get_output_embeddings()
    weight = head.weight  # [vocab, d]
    bias = getattr(head, "bias", None)
    vocab = weight.shape[0]
    k = min(top_k, vocab)
    out = {name: [] for name in LensStats.__dataclass_fields__}
    safe_targets = targets.clamp(min=0).to(resid.device)
    for start in range(0, max(n, 1), chunk):  # at least once, so that no positions gives empty tensors
        sl = slice(start, start + chunk)
        rows_n = resid[-1, sl].shape[0]
        step = vocab_chunk or max(256, (1 << 19) // max(1, rows_n))
        tgt = safe_targets[sl]
        final_logits = probe.unembed(resid[-1, sl]).float()
        final_lse = final_logits.logsumexp(-1, keepdim=True)
        final_p = (final_logits - final_lse).exp_()
        final_neg_entropy = torch.linalg.vecdot(final_p, final_logits) - final_lse.squeeze(-1)
        del final_logits
        # sum_v p_final(v) * logit(v) = h . (p_final @ W) (+ p_final . b): one product per chunk, not per layer
        final_mix = final_p.to(weight.dtype) @ weight
        final_mix_bias = final_p @ bias.float() if bias is not None else 0.0
        rows = {name: [] for name in out}
        for layer in range(n_layers):
            h = resid[layer, sl]
            if translators is not None and layer < n_layers - 1:
                h = translators(layer, h)
            h = probe.final_norm(h).to(weight.dtype)
            tgt_logit = torch.linalg.vecdot(h, weight[tgt]).float()
            if bias is not None:
                tgt_logit = tgt_logit + bias[tgt].float()
            threshold = (tgt_logit + 1e-5 * (1 + tgt_logit.abs()))[:, None]
            m = torch.full((rows_n,), float("-inf"), device=h.device)
            s = torch.zeros(rows_n, device=h.device)
            e_dot_x = torch.zeros(rows_n, device=h.device)
            pf_dot_x = torch.linalg.vecdot(h, final_mix).float() + final_mix_bias
            rank = torch.zeros(rows_n, dtype=torch.long, device=h.device)
            top_v = top_i = None
            for v0 in range(0, vocab, step):
                x = (h @ weight[v0 : v0 + step].T).float()
                if bias is not None:
                    x = x + bias[v0 : v0 + step].float()
                cv, ci = topk_by_blocks(x, k)  # its first column is the slice's max
                ci = ci + v0
                new_m = torch.maximum(m, cv[:, 0])
                scale = (m - new_m).exp()
                e = (x - new_m[:, None]).exp_()
                s = s * scale + e.sum(-1)
                e_dot_x = e_dot_x * scale + torch.linalg.vecdot(e, x)
                m = new_m
                # count of x > threshold: sign(x - t) + 1 is 2 above, 0 below (a tie at t is improbable: t
                # carries a tolerance); on CPU this is ~30% faster than summing a boolean mask
                rank += (x.sub_(threshold).sign_().add_(1).sum(-1) * 0.5).floor_().long()
                if top_v is None:
                    top_v, top_i = cv, ci
                else:
                    merged_v, pick = torch.cat([top_v, cv], 1).topk(k, dim=-1)
                    top_v, top_i = merged_v, torch.cat([top_i, ci], 1).gather(1, pick)
            lse = m + s.log()
            rows["top_ids"].append(top_i)
            rows["top_probs"].append((top_v - lse[:, None]).exp())
            rows["entropy"].append(lse - e_dot_x / s)
            rows["kl_to_final"].append((final_neg_entropy - pf_dot_x + lse).clamp(min=0))
            rows["target_rank"].append(rank)
            rows["target_prob"].append((tgt_logit - lse).exp())
        for name in out:
            out[name].append(torch.stack(rows[name]).cpu())
    stats = LensStats(**{name: torch.cat(v, dim=1) for name, v in out.items()})
    missing = (targets < 0).cpu()
    stats.target_rank[:, missing] = -1
    stats.target_prob[:, missing] = float("nan")
    return stats


def topk_by_blocks(x: Float[Tensor, "n v"], k: int, block: int = 64) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """Exact top-k along the last axis, faster than ``torch.topk`` on wide CPU rows.

    The k largest values lie in the k blocks with the largest maxima (any other block's maximum
    is beaten by k values), so only those blocks are searched.

    >>> x = torch.tensor([[0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0]])
    >>> topk_by_blocks(x, 2, block=2)
    (tensor([[9., 8.]]), tensor([[1, 3]]))
    """
    n, width = x.shape
    n_blocks = width // block
    k = min(k, width)
    if n_blocks <= k or n == 0:
        return x.topk(k, dim=-1)
    blocks = x[:, : n_blocks * block].reshape(n, n_blocks, block)
    best = blocks.amax(-1).topk(k, dim=-1).indices
    candidates = blocks.gather(1, best[:, :, None].expand(-1, -1, block)).reshape(n, -1)
    index = (best[:, :, None] * block + torch.arange(block, device=x.device)).reshape(n, -1)
    if n_blocks * block < width:
        tail = torch.arange(n_blocks * block, width, device=x.device)
        candidates = torch.cat([candidates, x[:, n_blocks * block :]], 1)
        index = torch.cat([index, tail.expand(n, -1)], 1)
    values, pick = candidates.topk(k, dim=-1)
    return values, index.gather(1, pick)


def prediction_depth(top1: Int[Tensor, "layer n"]) -> Int[Tensor, " n"]:
    """First read-out layer from which the top-1 token no longer changes.

    >>> prediction_depth(torch.tensor([[1, 2], [3, 2], [3, 2]]))
    tensor([1, 0])
    """
    stable = (top1 == top1[-1:]).flip(0).long().cumprod(0).sum(0)
    return top1.shape[0] - stable


def _id_strings(lm, ids: Tensor) -> dict[int, str]:
    return {int(i): lm.tokenizer.decode([int(i)]) if int(i) != lm.thinking_id else "<thinking>" for i in ids.unique()}


@dataclass
class LogitLensResult:
    """Logit-lens statistics for every read-out layer (``layer_labels``) and position."""

    lens: str
    layer_labels: list[str]
    trace_index: list[int]
    position: list[int]
    kind: list[str]
    token: list[str]
    target_ids: Int[Tensor, " n"]
    stats: LensStats
    prediction_depth: Int[Tensor, " n"]
    id_to_str: dict[int, str]

    def to_dataframe(self) -> pd.DataFrame:
        """Long format: one row per (layer, position)."""
        frames = []
        for layer, label in enumerate(self.layer_labels):
            s = self.stats
            frames.append(
                pd.DataFrame(
                    {
                        "layer": layer,
                        "layer_label": label,
                        "trace": self.trace_index,
                        "position": self.position,
                        "kind": self.kind,
                        "token": self.token,
                        "top1": [self.id_to_str[int(i)] for i in s.top_ids[layer, :, 0]],
                        "p_top1": s.top_probs[layer, :, 0].numpy(),
                        "entropy": s.entropy[layer].numpy(),
                        "kl_to_final": s.kl_to_final[layer].numpy(),
                        "target": [self.id_to_str.get(int(t), "") if t >= 0 else "" for t in self.target_ids],
                        "target_rank": s.target_rank[layer].numpy(),
                        "target_prob": s.target_prob[layer].numpy(),
                        "prediction_depth": self.prediction_depth.numpy(),
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def mean_kl_by_layer(self) -> Float[Tensor, " layer"]:
        return self.stats.kl_to_final.mean(dim=1)

    def plot(self, trace: int = 0, value: str = "target_prob", max_positions: int = 48) -> go.Figure:
        """Heatmap of layers x positions for one trace, the top-1 token written in each cell.

        Long traces show the generated part (from the last prompt token on), cut at ``max_positions``.
        """
        cols = [i for i, t in enumerate(self.trace_index) if t == trace]
        if not cols:
            raise ValueError(f"no trace {trace} in this result")
        prompt = [c for c in cols if self.kind[c] == "prompt"]
        if len(cols) > max_positions and prompt:
            cols = cols[cols.index(prompt[-1]) :]
        cols = cols[:max_positions]
        z = getattr(self.stats, value) if value != "p_top1" else self.stats.top_probs[..., 0]
        z = z[:, cols].numpy()
        text = [
            [_short(self.id_to_str[int(i)]) for i in self.stats.top_ids[layer, cols, 0]]
            for layer in range(len(self.layer_labels))
        ]
        kinds = [self.kind[c] for c in cols]
        labels = [token_label(self.position[c], self.token[c], self.kind[c]) for c in cols]
        fig = go.Figure(
            go.Heatmap(
                z=z,
                x=list(range(len(cols))),
                y=self.layer_labels,
                text=text,
                texttemplate="%{text}",
                textfont={"size": 9},
                colorscale="Viridis",
                colorbar={"title": value.replace("_", " ")},
                hovertemplate="pos %{x}<br>layer %{y}<br>top-1 %{text}<br>" + value + " %{z:.3f}<extra></extra>",
            )
        )
        fig.update_xaxes(
            tickmode="array", tickvals=list(range(len(cols))), ticktext=labels, tickangle=-90, tickfont={"size": 9}
        )
        mark_latent_columns(fig, kinds)
        return apply_style(fig, 880, 340, f"{self.lens} lens: {value.replace('_', ' ')} (◆ = latent)")


def _short(token: str) -> str:
    return "◆" if token == "<thinking>" else token.replace("\n", "⏎")


def compute_logit_lens(probe, cache, batch, lens: str, target, top_k: int, chunk: int) -> LogitLensResult:
    from lensing.probes.core import resolve_token

    if lens not in ("logit", "tuned"):
        raise ValueError(f"lens must be 'logit' or 'tuned', got {lens!r}")
    translators = None
    if lens == "tuned":
        if probe.tuned_lens is None:
            raise ValueError(
                "no tuned lens: train one with probe.train_tuned_lens(traces) or load one with "
                "probe.load_tuned_lens(path)"
            )
        translators = probe.tuned_lens.translate
    resid = batch.flat(probe.resid_stack(cache), batch_dim=1)  # [layer, n, d]
    n = resid.shape[1]
    if target is None:
        targets = batch.next_tokens()
    else:
        targets = torch.full((n,), resolve_token(probe.lm, target), dtype=torch.long)
    stats = lens_statistics(probe, resid, targets, top_k, chunk, translators)
    trace_index, position, kind, token = batch.index()
    ids = torch.cat([stats.top_ids.flatten(), targets[targets >= 0]])
    return LogitLensResult(
        lens,
        probe.layer_labels,
        trace_index,
        position,
        kind,
        token,
        targets,
        stats,
        prediction_depth(stats.top_ids[..., 0]),
        _id_strings(probe.lm, ids),
    )


@dataclass
class LatentDecodingResult:
    """What each latent position decodes to at each layer, plus its input's nearest token embeddings."""

    layer_labels: list[str]
    trace_index: list[int]
    position: list[int]
    step: list[int]
    top_ids: Int[Tensor, "layer m k"]
    top_probs: Float[Tensor, "layer m k"]
    nearest_ids: Int[Tensor, "m k"]
    nearest_cosine: Float[Tensor, "m k"]
    id_to_str: dict[int, str]

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for j in range(len(self.position)):
            nearest = " ".join(self.id_to_str[int(i)] for i in self.nearest_ids[j])
            for layer, label in enumerate(self.layer_labels):
                rows.append(
                    {
                        "trace": self.trace_index[j],
                        "position": self.position[j],
                        "latent_step": self.step[j],
                        "layer": layer,
                        "layer_label": label,
                        "top_tokens": [self.id_to_str[int(i)] for i in self.top_ids[layer, j]],
                        "top_probs": self.top_probs[layer, j].tolist(),
                        "top1": self.id_to_str[int(self.top_ids[layer, j, 0])],
                        "p_top1": float(self.top_probs[layer, j, 0]),
                        "nearest_input_tokens": nearest,
                        "nearest_cosine": float(self.nearest_cosine[j, 0]),
                    }
                )
        return pd.DataFrame(rows)

    def plot(self, trace: int = 0) -> go.Figure:
        cols = [j for j, t in enumerate(self.trace_index) if t == trace]
        if not cols:
            raise ValueError(f"trace {trace} has no latent positions")
        z = self.top_probs[:, cols, 0].numpy()
        text = [
            [_short(self.id_to_str[int(self.top_ids[layer, j, 0])]) for j in cols]
            for layer in range(len(self.layer_labels))
        ]
        fig = go.Figure(
            go.Heatmap(
                z=z,
                x=[f"◆{self.step[j]} @{self.position[j]}" for j in cols],
                y=self.layer_labels,
                text=text,
                texttemplate="%{text}",
                colorscale="Viridis",
                zmin=0,
                zmax=1,
                colorbar={"title": "p(top-1)"},
            )
        )
        return apply_style(fig, 440, 320, "latent decoding (top-1 per layer)")


@torch.no_grad()
def compute_latent_decoding(probe, cache, batch, top_k: int) -> LatentDecodingResult:
    resid = batch.flat(probe.resid_stack(cache), batch_dim=1)
    trace_index, position, kind, _ = batch.index()
    rows = [i for i, k in enumerate(kind) if k == "latent"]
    step = []
    counts: dict[int, int] = {}
    for i in rows:
        counts[trace_index[i]] = counts.get(trace_index[i], 0) + 1
        step.append(counts[trace_index[i]])
    sub = resid[:, rows]
    stats = lens_statistics(probe, sub, torch.full((len(rows),), -1), top_k)
    emb = probe.lm.model.get_input_embeddings().weight.float()
    cos = torch.nn.functional.normalize(sub[0].float(), dim=-1) @ torch.nn.functional.normalize(emb, dim=-1).T
    nearest = cos.topk(min(top_k, emb.shape[0]), dim=-1) if rows else None
    nearest_ids = nearest.indices.cpu() if rows else torch.zeros(0, top_k, dtype=torch.long)
    nearest_cos = nearest.values.cpu() if rows else torch.zeros(0, top_k)
    ids = torch.cat([stats.top_ids.flatten(), nearest_ids.flatten()])
    return LatentDecodingResult(
        probe.layer_labels,
        [trace_index[i] for i in rows],
        [position[i] for i in rows],
        step,
        stats.top_ids,
        stats.top_probs,
        nearest_ids,
        nearest_cos,
        _id_strings(probe.lm, ids),
    )
