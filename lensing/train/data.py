"""Training examples, batching and Confidence-Driven Insertion of `<thinking>` tokens."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
from jaxtyping import Int
from torch import Tensor

from lensing.model import LatentLM
from lensing.tasks import ANSWER_MARKER, Problem


@dataclass(frozen=True)
class Example:
    """A tokenised problem; the completion ends with EOS and may hold `<thinking>` ids.

    ``labels`` (one per completion token; -100 = no loss) is what each completion position is
    trained to be predicted as; by default the completion itself. Curricula set it to skip the
    loss on latents (Coconut) or to supervise the step a latent stands for (step supervision).
    """

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    problem: Problem
    labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.completion_ids):
            raise ValueError(f"{len(self.labels)} labels for {len(self.completion_ids)} completion tokens")

    @property
    def ids(self) -> tuple[int, ...]:
        return self.prompt_ids + self.completion_ids

    @property
    def completion_labels(self) -> tuple[int, ...]:
        return self.completion_ids if self.labels is None else self.labels


def encode_problems(lm: LatentLM, problems: list[Problem]) -> list[Example]:
    """Prompt and gold CoT completion (plus EOS), with no latents."""
    eos = lm.tokenizer.eos_token_id
    return [
        Example(tuple(lm.encode(p.prompt)), tuple(lm.encode(p.completion, add_bos=False)) + (eos,), p) for p in problems
    ]


def collate(
    examples: list[Example], pad_id: int, prompt_loss: bool = False
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-padded ids, attention mask and labels (-100 on padding, where the example's own
    ``labels`` say so and, unless ``prompt_loss``, on the prompt).

    >>> e = Example((1, 7, 8), (9, 2), None)
    >>> collate([e], 0)[2].tolist(), collate([e], 0, prompt_loss=True)[2].tolist()
    ([[-100, -100, -100, 9, 2]], [[-100, 7, 8, 9, 2]])
    """
    if not examples:
        raise ValueError("empty batch: no examples to collate")
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        n, p = len(e.ids), len(e.prompt_ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, p:n] = torch.tensor(e.completion_labels)
        if prompt_loss:  # every prompt token but the first, which nothing predicts
            labels[i, 1:p] = torch.tensor(e.prompt_ids[1:])
    return ids, mask, labels


@torch.no_grad()
def gold_probabilities(
    lm: LatentLM, examples: list[Example], batch_size: int = 256, real_vocab: bool = True
) -> list[list[float]]:
    """For each example, the model's probability of each completion token given everything before it.

    With ``real_vocab`` the softmax runs over the real vocabulary: `<thinking>` is masked out, so
    the mass the model gives to thinking does not make a gold token look uncertain.
    """
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, mask, _ = collate(chunk, lm._pad_id)
        logits = lm(ids.to(lm.device), mask.to(lm.device)).logits.float()
        if real_vocab:
            logits[..., lm.thinking_id] = float("-inf")
        probs = torch.softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None].to(lm.device)).squeeze(2).cpu()
        for i, e in enumerate(chunk):
            p = len(e.prompt_ids)
            out.append(probs[i, p - 1 : len(e.ids) - 1].tolist())
    return out


def insert_latents(
    lm: LatentLM, examples: list[Example], seed: int, batch_size: int = 256, real_vocab: bool = True
) -> list[Example]:
    """Confidence-Driven Insertion: `<thinking>` tokens before each uncertain gold token.

    Each example is first stripped of latents, then scored by ``lm`` on exactly that sequence;
    before every completion token (EOS excepted) whose probability is below ``lm.config.tau``,
    the k-th latent is inserted with probability ``insert_probs[k]`` (stopping at the first miss).
    The explicit CoT is kept. ``real_vocab``: see :func:`gold_probabilities`.
    """
    cfg, rng = lm.config, random.Random(seed)
    plain = [replace(e, completion_ids=tuple(t for t in e.completion_ids if t != lm.thinking_id)) for e in examples]
    result = []
    for example, probs in zip(plain, gold_probabilities(lm, plain, batch_size, real_vocab), strict=True):
        completion = []
        for j, (token, p) in enumerate(zip(example.completion_ids, probs, strict=True)):
            if p < cfg.tau and j < len(example.completion_ids) - 1:
                for prob in cfg.insert_probs:
                    if rng.random() >= prob:
                        break
                    completion.append(lm.thinking_id)
            completion.append(token)
        result.append(replace(example, completion_ids=tuple(completion)))
    return result


def answer_only(lm: LatentLM, examples: list[Example]) -> list[Example]:
    """The no-CoT data: the completion is the answer marker and the answer alone."""
    eos = lm.tokenizer.eos_token_id
    return [
        replace(e, completion_ids=(*lm.encode(f"{ANSWER_MARKER}{e.problem.answer}", add_bos=False), eos), labels=None)
        for e in examples
    ]


def latent_steps_examples(
    lm: LatentLM, examples: list[Example], latent_steps: int, per_step: int = 1, supervise_steps: bool = False
) -> list[Example]:
    """Coconut's stage data: the first ``latent_steps`` CoT lines become ``per_step`` latents each.

    The latents follow the prompt directly; the remaining lines and the answer are written out.
    There is no loss on the latents (the model is not asked to emit them: generation forces
    them), unless ``supervise_steps``: then the position before the last latent of step ``j``
    is trained to predict the first token of the problem's ``intermediates[j]``, the value that
    step reaches (step-level supervision, in the spirit of SIM-CoT).

    For the 3-hop problem ``...;e^3?`` (CoT ``e>g``, ``g>h``, ``h>d``) at stage 2 the completion is
    ``<thinking><thinking>h>d\n###d</s>``; with ``supervise_steps`` the two latent positions are
    labelled ``g`` and ``h`` (the model predicts them at the position before each latent).
    """
    if latent_steps < 0 or per_step < 1:
        raise ValueError(f"latent_steps must be >= 0 and per_step >= 1, got {latent_steps} and {per_step}")
    eos, out = lm.tokenizer.eos_token_id, []
    for e in examples:
        problem = e.problem
        hidden = min(latent_steps, len(problem.cot))
        written = "".join(line + "\n" for line in problem.cot[hidden:]) + f"{ANSWER_MARKER}{problem.answer}"
        text_ids = tuple(lm.encode(written, add_bos=False)) + (eos,)
        latent_labels = [-100] * (hidden * per_step)
        if supervise_steps:
            for j in range(hidden):
                latent_labels[(j + 1) * per_step - 1] = lm.encode(str(problem.intermediates[j]), add_bos=False)[0]
        out.append(
            replace(
                e,
                completion_ids=(lm.thinking_id,) * (hidden * per_step) + text_ids,
                labels=tuple(latent_labels) + text_ids,
            )
        )
    return out
