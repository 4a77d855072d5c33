"""Logit lens (and tuned lens) over every layer and position, and the decoding of latent positions.

Statistics are reduced from vocabulary slices of the logits as they are produced, so the full
layers x positions x vocabulary tensor is never held: peak memory is of order positions x vocab.
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
    """Per read-out layer and position statistics of a lens.

    ``target_rank`` is the number of tokens whose logit is above the target's (0: the target is the
    top-1); tokens tied with it count one half each, rounded down, the same rule at every layer
    (ties are real: SmolLM2's ``<thinking>`` LM-head row copies EOS). ``kl_to_final`` is
    KL(final layer || this layer).
    """

    top_ids: Int[Tensor, "layer n k"]
    top_probs: Float[Tensor, "layer n k"]
    entropy: Float[Tensor, "layer n"]
    kl_to_final: Float[Tensor, "layer n"]
    target_rank: Int[Tensor, "layer n"]
    target_prob: Float[Tensor, "layer n"]


_FINAL_LOGITS = 1 << 23  # positions per chunk: as many as keep this many final-layer logits (32 MiB)
_ROW_BLOCK = 1024  # read-outs (layer, position) per pass over the unembedding; more for small vocabularies
_SLICE = 1 << 19  # logits reduced while they are still in the cores' caches (2 MiB in float32)
_SLICES_PER_TOP_K = 16  # slices gathered before their top-k is taken: fewer, wider top-k calls
_MAX_STEP = 4096  # widest slice, as each block of rows spends about one more slice on its target logits


@torch.no_grad()
def lens_statistics(
    probe,
    resid: Float[Tensor, "layer n d_model"],
    targets: Int[Tensor, " n"],
    top_k: int = 5,
    chunk: int | None = None,
    translators=None,
    vocab_chunk: int | None = None,
) -> LensStats:
    """Reads every residual through the final norm and unembedding (after a tuned-lens translator
    when given) and reduces the logits to statistics, holding at most ``chunk`` positions of
    final-layer logits and one block of 1024 rows x 8192 logits (32 MiB each in float32).

    The last layer's logits are every KL's reference. All earlier read-outs are stacked as rows
    and multiplied by the unembedding in blocks of rows x vocabulary slices small enough to stay
    in cache; the statistics are reduced slice by slice (see ``_LogitReduction``). The KL's cross
    term needs no pass over the vocabulary: sum_v p_final(v) logit(v) = h . (p_final @ W).
    """
    n_layers, n = resid.shape[:2]
    weight, bias = _unembedding_parameters(probe)
    k = min(top_k, weight.shape[0])
    chunk = chunk or max(1, _FINAL_LOGITS // weight.shape[0])
    targets = targets.to(resid.device)
    parts = [
        _chunk_statistics(
            probe, weight, bias, resid[:, s : s + chunk], targets[s : s + chunk], k, translators, vocab_chunk
        )
        for s in range(0, n, chunk)
    ]
    if not parts:
        no_positions = torch.zeros(n_layers, 0)
        ids = torch.zeros(n_layers, 0, k, dtype=torch.long)
        return LensStats(ids, ids.float(), no_positions, no_positions, no_positions.long(), no_positions)
    stats = LensStats(
        **{name: torch.cat([getattr(p, name) for p in parts], 1) for name in LensStats.__dataclass_fields__}
    )
    missing = (targets < 0).cpu()
    stats.target_rank[:, missing] = -1
    stats.target_prob[:, missing] = float("nan")
    return stats


def _chunk_statistics(probe, weight, bias, resid, targets, k, translators, vocab_chunk) -> LensStats:
    """Lens statistics of every layer for one chunk of positions."""
    n_layers, n, d_model = resid.shape
    targets = targets.clamp(min=0)

    final_logits = probe.unembed(resid[-1]).float()
    final = _LogitReduction(targets, final_logits.gather(1, targets[:, None])[:, 0], k)
    step = vocab_chunk or max(64, _SLICE // n)
    for v0 in range(0, final_logits.shape[1], step):
        final.add(final_logits[:, v0 : v0 + step])
    final.add_top_k(final_logits, 0)
    final = final.finish()
    final_p = final_logits.sub_(final["lse"][:, None]).exp_()  # in place: the logits are not needed any more
    # sum_v p_final(v) * logit(v) = h . (p_final @ W) (+ p_final . b): one product, not one per layer
    final_mix = _vocab_sum(final_p.to(weight.dtype), weight).float()
    final_mix_bias = _vocab_sum(final_p, bias.float()[:, None])[:, 0].float() if bias is not None else 0.0
    del final_logits, final_p

    earlier = [translators(layer, resid[layer]) if translators else resid[layer] for layer in range(n_layers - 1)]
    h = probe.final_norm(torch.cat(earlier)).to(weight.dtype)  # [(layer n), d]: every earlier read-out as a row
    cross = torch.einsum("lnd,nd->ln", h.view(n_layers - 1, n, d_model).float(), final_mix) + final_mix_bias
    rows = _unembedding_statistics(h, weight, bias, targets.repeat(n_layers - 1), k, vocab_chunk)
    rows = {name: value.view(n_layers - 1, n, *value.shape[1:]) for name, value in rows.items()}
    kl = (rows.pop("lse") - cross - final["entropy"]).clamp(min=0)  # KL(final || layer)
    del final["lse"]
    stats = {name: torch.cat([rows[name], final[name][None]]).cpu() for name in final}
    return LensStats(**stats, kl_to_final=torch.cat([kl, kl.new_zeros(1, n)]).cpu())


def _unembedding_parameters(probe) -> tuple[Float[Tensor, "vocab d_model"], Float[Tensor, " vocab"] | None]:
    """The LM head's weight and bias; a bias of zeros (TransformerLens adds one) counts as none."""
    head = probe.lm.model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    return head.weight, bias if bias is not None and bool(bias.any()) else None


def _vocab_sum(p: Float[Tensor, "n vocab"], m: Float[Tensor, "vocab k"], block: int = 1024) -> Float[Tensor, "n k"]:
    """p @ m as a float64 sum of float32 products over blocks of ``block`` vocabulary rows.

    One product over the whole vocabulary is not accurate enough for the KL's cross term: for one
    or two rows of ``p`` BLAS switches to a matrix-vector product that accumulates all ~50k terms
    in one float32 sum (3e-3 off the KL in chunks of one or two positions). Blocks are multiplied
    a group at a time, the group's partial sums taking no more memory than ``p``.
    """
    whole = p.shape[1] // block * block
    p_blocks = p[:, :whole].unflatten(1, (-1, block)).transpose(0, 1)
    m_blocks = m[:whole].unflatten(0, (-1, block))
    total = (p[:, whole:] @ m[whole:]).double()
    group = max(1, p.shape[1] // m.shape[1])
    for g in range(0, len(p_blocks), group):
        total += torch.bmm(p_blocks[g : g + group], m_blocks[g : g + group]).sum(0, dtype=torch.float64)
    return total


def _logits_into(x: Float[Tensor, "r w"], rows: Float[Tensor, "r d_model"], w: Tensor, b: Tensor | None) -> None:
    """x = rows @ w.T (+ b) in float32: the one way every logit of the earlier layers is computed."""
    if w.dtype == torch.float32:
        torch.mm(rows, w.T, out=x)
    else:
        x.copy_(rows @ w.T)
    if b is not None:
        x += b.float()


def _target_logits(rows, weight, bias, targets, width: int) -> Float[Tensor, " r"]:
    """Each row's logit for its target, rounded exactly as its own column in the vocabulary slices.

    The rank compares every logit with this value; a separately computed dot product (an einsum)
    differs in the last bits, which turned exact ties (two identical LM-head rows) into tokens
    above or below. The distinct targets are gathered into products shaped like the slices
    (``width`` columns), which BLAS rounds the same way; about one slice per block of rows.
    """
    ids, column = targets.unique(return_inverse=True)
    ids = torch.cat([ids, ids.new_zeros(-len(ids) % width)])  # whole slices
    logits = torch.empty(rows.shape[0], len(ids), device=rows.device)
    for c0 in range(0, len(ids), width):
        part = ids[c0 : c0 + width]
        _logits_into(logits[:, c0 : c0 + width], rows, weight[part], bias[part] if bias is not None else None)
    return logits.gather(1, column[:, None])[:, 0]


def _unembedding_statistics(h, weight, bias, targets, k, vocab_chunk) -> dict[str, Tensor]:
    """Statistics of the logits h @ W.T (+ b) for every row of ``h``, never holding them all."""
    vocab = weight.shape[0]
    block_rows = min(h.shape[0], max(_ROW_BLOCK, _SLICE // vocab))
    step = min(vocab_chunk or min(_MAX_STEP, max(64, _SLICE // block_rows)), vocab)
    buffer = torch.empty(block_rows, min(step * _SLICES_PER_TOP_K, vocab), device=h.device)
    blocks = []
    for r0 in range(0, h.shape[0], block_rows):
        rows = h[r0 : r0 + block_rows]
        block = slice(r0, r0 + block_rows)
        reduction = _LogitReduction(targets[block], _target_logits(rows, weight, bias, targets[block], step), k)
        for w0 in range(0, vocab, buffer.shape[1]):
            logits = buffer[: rows.shape[0], : min(buffer.shape[1], vocab - w0)]
            for v0 in range(0, logits.shape[1], step):
                x = logits[:, v0 : v0 + step]
                part = slice(w0 + v0, w0 + v0 + x.shape[1])
                _logits_into(x, rows, weight[part], bias[part] if bias is not None else None)
                reduction.add(x)
            reduction.add_top_k(logits, w0)
        blocks.append(reduction.finish())
    return {name: torch.cat([b[name] for b in blocks]) for name in blocks[0]}


_MAX_SLICE_SUM = 1e17  # ~e^40: a slice whose exponentials sum above this is shifted by its own maximum


class _LogitReduction:
    """Softmax statistics of rows of logits that arrive one vocabulary slice at a time.

    Logits are shifted by the target's logit t, which serves the softmax and the rank at once:
    y = x - t, e = exp(y). Each slice leaves its shift c (t, or the slice's maximum when a logit
    lies more than ~40 nats above t), s = sum e and d = sum e y, and the sum of sign(y) (above
    minus below). ``finish`` merges slices against the largest shift C: lse = C + log S with
    S = sum s e^(c-C), entropy = log S - sum e^(c-C) (d + (c-C) s) / S. The rank counts logits
    above the target's, ties as halves (rounded down), the target's own column left out.
    """

    def __init__(self, targets: Int[Tensor, " r"], target_logit: Float[Tensor, " r"], k: int):
        self.targets = targets
        self.target_logit = target_logit
        self.k = k
        self.width = 0
        self.own_sign = torch.zeros_like(target_logit)
        self.shifts, self.sums, self.dots, self.signs, self.top_values, self.top_ids = [], [], [], [], [], []

    def add(self, x: Float[Tensor, "r w"]) -> None:
        """Reduces one vocabulary slice of logits (while it is still in cache)."""
        shifted = x - self.target_logit[:, None]
        e = shifted.exp()
        s = e.sum(-1)
        d = e.mul_(shifted).sum(-1)
        self.signs.append(shifted.sign_().sum(-1))
        shift = self.target_logit
        far = ~(s <= _MAX_SLICE_SUM)  # also catches an overflow to inf
        if far.any():
            rows = x[far]
            top = rows.amax(-1, keepdim=True)
            y = rows - top
            e = y.exp()
            s[far], d[far] = e.sum(-1), e.mul_(y).sum(-1)
            shift = shift.masked_scatter(far, top[:, 0])
        self.shifts.append(shift)
        self.sums.append(s)
        self.dots.append(d)
        self.width += x.shape[1]

    def add_top_k(self, x: Float[Tensor, "r w"], offset: int) -> None:
        """Top-k of logits already reduced by ``add``, which start at vocabulary id ``offset``."""
        values, ids = topk_by_blocks(x, self.k)
        self.top_values.append(values)
        self.top_ids.append(ids + offset)
        column = self.targets - offset
        inside = (column >= 0) & (column < x.shape[1])
        own = x.gather(1, column.clamp(0, x.shape[1] - 1)[:, None])[:, 0]
        self.own_sign += inside * (own - self.target_logit).sign()

    def finish(self) -> dict[str, Tensor]:
        c, s, d = (torch.stack(v, 1) for v in (self.shifts, self.sums, self.dots))
        top = c.amax(1, keepdim=True)
        weight = (c - top).exp()
        total = (s * weight).sum(1)
        lse = top[:, 0] + total.log()
        top_values, pick = torch.cat(self.top_values, 1).topk(self.k, dim=-1)
        others = torch.stack(self.signs, 1).sum(1) - self.own_sign  # above minus below, target left out
        return {
            "lse": lse,
            "entropy": total.log() - ((d + (c - top) * s) * weight).sum(1) / total,
            "top_ids": torch.cat(self.top_ids, 1).gather(1, pick),
            "top_probs": (top_values - lse[:, None]).exp(),
            "target_rank": ((self.width - 1 + others) / 2).floor().long(),
            "target_prob": (self.target_logit - lse).exp(),
        }


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

    def window(self, trace: int = 0, max_positions: int = 64) -> list[int]:
        """The columns :meth:`plot` shows for one trace: a window that always ends at the trace's
        last position (the answer) and starts as early as ``max_positions`` allows.

        The whole trace if it fits; else from the last prompt token on (the generated part); else
        from two positions before the first latent; else the last ``max_positions`` positions.
        """
        cols = [i for i, t in enumerate(self.trace_index) if t == trace]
        if not cols:
            raise ValueError(f"no trace {trace} in this result")
        if max_positions < 1:
            raise ValueError(f"max_positions must be at least 1, got {max_positions}")
        if len(cols) <= max_positions:
            return cols
        starts = [k for k, c in enumerate(cols) if self.kind[c] == "prompt"][-1:]
        starts += [max(0, k - 2) for k, c in enumerate(cols) if self.kind[c] == "latent"][:1]
        for start in starts:
            if len(cols) - start <= max_positions:
                return cols[start:]
        return cols[-max_positions:]

    def plot(self, trace: int = 0, value: str = "target_prob", max_positions: int = 64) -> go.Figure:
        """Heatmap of layers x positions for one trace, the top-1 token written in each cell.

        Traces longer than ``max_positions`` are windowed by :meth:`window`: the answer at the end is
        always shown, and the window starts at the last prompt token, or just before the first
        latent, when that fits; the title gives the positions shown.
        """
        every = [i for i, t in enumerate(self.trace_index) if t == trace]
        cols = self.window(trace, max_positions)
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
        shown = "" if len(cols) == len(every) else (
            f", positions {self.position[cols[0]]}-{self.position[cols[-1]]} of {len(every)}"
        )
        return apply_style(fig, 880, 340, f"{self.lens} lens: {value.replace('_', ' ')} (◆ = latent{shown})")


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
