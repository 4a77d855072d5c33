"""Curricula behind one interface: the stages each trains, their data and their share of the budget.

=========  ==================================================================================
cot        the written chain of thought (one stage)
nocot      the answer alone (one stage)
lt         LT-Tuning: CoT, then hidden-state latents, then fusion latents, each stage on
           Confidence-Driven Insertion data built by the stage before
coconut    Coconut: CoT, then stage s replaces the first s CoT lines by ``latents_per_step``
           latents (fed back from the position before), no loss on the latents
stepsup    coconut plus step-level supervision: the position before step j's last latent is
           trained to predict the value step j reaches (the task's ``intermediates``)
pause      the coconut schedule with pause tokens: a latent's input is the `<thinking>` token's
           own learned embedding, so nothing computed flows through it
codi       CODI (Shen et al. 2025): after a CoT stage, a CoT teacher and a fully latent student
           share the weights; both learn their text, and the student's hidden states (every
           layer) at the position that predicts the answer are pulled to the teacher's
           (teacher detached, smooth L1 scaled by the teacher's spread per layer)
=========  ==================================================================================

Every curriculum spends its budget as ``TrainConfig.steps`` say (one entry per stage) or, with
``budget`` steps in all, splits them by the curriculum's stage weights, so variants compared at
the same budget have taken the same number of optimizer steps.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lensing.model import LatentLM
from lensing.tasks import ANSWER_MARKER
from lensing.train.data import Example, answer_only, collate, encode_problems, insert_latents, latent_steps_examples

if TYPE_CHECKING:
    from lensing.train.curriculum import TrainConfig

CURRICULA = ("cot", "nocot", "lt", "coconut", "stepsup", "pause", "codi")
LATENT_KINDS = ("hidden", "fusion", "prediction")


@dataclass(frozen=True)
class Stage:
    """One stage: its checkpoint folder, the latent mode it trains, how its data is built from the
    plain CoT examples (with the model as the previous stage left it), and its share of a budget."""

    name: str
    mode: str
    build: Callable[[LatentLM, list[Example], int, TrainConfig], list[Example]]
    weight: float
    latent_steps: int | None = None  # Coconut-style stages: CoT lines replaced by latents
    loss: Callable[[LatentLM, list[Example]], Tensor] | None = None  # None: cross-entropy on the labels

    def inference(self, per_step: int) -> dict:
        """What evaluation must do with this stage's model (recorded in its checkpoint)."""
        if self.latent_steps is None:
            return {}
        return {"latents_per_step": per_step, "max_latent_steps": self.latent_steps}


def _plain(lm: LatentLM, plain: list[Example], seed: int, cfg: TrainConfig) -> list[Example]:
    return plain


def _no_cot(lm: LatentLM, plain: list[Example], seed: int, cfg: TrainConfig) -> list[Example]:
    return answer_only(lm, plain)


def _inserted(lm: LatentLM, plain: list[Example], seed: int, cfg: TrainConfig) -> list[Example]:
    return insert_latents(lm, plain, seed=seed, real_vocab=cfg.insertion_scoring == "real-vocab")


def _latent_steps(s: int, per_step: int, supervise: bool):
    def build(lm: LatentLM, plain: list[Example], seed: int, cfg: TrainConfig) -> list[Example]:
        examples = latent_steps_examples(lm, plain, s, per_step, supervise_steps=supervise)
        if cfg.mix_previous <= 0 or s <= 1:
            return examples
        # Coconut's mixing: a share of the stage's examples come from an earlier stage (0 = CoT)
        rng = random.Random(seed)
        mixed = [rng.randrange(s) if rng.random() < cfg.mix_previous else s for _ in examples]
        earlier = {
            t: latent_steps_examples(lm, plain, t, per_step, supervise_steps=supervise) for t in set(mixed) - {s}
        }
        return [examples[i] if t == s else earlier[t][i] for i, t in enumerate(mixed)]

    return build


def stages(curriculum: str, max_steps: int, latent_kind: str = "hidden", per_step: int = 1) -> list[Stage]:
    """The stages of ``curriculum`` for a task whose hardest problems have ``max_steps`` CoT lines.

    >>> [s.name for s in stages("stepsup", 3)]
    ['cot', 'stage1', 'stage2', 'stepsup']
    >>> [round(s.weight, 3) for s in stages("coconut", 4)]
    [0.5, 0.125, 0.125, 0.125, 0.125]
    """
    if curriculum not in CURRICULA:
        raise ValueError(f"unknown curriculum {curriculum!r}; available: {', '.join(CURRICULA)}")
    if latent_kind not in LATENT_KINDS:
        raise ValueError(f"unknown latent kind {latent_kind!r}; available: {', '.join(LATENT_KINDS)}")
    if curriculum == "cot":
        return [Stage("cot", "fusion", _plain, 1.0)]
    if curriculum == "nocot":
        return [Stage("nocot", "fusion", _no_cot, 1.0)]
    if curriculum == "lt":
        return [
            Stage("cot", "fusion", _plain, 0.5),
            Stage("hidden", "hidden", _inserted, 0.2),
            Stage("lt", "fusion", _inserted, 0.3),
        ]
    if curriculum == "codi":
        student = Stage("codi", latent_kind, _latent_steps(max_steps, per_step, False), 0.5, max_steps, codi_loss)
        return [Stage("cot", latent_kind, _plain, 0.5), student]
    mode = "token" if curriculum == "pause" else latent_kind
    supervise = curriculum == "stepsup"
    latent = [
        Stage(
            curriculum if s == max_steps else f"stage{s}",
            mode,
            _latent_steps(s, per_step, supervise),
            0.5 / max_steps,
            latent_steps=s,
        )
        for s in range(1, max_steps + 1)
    ]
    return [Stage("cot", mode, _plain, 0.5), *latent]


def codi_loss(lm: LatentLM, students: list[Example], weight: float = 1.0) -> Tensor:
    """CODI's objective on a batch of fully latent students: the teacher's CoT cross-entropy, the
    student's cross-entropy, and ``weight`` x the distillation of every layer's hidden state at
    the position that predicts the answer (the last character of the answer marker)."""
    teachers = encode_problems(lm, [e.problem for e in students])
    dev = lm.device
    marker = lm.encode(ANSWER_MARKER, add_bos=False)[-1]
    t_ids, t_mask, t_labels = (x.to(dev) for x in collate(teachers, lm._pad_id))
    teacher = lm.model(input_ids=t_ids, attention_mask=t_mask, output_hidden_states=True)
    t_loss = nn.functional.cross_entropy(
        teacher.logits[:, :-1].reshape(-1, teacher.logits.shape[-1]).float(),
        t_labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )
    s_ids, s_mask, s_labels = (x.to(dev) for x in collate(students, lm._pad_id))
    student = lm(s_ids, s_mask, s_labels)
    s_hidden = lm.model(
        inputs_embeds=student.inputs_embeds, attention_mask=s_mask, output_hidden_states=True
    ).hidden_states

    def anchor(ids: Tensor, mask: Tensor) -> Tensor:  # the last marker character of each row
        hits = (ids == marker) & mask.bool()
        return (hits * torch.arange(ids.shape[1], device=dev)).argmax(1)

    rows, t_at, s_at = torch.arange(len(students), device=dev), anchor(t_ids, t_mask), anchor(s_ids, s_mask)
    distill = 0.0
    for t_layer, s_layer in zip(teacher.hidden_states[1:], s_hidden[1:], strict=True):
        target = t_layer[rows, t_at].detach()
        distill = distill + nn.functional.smooth_l1_loss(s_layer[rows, s_at], target) / (target.std() + 1e-6)
    return t_loss + student.loss + weight * distill / (len(s_hidden) - 1)


def split_budget(total: int, plan: list[Stage]) -> tuple[int, ...]:
    """``total`` optimizer steps shared by stage weight, summing exactly to ``total``.

    >>> split_budget(1000, stages("lt", 6))
    (500, 200, 300)
    """
    if total < len(plan):
        raise ValueError(f"a budget of {total} steps cannot cover {len(plan)} stages")
    weights = [s.weight for s in plan]
    shares = [max(1, int(total * w / sum(weights))) for w in weights]
    shares[0] += total - sum(shares)
    return tuple(shares)
