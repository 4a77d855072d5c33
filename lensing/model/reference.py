"""Reference implementations that the fast paths are checked and timed against (tests, benchmarks)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformers import DynamicCache

from lensing.model.latent_lm import LatentLM


def per_position_forward(
    lm: LatentLM,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    labels: Int[Tensor, "batch pos"],
) -> tuple[Float[Tensor, "batch pos vocab"], Float[Tensor, ""]]:
    """The training forward before :func:`~lensing.model.latent_lm.depth_layout`: one pass per
    distinct latent column in the batch. Returns the logits and the next-token loss."""
    is_latent = (input_ids == lm.thinking_id) & attention_mask.bool()
    cuts = sorted(set(is_latent.nonzero()[:, 1].tolist()))
    bounds = [0, *cuts, input_ids.shape[1]]
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    embeds = lm.embed(input_ids)
    cache = DynamicCache()
    parts, prev_logits, prev_h = [], None, None
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        segment = embeds[:, start:end]
        if start in cuts:
            latent, _ = lm.latent_embedding(prev_h, prev_logits)
            first = torch.where(is_latent[:, start, None], latent, segment[:, 0])
            segment = torch.cat([first[:, None], segment[:, 1:]], dim=1)
        logits, hidden = lm._forward(segment, attention_mask[:, :end], positions[:, start:end], cache)
        prev_logits, prev_h = logits[:, -1], hidden[:, -1]
        parts.append(logits)
    logits = torch.cat(parts, 1)
    loss = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    return logits, loss
