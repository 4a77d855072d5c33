"""Context-Prediction Fusion: the input vector of a `<thinking>` token (DESIGN §1)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lensing.model.config import LatentConfig


def top_p_filter(
    probs: Float[Tensor, "... vocab"], top_p: float, rule: str = "reference"
) -> Float[Tensor, "... vocab"]:
    """Keeps the most probable tokens up to mass ``top_p`` and renormalises.

    ``reference`` keeps tokens while the cumulative probability is <= top_p (the token that
    crosses the threshold is dropped; the top-1 is always kept). ``nucleus`` keeps the smallest
    set whose mass reaches top_p (the crossing token is kept). ``top_p >= 1`` keeps every token
    under both rules: the float32 cumulative sum of a large vocabulary drifts from 1 by more
    than the 1e-6 tolerance for hand-written thresholds, which dropped ~2k tail tokens of 49k.

    >>> p = torch.tensor([0.5, 0.3, 0.2])
    >>> top_p_filter(p, 0.8, "reference")
    tensor([0.6250, 0.3750, 0.0000])
    >>> top_p_filter(p, 0.7, "nucleus")
    tensor([0.6250, 0.3750, 0.0000])
    >>> top_p_filter(p, 1.0, "nucleus")
    tensor([0.5000, 0.3000, 0.2000])
    """
    if rule not in ("reference", "nucleus"):
        raise ValueError(f"top_p rule must be 'reference' or 'nucleus', got {rule!r}")
    if top_p >= 1.0:
        return probs / probs.sum(dim=-1, keepdim=True)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(dim=-1)
    if rule == "reference":
        keep_sorted = cumulative <= top_p + 1e-6
    else:
        keep_sorted = (cumulative - sorted_probs) < top_p - 1e-6
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def prediction_distribution(
    logits: Float[Tensor, "... vocab"], config: LatentConfig, thinking_id: int
) -> Float[Tensor, "... vocab"]:
    """TopP(softmax(logits / T)) with `<thinking>` masked out before the softmax."""
    masked = logits.float().clone()
    masked[..., thinking_id] = float("-inf")
    probs = torch.softmax(masked / config.temperature, dim=-1)
    return top_p_filter(probs, config.top_p, config.top_p_rule)


def latent_embedding(
    h: Float[Tensor, "... d_model"],
    logits: Float[Tensor, "... vocab"],
    embedding_matrix: Float[Tensor, "vocab d_model"],
    config: LatentConfig,
    thinking_id: int,
    adapter: nn.Module | None = None,
) -> tuple[Float[Tensor, "... d_model"], Float[Tensor, "... d_model"]]:
    """The latent input vector and its prediction part ``e_pred``.

    fusion: ``alpha*h + (1-alpha)*e_pred``; hidden: ``h``; prediction: ``e_pred``; token: the
    `<thinking>` row of the embedding matrix (a pause token: nothing flows from the position
    before); then the optional adapter. No gate and no normalisation, as in the paper.
    """
    probs = prediction_distribution(logits, config, thinking_id).to(embedding_matrix.dtype)
    e_pred = probs @ embedding_matrix
    if config.mode == "fusion":
        latent = config.alpha * h.to(e_pred.dtype) + (1.0 - config.alpha) * e_pred
    elif config.mode == "hidden":
        latent = h.to(e_pred.dtype)
    elif config.mode == "prediction":
        latent = e_pred
    else:
        latent = embedding_matrix[thinking_id].expand_as(e_pred)
    if adapter is not None:
        latent = adapter(latent)
    return latent, e_pred


def make_adapter(d_model: int, hidden: int) -> nn.Module:
    """Linear -> GELU -> Linear -> LayerNorm, the paper's optional 8B adapter."""
    return nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model), nn.LayerNorm(d_model))
