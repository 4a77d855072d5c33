"""Teacher-forced answer scoring after a generated trace: log-probability of an answer and logit differences.

The *answer position* of a trace is the position right after its answer marker (``###``): the
trace's recorded input embeddings up to the end of the marker are fed again (so latents keep the
vectors generation fed, intervened or not), followed by the answer's tokens and EOS. A trace that
never wrote the marker gets it appended after its last generated token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from lensing.model import LatentLM, Trace


@dataclass
class Scored:
    """One trace's prefix (through the answer marker) and the logits over an appended answer.

    ``logits[j]`` is the distribution over answer token ``j`` (teacher-forced on answer tokens
    ``< j``); ``kinds`` covers prefix plus answer positions.
    """

    prefix_embeds: Float[Tensor, "prefix d_model"]
    prefix_kinds: list[str]
    answer_ids: list[int]
    logits: Float[Tensor, "answer vocab"]

    @property
    def logprob(self) -> float:
        """Total log-probability of the answer tokens (EOS included)."""
        lp = torch.log_softmax(self.logits.double(), -1)
        return float(lp[torch.arange(len(self.answer_ids)), torch.tensor(self.answer_ids)].sum())


def answer_ids(lm: LatentLM, answer: int | str | None) -> list[int]:
    """Token ids of an answer followed by EOS (only EOS when there is no answer)."""
    text = "" if answer is None else str(answer)
    return (lm.encode(text, add_bos=False) if text else []) + [lm.tokenizer.eos_token_id]


def answer_prefix(lm: LatentLM, trace: Trace) -> tuple[Float[Tensor, "prefix d_model"], list[str]]:
    """Input embeddings and kinds of ``trace`` through the end of its answer marker (appended if absent)."""
    marker = lm.answer_marker
    if not marker:
        raise ValueError("the model has no answer marker: it cannot say where the answer starts")
    special = set(trace.meta.get("special_tokens", ()))
    start = trace.prompt_length
    text, end = "", None
    last_text = start
    for pos in range(start, len(trace)):
        if trace.kinds[pos] == "latent":
            last_text = pos + 1
            continue
        tok = trace.tokens[pos]
        if tok in special:
            break
        text += tok
        last_text = pos + 1
        if marker in text:
            end = pos + 1
            break
    embeds, kinds = trace.input_embeds, list(trace.kinds)
    if end is not None:
        return embeds[:end], kinds[:end]
    extra = lm.encode(marker, add_bos=False)
    marker_emb = lm.embed(torch.tensor(extra, device=lm.device)).float().cpu()
    return torch.cat([embeds[:last_text], marker_emb]), kinds[:last_text] + ["answer"] * len(extra)


@torch.no_grad()
def score_answers(
    lm: LatentLM, traces: list[Trace], answers: list[list[int]], batch_size: int = 256
) -> list[Scored]:
    """Logits over each answer (token ids, e.g. from :func:`answer_ids`) after each trace's prefix."""
    if len(traces) != len(answers):
        raise ValueError(f"{len(traces)} traces but {len(answers)} answers")
    prefixes = [answer_prefix(lm, t) for t in traces]
    out: list[Scored] = []
    for start in range(0, len(traces), batch_size):
        chunk = range(start, min(start + batch_size, len(traces)))
        seqs = []
        for i in chunk:
            ans = torch.tensor(answers[i], device=lm.device)
            ans_emb = lm.embed(ans[:-1]).float().cpu() if len(ans) > 1 else torch.zeros(0, lm.d_model)
            seqs.append(torch.cat([prefixes[i][0], ans_emb]))
        width = max(len(s) for s in seqs)
        if width > lm.max_length:
            raise ValueError(f"a trace plus its answer has {width} positions, over the model's context of {lm.max_length}")
        embeds = torch.zeros(len(seqs), width, lm.d_model)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, s in enumerate(seqs):
            embeds[row, : len(s)] = s
            mask[row, : len(s)] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = lm.model(
            inputs_embeds=embeds.to(device=lm.device, dtype=lm.model.dtype),
            attention_mask=mask.to(lm.device),
            position_ids=positions.to(lm.device),
        ).logits.float().cpu()
        for row, i in enumerate(chunk):
            n_prefix, n_ans = len(prefixes[i][0]), len(answers[i])
            out.append(
                Scored(prefixes[i][0], prefixes[i][1], answers[i], logits[row, n_prefix - 1 : n_prefix - 1 + n_ans])
            )
    return out


def first_difference(gold: list[int], other: list[int]) -> int | None:
    """Index of the first token where two answers differ (None when they are equal)."""
    for j, (a, b) in enumerate(zip(gold, other, strict=False)):
        if a != b:
            return j
    return None if len(gold) == len(other) else min(len(gold), len(other))
