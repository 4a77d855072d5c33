"""Training examples, batching and Confidence-Driven Insertion of `<thinking>` tokens."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
from jaxtyping import Int
from torch import Tensor

from lensing.model import LatentLM
from lensing.tasks import Problem


@dataclass(frozen=True)
class Example:
    """A tokenised problem; the completion ends with EOS and may hold `<thinking>` ids."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    problem: Problem

    @property
    def ids(self) -> tuple[int, ...]:
        return self.prompt_ids + self.completion_ids


def encode_problems(lm: LatentLM, problems: list[Problem]) -> list[Example]:
    """Prompt and gold CoT completion (plus EOS), with no latents."""
    eos = lm.tokenizer.eos_token_id
    return [
        Example(tuple(lm.encode(p.prompt)), tuple(lm.encode(p.completion, add_bos=False)) + (eos,), p) for p in problems
    ]


def collate(
    examples: list[Example], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-padded ids, attention mask and labels (-100 on the prompt and on padding)."""
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
        labels[i, p:n] = ids[i, p:n]
    return ids, mask, labels


@torch.no_grad()
def gold_probabilities(lm: LatentLM, examples: list[Example], batch_size: int = 256) -> list[list[float]]:
    """For each example, the model's probability of each completion token given everything before it."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, mask, _ = collate(chunk, lm._pad_id)
        logits = lm(ids.to(lm.device), mask.to(lm.device)).logits.float()
        probs = torch.softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None].to(lm.device)).squeeze(2).cpu()
        for i, e in enumerate(chunk):
            p = len(e.prompt_ids)
            out.append(probs[i, p - 1 : len(e.ids) - 1].tolist())
    return out


def insert_latents(lm: LatentLM, examples: list[Example], seed: int, batch_size: int = 256) -> list[Example]:
    """Confidence-Driven Insertion: `<thinking>` tokens before each uncertain gold token.

    Each example is first stripped of latents, then scored by ``lm`` on exactly that sequence;
    before every completion token (EOS excepted) whose probability is below ``lm.config.tau``,
    the k-th latent is inserted with probability ``insert_probs[k]`` (stopping at the first miss).
    The explicit CoT is kept.
    """
    cfg, rng = lm.config, random.Random(seed)
    plain = [replace(e, completion_ids=tuple(t for t in e.completion_ids if t != lm.thinking_id)) for e in examples]
    result = []
    for example, probs in zip(plain, gold_probabilities(lm, plain, batch_size), strict=True):
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
