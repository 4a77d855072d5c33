"""Interventions on latent steps during generation, and their effects on the answer with bootstrap CIs.

An :class:`Intervention` says what to do (replace the latent input vector at chosen latent
steps, or change the model's decision to think); :func:`intervene` runs the clean generation
and the intervened one over the same problems (batched, KV-cached, through the ``intervention``
hook of :meth:`LatentLM.generate`) and returns per-example effects and paired bootstrap CIs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensing.interventions.answers import Scored, answer_ids, first_difference, score_answers
from lensing.interventions.stats import DEFAULT_RESAMPLES, bootstrap_ci
from lensing.model import LatentLM, Trace
from lensing.tasks import Problem, answer_text
from lensing.tasks import get as get_task
from lensing.viz.style import OKABE_ITO, apply_style

LATENT_KINDS = ("zero", "mean", "shuffle", "swap", "noise", "thinking", "nearest", "h-only", "pred-only")
DECISION_KINDS = ("ban", "force", "truncate")
KINDS = ("none", *LATENT_KINDS, *DECISION_KINDS)
FUSION_ONLY = ("h-only", "pred-only")


@dataclass(frozen=True)
class Intervention:
    """What to do to the latents of a generation.

    Args:
        kind: ``none``; a latent replacement (``zero``, ``mean``, ``shuffle``, ``swap``, ``noise``,
            ``thinking``, ``nearest``, ``h-only``, ``pred-only``); or a decision change (``ban``,
            ``force``, ``truncate``).
        step: ``"all"`` or the index (0-based) of the one latent step to replace, counted within
            each trace. Decision kinds act on the whole generation and take ``"all"``.
        k: for ``force`` (k latents right after the prompt) and ``truncate`` (at most k latents).
        pairs: for ``swap``, the problem index pairs whose latents are exchanged (applied in
            order; default: consecutive problems (0, 1), (2, 3), ...).
        seed: seeds ``shuffle`` donors and ``noise`` directions.
    """

    kind: str
    step: int | str = "all"
    k: int | None = None
    pairs: tuple[tuple[int, int], ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown intervention kind {self.kind!r}; available: {', '.join(KINDS)}")
        if self.step != "all" and not (isinstance(self.step, int) and self.step >= 0):
            raise ValueError(f"step must be 'all' or a latent index >= 0, got {self.step!r}")
        if self.kind in DECISION_KINDS and self.step != "all":
            raise ValueError(f"{self.kind!r} changes the decision to think for the whole generation: use step 'all'")
        if self.kind in ("force", "truncate"):
            if not isinstance(self.k, int) or self.k < 0:
                raise ValueError(f"{self.kind!r} needs a number of latents K >= 0 (e.g. '{self.kind} 2'), got {self.k!r}")
        elif self.k is not None:
            raise ValueError(f"only 'force' and 'truncate' take a number of latents; {self.kind!r} got {self.k!r}")
        if self.pairs is not None:
            if self.kind != "swap":
                raise ValueError(f"only 'swap' takes pairs; {self.kind!r} got {self.pairs!r}")
            if any(len(p) != 2 or p[0] == p[1] for p in self.pairs):
                raise ValueError(f"swap pairs must be two different problem indices each, got {self.pairs!r}")

    @classmethod
    def parse(cls, text: str, step: int | str = "all", **options) -> Intervention:
        """From text such as ``"zero"``, ``"force 3"``, ``"truncate:1"`` or ``"h-only"``.

        >>> Intervention.parse("force 3").k
        3
        """
        match = re.fullmatch(r"\s*([a-z-]+)(?:[\s:=]+(\d+))?\s*", text)
        if not match:
            raise ValueError(f"cannot read intervention {text!r}; write a kind such as 'zero' or 'force 2'")
        kind, k = match.group(1), match.group(2)
        if isinstance(step, str) and step != "all":
            if not step.isdigit():
                raise ValueError(f"step must be 'all' or a latent index >= 0, got {step!r}")
            step = int(step)
        return cls(kind, step=step, k=None if k is None else int(k), **options)

    @property
    def name(self) -> str:
        """Short label: the kind, its K, and the step when it is not all."""
        label = self.kind if self.k is None else f"{self.kind} {self.k}"
        return label if self.step == "all" else f"{label} @{self.step}"


def swap_donors(n: int, pairs: Sequence[tuple[int, int]] | None) -> list[int]:
    """Donor index for every problem after exchanging each pair in order (a pair twice cancels).

    >>> swap_donors(4, None), swap_donors(3, [(0, 2), (0, 2)])
    ([1, 0, 3, 2], [0, 1, 2])
    """
    donors = list(range(n))
    pairs = [(i, i + 1) for i in range(0, n - 1, 2)] if pairs is None else pairs
    for a, b in pairs:
        if not (0 <= a < n and 0 <= b < n):
            raise ValueError(f"swap pair ({a}, {b}) is outside the {n} problems")
        donors[a], donors[b] = donors[b], donors[a]
    return donors


def fed_latents(trace: Trace) -> Float[Tensor, "n_latent d_model"]:
    """The latent input vectors a trace fed, in order."""
    return trace.input_embeds[trace.latent_positions]


class LatentHook:
    """The per-batch object :meth:`LatentLM.generate` calls (``tokens`` then ``latents`` each step).

    ``source`` holds, for every problem of the whole set, the latent vectors a reference run
    fed (the clean run by default): ``mean``, ``shuffle`` and ``swap`` read them. ``rows`` are the
    set indices of this batch's rows.
    """

    def __init__(
        self,
        lm: LatentLM,
        spec: Intervention,
        rows: Sequence[int],
        source: Sequence[Tensor],
        generator: torch.Generator,
    ) -> None:
        self.lm, self.spec, self.rows = lm, spec, list(rows)
        dev = lm.device
        self.count = torch.zeros(len(rows), dtype=torch.long, device=dev)
        self.replaced = torch.zeros(len(rows), dtype=torch.long, device=dev)
        self.source = source
        self.generator = generator
        self.weight = lm.model.get_input_embeddings().weight
        if spec.kind == "mean":
            d = lm.d_model
            stacked = [s for s in source if len(s)]
            self.overall = torch.cat(stacked).mean(0) if stacked else torch.zeros(d)
            depth = max((len(s) for s in source), default=0)
            self.step_means = [
                torch.stack([s[k] for s in source if len(s) > k]).mean(0) for k in range(depth)
            ]
        if spec.kind in ("shuffle",):
            rng = np.random.default_rng(spec.seed)
            self.order = {r: [int(x) for x in rng.permutation(len(source)) if x != r] for r in range(len(source))}
            stacked = [s for s in source if len(s)]
            self.overall = torch.cat(stacked).mean(0) if stacked else torch.zeros(lm.d_model)
        if spec.kind == "swap":
            self.donors = swap_donors(len(source), spec.pairs)

    # ----------------------------------------------------------- decisions
    def _no_think(self, logits: Float[Tensor, "batch vocab"]) -> Int[Tensor, " batch"]:
        masked = logits.clone()
        masked[:, self.lm.thinking_id] = float("-inf")
        return masked.argmax(-1)

    def tokens(self, step: int, token: Int[Tensor, " batch"], logits: Float[Tensor, "batch vocab"]):
        kind, think = self.spec.kind, self.lm.thinking_id
        if kind == "ban":
            return torch.where(token == think, self._no_think(logits), token)
        if kind == "force":
            return torch.full_like(token, think) if step < self.spec.k else token
        if kind == "truncate":
            return torch.where((token == think) & (self.count >= self.spec.k), self._no_think(logits), token)
        return token

    # ------------------------------------------------------------- latents
    def latents(
        self,
        step: int,
        latent: Float[Tensor, "batch d_model"],
        h: Float[Tensor, "batch d_model"],
        e_pred: Float[Tensor, "batch d_model"],
        is_latent: Bool[Tensor, " batch"],
    ) -> Float[Tensor, "batch d_model"]:
        index = self.count.clone()
        self.count += is_latent.long()
        if self.spec.kind not in LATENT_KINDS:
            return latent
        target = is_latent if self.spec.step == "all" else is_latent & (index == self.spec.step)
        if self.spec.kind == "swap":
            target = target & torch.tensor(
                [self.donors[r] != r and len(self.source[self.donors[r]]) > int(index[i]) for i, r in enumerate(self.rows)],
                device=target.device,
            )
        if not target.any():
            return latent
        new = self._replacement(latent, h, e_pred, index, target).to(latent.dtype)
        self.replaced += target.long()
        return torch.where(target[:, None], new, latent)

    def _from_source(self, index: Tensor, target: Tensor, pick) -> Tensor:
        out = torch.zeros(len(self.rows), self.lm.d_model)
        for i, r in enumerate(self.rows):
            if target[i]:
                out[i] = pick(r, int(index[i]))
        return out.to(self.weight.device)

    def _replacement(self, latent, h, e_pred, index, target) -> Tensor:
        kind = self.spec.kind
        adapter = self.lm.adapter
        if kind == "zero":
            return torch.zeros_like(latent)
        if kind == "mean":
            return self._from_source(
                index, target, lambda r, k: self.step_means[k] if k < len(self.step_means) else self.overall
            )
        if kind == "shuffle":

            def donor(r: int, k: int) -> Tensor:
                for other in self.order[r]:
                    if len(self.source[other]) > k:
                        return self.source[other][k]
                return self.overall

            return self._from_source(index, target, donor)
        if kind == "swap":
            return self._from_source(index, target, lambda r, k: self.source[self.donors[r]][k])
        if kind == "noise":
            g = torch.randn(latent.shape, generator=self.generator, device="cpu").to(latent.device)
            return g / g.norm(dim=-1, keepdim=True) * latent.norm(dim=-1, keepdim=True)
        if kind == "thinking":
            return self.weight[self.lm.thinking_id].expand_as(latent)
        if kind == "nearest":
            dist = torch.cdist(latent.float(), self.weight.float())
            dist[:, self.lm.thinking_id] = float("inf")
            return self.weight[dist.argmin(-1)]
        part = h.to(latent.dtype) if kind == "h-only" else e_pred.to(latent.dtype)
        return adapter(part) if adapter is not None else part


# ------------------------------------------------------------------ running
def generate_problems(
    lm: LatentLM,
    problems: Sequence[Problem],
    spec: Intervention | None = None,
    source: Sequence[Tensor] | None = None,
    batch_size: int = 200,
    max_new_tokens: int = 160,
) -> tuple[list[Trace], list[int]]:
    """Traces for every problem (clean when ``spec`` is None) and how many latents were replaced in each.

    Models trained with latents in place of CoT steps (Coconut, pause, step supervision) get
    their latents forced after the prompt as their checkpoint records (as in evaluation).
    """
    from lensing.train.evaluate import forced_latents

    rule = forced_latents(lm)
    counts = [rule(p) if rule else 0 for p in problems]
    traces: list[Trace | None] = [None] * len(problems)
    replaced = [0] * len(problems)
    for count in sorted(set(counts)):
        group = [i for i, c in enumerate(counts) if c == count]
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            chunk = [problems[i] for i in rows]
            hook = None
            if spec is not None:
                generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + rows[0])
                hook = LatentHook(lm, spec, rows, source or [], generator)
            out = lm.generate(
                [p.prompt for p in chunk],
                max_new_tokens=max_new_tokens,
                meta=[{"steps": p.steps, "structure": p.structure, "answer": p.answer} for p in chunk],
                intervention=hook,
                force_latents=count,
            )
            for i, trace in zip(rows, out, strict=True):
                traces[i] = trace
            if hook is not None:
                for i, n in zip(rows, hook.replaced.tolist(), strict=True):
                    replaced[i] = n
    return traces, replaced


def check_intervention(lm: LatentLM, spec: Intervention, clean: Sequence[Trace], model: str = "the model") -> None:
    """Clear errors for an intervention that cannot apply to this model or run."""
    if spec.kind in FUSION_ONLY and lm.config.mode != "fusion":
        raise ValueError(
            f"{spec.kind!r} drops one part of the fusion latent, but {model} builds '{lm.config.mode}' latents; "
            "use a fusion model such as arith-tiny:lt"
        )
    if spec.kind in ("none", "force"):
        return
    if sum(t.n_latents for t in clean) == 0:
        raise ValueError(
            f"{model} emitted no <thinking> latents on these {len(clean)} problems, so there is nothing for "
            f"{spec.kind!r} to act on; use a latent model (arith-tiny:lt or :hidden), or 'force K' to make it think"
        )
    if spec.kind == "swap":
        swap_donors(len(clean), spec.pairs)  # checks the pairs


@dataclass
class InterventionResult:
    """Clean and intervened runs over the same problems: per-example effects and paired bootstrap CIs.

    ``examples`` has one row per problem: ``correct`` / ``clean_correct``, ``answer`` /
    ``clean_answer``, ``answer_changed``, ``logprob_gold`` (teacher-forced log-probability of the
    gold answer and EOS at the answer position) and its clean value, ``logit_diff`` (at the first
    answer token where gold and the foil differ, logit of gold minus logit of the foil; the foil
    is the clean run's answer when it was wrong, else the clean run's strongest non-gold token
    there) and its clean value, and the number of latents emitted and replaced.
    """

    model: str
    intervention: Intervention
    examples: pd.DataFrame
    clean_traces: list[Trace] = field(repr=False)
    traces: list[Trace] = field(repr=False)
    level: float = 0.95
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0

    def ci(self, column: str) -> tuple[float, float, float]:
        """Mean of a per-example column and its bootstrap interval (same resamples for every column)."""
        return bootstrap_ci(self.examples[column].astype(float).to_numpy(), self.level, self.resamples, self.seed)

    def summary(self) -> dict:
        """The numbers ``lensing intervene --json`` prints (accuracies as fractions)."""
        acc, acc_lo, acc_hi = self.ci("correct")
        clean, clean_lo, clean_hi = self.ci("clean_correct")
        changed, ch_lo, ch_hi = self.ci("answer_changed")
        dlp, dlp_lo, dlp_hi = self.ci("delta_logprob_gold")
        dacc, dacc_lo, dacc_hi = self.ci("delta_correct")
        return {
            "model": self.model,
            "kind": self.intervention.kind if self.intervention.k is None else self.intervention.name,
            "step": self.intervention.step,
            "n": len(self.examples),
            "clean": {"accuracy": clean, "ci": [clean_lo, clean_hi]},
            "intervened": {"accuracy": acc, "ci": [acc_lo, acc_hi]},
            "delta_accuracy": {"mean": dacc, "ci": [dacc_lo, dacc_hi]},
            "answer_changed": {"rate": changed, "ci": [ch_lo, ch_hi]},
            "delta_logprob_gold": {"mean": dlp, "ci": [dlp_lo, dlp_hi]},
            "mean_latents": {
                "clean": float(self.examples.n_latents_clean.mean()),
                "intervened": float(self.examples.n_latents.mean()),
                "replaced": float(self.examples.n_replaced.mean()),
            },
            "level": self.level,
            "resamples": self.resamples,
            "seed": self.seed,
        }

    def to_dataframe(self) -> pd.DataFrame:
        """The per-example table (one row per problem)."""
        return self.examples.copy()

    def plot(self) -> go.Figure:
        """Accuracy of the clean and the intervened run with their CIs, and the answer-change rate."""
        return InterventionSweep(self.model, [self]).plot()


def intervene(
    lm: LatentLM,
    problems: Sequence[Problem],
    intervention: Intervention | str,
    *,
    step: int | str = "all",
    clean: Sequence[Trace] | None = None,
    source: Sequence[Trace] | None = None,
    model: str = "model",
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    batch_size: int = 200,
    max_new_tokens: int = 160,
    _scored_clean: Sequence[Scored] | None = None,
) -> InterventionResult:
    """Runs ``problems`` clean and with ``intervention``; effects per example, paired bootstrap CIs.

    Args:
        intervention: an :class:`Intervention` or its text (``"zero"``, ``"force 2"``; ``step``
            then applies).
        clean: the clean traces of these problems when already generated (reused, not rerun).
        source: traces whose fed latents ``mean`` / ``shuffle`` / ``swap`` take (default: clean).
        seed: seeds the bootstrap (and, for text interventions, shuffle donors and noise).
    """
    spec = Intervention.parse(intervention, step=step, seed=seed) if isinstance(intervention, str) else intervention
    problems = list(problems)
    if not problems:
        raise ValueError("no problems given: pass at least one")
    if clean is None:
        clean, _ = generate_problems(lm, problems, None, batch_size=batch_size, max_new_tokens=max_new_tokens)
    clean = list(clean)
    if len(clean) != len(problems):
        raise ValueError(f"{len(clean)} clean traces for {len(problems)} problems")
    check_intervention(lm, spec, clean, model)
    src = [fed_latents(t) for t in (source if source is not None else clean)]
    if len(src) != len(problems):
        raise ValueError(f"{len(src)} source traces for {len(problems)} problems")
    traces, replaced = generate_problems(lm, problems, spec, src, batch_size, max_new_tokens)
    examples = effects_table(lm, problems, clean, traces, replaced, scored_clean=_scored_clean)
    return InterventionResult(model, spec, examples, clean, traces, level, resamples, seed)


def effects_table(
    lm: LatentLM,
    problems: Sequence[Problem],
    clean: Sequence[Trace],
    traces: Sequence[Trace],
    replaced: list[int],
    scored_clean: Sequence[Scored] | None = None,
) -> pd.DataFrame:
    """Per-example effects of an intervened run against the clean run (see :class:`InterventionResult`).

    ``scored_clean``: the clean traces' gold-answer scoring (:func:`score_answers`), when a sweep
    already has it (it depends on the clean run only).
    """
    gold_ids = [answer_ids(lm, p.answer) for p in problems]
    clean_answers = [answer_text(t.text()) for t in clean]  # as written: every task's answers are text
    answers = [answer_text(t.text()) for t in traces]
    if scored_clean is None:
        scored_clean = score_answers(lm, list(clean), gold_ids)
    scored = score_answers(lm, list(traces), gold_ids)
    rows = []
    for i, p in enumerate(problems):
        gold, check = gold_ids[i], get_task(p.task).check
        where = first_difference(gold, answer_ids(lm, clean_answers[i]))
        if where is None:  # the clean run was right: the foil is its strongest other token at the first answer token
            where = 0
            competing = scored_clean[i].logits[0].clone()
            competing[gold[0]] = float("-inf")
            foil = int(competing.argmax())
        else:
            foil = answer_ids(lm, clean_answers[i])[where]

        def diff(s) -> float:
            return float(s.logits[where, gold[where]] - s.logits[where, foil])

        rows.append(
            {
                "problem": i,
                "steps": p.steps,
                "structure": p.structure,
                "gold": p.answer,
                "clean_answer": clean_answers[i],
                "answer": answers[i],
                "clean_correct": check(clean[i].text(), p),
                "correct": check(traces[i].text(), p),
                "answer_changed": answers[i] != clean_answers[i],
                "logprob_gold_clean": scored_clean[i].logprob,
                "logprob_gold": scored[i].logprob,
                "logit_diff_clean": diff(scored_clean[i]),
                "logit_diff": diff(scored[i]),
                "n_latents_clean": clean[i].n_latents,
                "n_latents": traces[i].n_latents,
                "n_replaced": replaced[i],
            }
        )
    table = pd.DataFrame(rows)
    table["delta_correct"] = table.correct.astype(float) - table.clean_correct.astype(float)
    table["delta_logprob_gold"] = table.logprob_gold - table.logprob_gold_clean
    table["delta_logit_diff"] = table.logit_diff - table.logit_diff_clean
    return table


# --------------------------------------------------------------------- sweeps
@dataclass
class InterventionSweep:
    """Several interventions on the same problems and clean run."""

    model: str
    results: list[InterventionResult]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per intervention: accuracy, answer-change rate, delta log-prob and latents, with CIs."""
        rows = []
        for r in self.results:
            s = r.summary()
            rows.append(
                {
                    "model": self.model,
                    "intervention": r.intervention.name,
                    "n": s["n"],
                    "clean_accuracy": s["clean"]["accuracy"],
                    "clean_lo": s["clean"]["ci"][0],
                    "clean_hi": s["clean"]["ci"][1],
                    "accuracy": s["intervened"]["accuracy"],
                    "accuracy_lo": s["intervened"]["ci"][0],
                    "accuracy_hi": s["intervened"]["ci"][1],
                    "answer_changed": s["answer_changed"]["rate"],
                    "answer_changed_lo": s["answer_changed"]["ci"][0],
                    "answer_changed_hi": s["answer_changed"]["ci"][1],
                    "delta_logprob_gold": s["delta_logprob_gold"]["mean"],
                    "delta_logprob_gold_lo": s["delta_logprob_gold"]["ci"][0],
                    "delta_logprob_gold_hi": s["delta_logprob_gold"]["ci"][1],
                    "mean_latents": s["mean_latents"]["intervened"],
                    "mean_latents_clean": s["mean_latents"]["clean"],
                }
            )
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        """Accuracy under each intervention with 95% CIs; the clean accuracy and its CI as a band."""
        t = self.to_dataframe()
        fig = go.Figure()
        clean, lo, hi = t.clean_accuracy.iloc[0], t.clean_lo.iloc[0], t.clean_hi.iloc[0]
        fig.add_hrect(y0=lo, y1=hi, fillcolor=OKABE_ITO["grey"], opacity=0.25, line_width=0)
        fig.add_hline(y=clean, line_dash="dash", line_color=OKABE_ITO["black"], annotation_text="clean")
        fig.add_bar(
            x=t.intervention,
            y=t.accuracy,
            error_y={"type": "data", "symmetric": False, "array": t.accuracy_hi - t.accuracy, "arrayminus": t.accuracy - t.accuracy_lo},
            marker_color=OKABE_ITO["vermillion"],
            name="accuracy",
            customdata=np.stack([t.answer_changed, t.mean_latents], -1),
            hovertemplate="%{x}: accuracy %{y:.3f}<br>answer changed %{customdata[0]:.3f}<br>"
            "mean latents %{customdata[1]:.2f}<extra></extra>",
        )
        fig.update_yaxes(title="accuracy", range=[0, 1.05])
        fig.update_xaxes(title="intervention (all latent steps)")
        return apply_style(fig, 880, 360, title=f"{self.model}: accuracy under latent interventions (95% CI)")


def intervention_sweep(
    lm: LatentLM,
    problems: Sequence[Problem],
    interventions: Sequence[Intervention | str],
    *,
    model: str = "model",
    seed: int = 0,
    **options,
) -> InterventionSweep:
    """:func:`intervene` for each intervention, sharing one clean run; kinds that do not apply to
    the model (``h-only`` / ``pred-only`` on a non-fusion model) are skipped."""
    problems = list(problems)
    clean = options.pop("clean", None)
    if clean is None:
        clean, _ = generate_problems(
            lm, problems, None, batch_size=options.get("batch_size", 200), max_new_tokens=options.get("max_new_tokens", 160)
        )
    clean = list(clean)
    scored_clean = None  # scored once, on the first intervention that applies, and shared
    results = []
    for item in interventions:
        spec = Intervention.parse(item, seed=seed) if isinstance(item, str) else item
        if spec.kind in FUSION_ONLY and lm.config.mode != "fusion":
            continue
        if scored_clean is None and len(clean) == len(problems):
            scored_clean = score_answers(lm, clean, [answer_ids(lm, p.answer) for p in problems])
        results.append(
            intervene(lm, problems, spec, clean=clean, model=model, seed=seed, _scored_clean=scored_clean, **options)
        )
    return InterventionSweep(model, results)
