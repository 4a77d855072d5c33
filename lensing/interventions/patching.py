"""Latent-aware activation patching: from a clean run into a corrupted run, addressed by latent step.

Each pair is a clean problem and a corrupted one of the same structure whose model answers
differ. Both traces are cut after their answer marker, followed by the answer tokens the two
answers share (so the next token is where they first differ: a digit, or EOS); the metric is
the logit difference ``logit(clean token) - logit(corrupted token)`` there. Positions are
addressed as ``(segment, index)`` -- ``("latent", k)`` is each trace's k-th latent, ``("prompt",
-1)`` its last prompt position, ``("cot_line", j)`` the newline ending CoT line j, ``("answer",
i)`` -- so traces of different lengths line up. Patching copies the clean activation at the
address into the corrupted run's activation at its own address, through the hooks of the
probe's TransformerLens bridge (on a weight-sharing shadow copy; the model is never touched, and
every hook is removed when the forward returns). Latent inputs after the patched position keep
the vectors the corrupted generation fed: patching measures what flows through attention and the
residual stream, not through the latent recurrence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from lensing.interventions.answers import answer_ids, answer_prefix, first_difference
from lensing.interventions.stats import DEFAULT_RESAMPLES, bootstrap_ratio_ci
from lensing.model import LatentLM, Trace
from lensing.probes.core import Probe
from lensing.tasks import Problem, answer_text
from lensing.viz.style import DIVERGING, apply_style

COMPONENTS = {"resid": "blocks.{layer}.hook_resid_pre", "attn": "blocks.{layer}.hook_attn_out", "mlp": "blocks.{layer}.hook_mlp_out"}
SEGMENTS = ("prompt", "cot", "cot_line", "latent", "answer")
ANCHORS = (("prompt", -1), ("cot_line", -1), ("answer", -1))  # last prompt position, end of the last CoT line, read-out


@dataclass
class Sequence_:
    """One sequence as fed to the bridge: input embeddings, kinds and token strings per position."""

    embeds: Float[Tensor, "pos d_model"]
    kinds: list[str]
    tokens: list[str]

    def __len__(self) -> int:
        return len(self.kinds)


def address(seq: Sequence_, where: tuple[str, int]) -> int | None:
    """Absolute position of ``(segment, index)`` in ``seq``, or None when it has no such position.

    ``cot_line`` j is the position of the newline that ends CoT line j (0-based); other segments
    count positions of that kind (negative indices from the end).
    """
    segment, index = where
    if segment not in SEGMENTS:
        raise ValueError(f"unknown segment {segment!r}; available: {', '.join(SEGMENTS)}")
    if segment == "cot_line":
        found = [p for p, (k, t) in enumerate(zip(seq.kinds, seq.tokens, strict=True)) if k == "cot" and t == "\n"]
    else:
        found = [p for p, k in enumerate(seq.kinds) if k == segment]
    if -len(found) <= index < len(found):
        return found[index]
    return None


def answer_sequence(lm: LatentLM, trace: Trace, shared: list[int]) -> Sequence_:
    """``trace`` through its answer marker, then the answer tokens ``shared`` (teacher-forced)."""
    embeds, kinds = answer_prefix(lm, trace)
    n = len(kinds)
    tokens = list(trace.tokens[:n]) + [lm.answer_marker or ""] * max(0, n - len(trace.tokens))
    tokens = tokens[:n]
    if shared:
        embeds = torch.cat([embeds, lm.embed(torch.tensor(shared, device=lm.device)).float().cpu()])
        kinds = kinds + ["answer"] * len(shared)
        tokens = tokens + lm.token_strings(shared)
    return Sequence_(embeds, kinds, tokens)


def _batch(seqs: Sequence[Sequence_], lm: LatentLM):
    width = max(len(s) for s in seqs)
    embeds = torch.zeros(len(seqs), width, lm.d_model)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        embeds[i, : len(s)] = s.embeds
        mask[i, : len(s)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    dev, dtype = lm.device, lm.model.dtype
    return embeds.to(dev, dtype), mask.to(dev), positions.to(dev)


@torch.no_grad()
def run_sequences(
    probe: Probe, seqs: Sequence[Sequence_], names: Sequence[str] = ()
) -> tuple[Float[Tensor, "batch pos vocab"], dict[str, Tensor]]:
    """Logits of a right-padded batch of sequences, and the activations at ``names``."""
    embeds, mask, positions = _batch(seqs, probe.lm)
    wanted = set(names)
    logits, cache = probe.bridge.run_with_cache(
        embeds, attention_mask=mask, position_ids=positions, names_filter=wanted.__contains__
    )
    return logits, {name: cache[name] for name in wanted}


@torch.no_grad()
def patched_logits(
    probe: Probe,
    corrupted: Sequence[Sequence_],
    clean_cache: dict[str, Tensor],
    patches: dict[str, list[tuple[int, int, int]]],
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of the corrupted batch with ``patches[name] = [(row, corrupted position, clean position)]``
    overwritten by the clean activations at ``name`` (hooks removed on return, also on error)."""
    embeds, mask, positions = _batch(corrupted, probe.lm)

    def make_hook(name: str) -> Callable:
        rows, dst, src = (torch.tensor(x, dtype=torch.long) for x in zip(*patches[name], strict=True))

        def hook(act, hook=None):
            act = act.clone()
            act[rows, dst] = clean_cache[name][rows, src].to(act.dtype)
            return act

        return hook

    hooks = [(name, make_hook(name)) for name, items in patches.items() if items]
    return probe.bridge.run_with_hooks(embeds, fwd_hooks=hooks, attention_mask=mask, position_ids=positions)


def pair_problems(problems: Sequence[Problem], answers: Sequence[str | int | None]) -> list[tuple[int, int]]:
    """Each problem paired with the next problem of the same structure whose model answer differs.

    Problems are taken in order; problem ``i`` (clean) gets the first unused later problem ``j``
    (corrupted) of its structure and difficulty with a different, parsed answer.
    """
    pairs, used = [], set()
    for i, p in enumerate(problems):
        if i in used or answers[i] is None:
            continue
        for j in range(i + 1, len(problems)):
            q = problems[j]
            if j not in used and q.structure == p.structure and q.steps == p.steps and answers[j] not in (None, answers[i]):
                pairs.append((i, j))
                used.update((i, j))
                break
    return pairs


@dataclass
class PatchingResult:
    """Fraction of the answer logit difference recovered, per component x address x layer.

    ``table`` rows: ``component``, ``segment``, ``index`` (latent step ...), ``layer``, ``n``
    (pairs that have the address), ``recovered`` (mean over pairs of ``LD_patched - LD_corrupted``
    over the mean of ``LD_clean - LD_corrupted``) and its bootstrap CI. ``pairs`` holds the
    per-pair logit differences.
    """

    model: str
    table: pd.DataFrame
    pairs: pd.DataFrame
    n_layers: int
    level: float = 0.95
    per_pair: dict = field(default_factory=dict, repr=False)

    def to_dataframe(self) -> pd.DataFrame:
        return self.table.copy()

    def grid(self, component: str = "resid", segment: str | None = "latent", value: str = "recovered") -> pd.DataFrame:
        """``value`` as a table: rows = index within ``segment`` (latent steps), columns = layers.

        ``segment=None`` keeps every address, rows labelled ``"latent 0"``, ``"cot_line -1"`` ...
        in the order they were patched.
        """
        t = self.table[self.table.component == component]
        if segment is not None:
            t = t[t.segment == segment]
        if t.empty:
            raise ValueError(f"no patching results for component {component!r} at segment {segment!r}")
        if segment is not None:
            return t.pivot(index="index", columns="layer", values=value).sort_index()
        labels = t.segment + " " + t["index"].astype(str)
        order = list(dict.fromkeys(labels))
        return t.assign(address=labels).pivot(index="address", columns="layer", values=value).loc[order]

    def to_json(self, component: str = "resid") -> dict:
        """What ``lensing patch --json`` prints: rows = latent steps, columns = layers."""

        def rows(value: str) -> list[list[float | None]]:
            g = self.grid(component, "latent", value)
            return [[None if not np.isfinite(v) else float(v) for v in row] for row in g.to_numpy()]

        g = self.grid(component, "latent")
        return {
            "model": self.model,
            "n": len(self.pairs),
            "component": component,
            "steps": [int(s) for s in g.index],
            "layers": [int(c) for c in g.columns],
            "recovered": rows("recovered"),
            "ci_low": rows("ci_low"),
            "ci_high": rows("ci_high"),
            "n_pairs": [int(v) for v in self.grid(component, "latent", "n").iloc[:, 0]],
            "anchors": {
                f"{seg} {idx}": [float(v) for v in part.sort_values("layer").recovered]
                for (seg, idx), part in self.table[
                    (self.table.component == component) & (self.table.segment != "latent")
                ].groupby(["segment", "index"], sort=False)
            },
            "level": self.level,
        }

    def plot(self, component: str = "resid", segment: str | None = None) -> go.Figure:
        """Heatmap of the fraction recovered: addresses (latent steps, then the segment anchors) x layers."""
        g = self.grid(component, segment)
        lo, hi = self.grid(component, segment, "ci_low"), self.grid(component, segment, "ci_high")
        n = self.grid(component, segment, "n")
        ylabels = [str(i) if segment is None else f"{segment} {i}" for i in g.index]
        text = [[f"{v:.2f}" for v in row] for row in g.to_numpy()]
        custom = np.stack([lo.to_numpy(), hi.to_numpy(), n.to_numpy()], -1)
        fig = go.Figure(
            go.Heatmap(
                z=g.to_numpy(),
                x=[f"L{c}" for c in g.columns],
                y=ylabels,
                colorscale=DIVERGING,
                zmid=0,
                zmin=-1,
                zmax=1,
                text=text,
                texttemplate="%{text}",
                customdata=custom,
                colorbar={"title": "recovered"},
                hovertemplate="%{y}, %{x}: %{z:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}], "
                "n=%{customdata[2]}<extra></extra>",
            )
        )
        fig.update_yaxes(autorange="reversed", title=segment or "address")
        fig.update_xaxes(title=f"layer ({component} patched at the block input)" if component == "resid" else "layer")
        return apply_style(fig, 520, 420, title=f"{self.model}: logit difference recovered ({component})")


@torch.no_grad()
def activation_patching(
    probe: Probe,
    problems: Sequence[Problem],
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    traces: Sequence[Trace] | None = None,
    components: Sequence[str] = ("resid", "attn", "mlp"),
    addresses: Sequence[tuple[str, int]] | None = None,
    min_pairs: int = 5,
    model: str = "model",
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    max_new_tokens: int = 160,
) -> PatchingResult:
    """Patches every component x address x layer from clean into corrupted runs; fraction recovered with CIs.

    Args:
        probe: ``lensing.attach(lm)``.
        problems: the problem set; ``pairs`` (clean, corrupted) index into it (default:
            :func:`pair_problems`, same structure, different model answers).
        traces: the problems' generated traces, when already at hand.
        addresses: ``(segment, index)`` rows (default: every latent step that at least
            ``min_pairs`` pairs reach in both runs, then :data:`ANCHORS`).
    """
    lm = probe.lm
    problems = list(problems)
    for c in components:
        if c not in COMPONENTS:
            raise ValueError(f"unknown component {c!r}; available: {', '.join(COMPONENTS)}")
    if traces is None:
        traces = lm.generate([p.prompt for p in problems], max_new_tokens=max_new_tokens)
    answers = [answer_text(t.text()) or None for t in traces]  # the written answer, for any task
    if sum(t.n_latents for t in traces) == 0 and addresses is None:
        raise ValueError(
            f"{model} emitted no <thinking> latents on these {len(problems)} problems: there are no latent steps to "
            "patch; use a latent model (arith-tiny:lt or :hidden) or give addresses such as [('prompt', -1)]"
        )
    pairs = pair_problems(problems, answers) if pairs is None else list(pairs)
    pairs = [(i, j) for i, j in pairs if answers[i] is not None and answers[j] is not None and answers[i] != answers[j]]
    if not pairs:
        raise ValueError(
            "no (clean, corrupted) pair with two different parsed answers: give more problems of one structure"
        )
    clean_seqs, corrupt_seqs, clean_tok, corrupt_tok = [], [], [], []
    for i, j in pairs:
        a, b = answer_ids(lm, answers[i]), answer_ids(lm, answers[j])
        d = first_difference(a, b)
        clean_seqs.append(answer_sequence(lm, traces[i], a[:d]))
        corrupt_seqs.append(answer_sequence(lm, traces[j], b[:d]))
        clean_tok.append(a[d])
        corrupt_tok.append(b[d])
    names = [COMPONENTS[c].format(layer=layer) for c in components for layer in range(probe.n_layers)]
    clean_logits, cache = run_sequences(probe, clean_seqs, names)
    corrupt_logits, _ = run_sequences(probe, corrupt_seqs)
    rows_idx = torch.arange(len(pairs))
    clean_last = torch.tensor([len(s) - 1 for s in clean_seqs])
    corrupt_last = torch.tensor([len(s) - 1 for s in corrupt_seqs])
    ct, rt = torch.tensor(clean_tok), torch.tensor(corrupt_tok)

    def logit_diff(logits: Tensor, last: Tensor) -> np.ndarray:
        at = logits[rows_idx, last].float().cpu()
        return (at[rows_idx, ct] - at[rows_idx, rt]).double().numpy()

    ld_clean, ld_corrupt = logit_diff(clean_logits, clean_last), logit_diff(corrupt_logits, corrupt_last)
    if addresses is None:
        depth = max(t.n_latents for t in traces)
        addresses = [
            ("latent", k)
            for k in range(depth)
            if sum(
                address(c, ("latent", k)) is not None and address(r, ("latent", k)) is not None
                for c, r in zip(clean_seqs, corrupt_seqs, strict=True)
            )
            >= min_pairs
        ] + list(ANCHORS)
    records, per_pair = [], {}
    for where in addresses:
        located = [
            (row, address(r, where), address(c, where))
            for row, (c, r) in enumerate(zip(clean_seqs, corrupt_seqs, strict=True))
        ]
        located = [(row, dst, src) for row, dst, src in located if dst is not None and src is not None]
        if not located:
            continue
        rows = np.array([row for row, _, _ in located])
        for component in components:
            for layer in range(probe.n_layers):
                name = COMPONENTS[component].format(layer=layer)
                patched = logit_diff(patched_logits(probe, corrupt_seqs, cache, {name: located}), corrupt_last)
                num = patched[rows] - ld_corrupt[rows]
                den = ld_clean[rows] - ld_corrupt[rows]
                value, lo, hi = bootstrap_ratio_ci(num, den, level, resamples, seed)
                per_pair[(component, *where, layer)] = patched
                records.append(
                    {
                        "component": component,
                        "segment": where[0],
                        "index": where[1],
                        "layer": layer,
                        "n": len(rows),
                        "recovered": value,
                        "ci_low": lo,
                        "ci_high": hi,
                    }
                )
    pair_table = pd.DataFrame(
        {
            "clean": [i for i, _ in pairs],
            "corrupted": [j for _, j in pairs],
            "structure": [problems[i].structure for i, _ in pairs],
            "clean_answer": [answers[i] for i, _ in pairs],
            "corrupted_answer": [answers[j] for _, j in pairs],
            "clean_latents": [traces[i].n_latents for i, _ in pairs],
            "corrupted_latents": [traces[j].n_latents for _, j in pairs],
            "ld_clean": ld_clean,
            "ld_corrupted": ld_corrupt,
        }
    )
    return PatchingResult(model, pd.DataFrame(records), pair_table, probe.n_layers, level, per_pair)
