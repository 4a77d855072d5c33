"""LatentConfig: every knob of how a `<thinking>` token's input vector is built and inserted."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

THINKING_TOKEN = "<thinking>"

Mode = Literal["fusion", "hidden", "prediction", "token"]
TopPRule = Literal["reference", "nucleus"]


@dataclass
class LatentConfig:
    """How latents are computed (fusion) and where they are inserted (confidence-driven).

    Attributes:
        mode: ``fusion`` = alpha*h + (1-alpha)*e_pred (LT-Tuning); ``hidden`` = h alone
            (Coconut-style); ``prediction`` = e_pred alone (Soft-Thinking-style); ``token`` = the
            `<thinking>` token's own learned embedding, whatever came before (a pause token).
        alpha: weight of the context part h in the fusion.
        temperature: softmax temperature for the prediction part.
        top_p: probability mass kept before renormalising.
        top_p_rule: ``reference`` keeps tokens while the cumulative probability is <= top_p (the
            crossing token is dropped, the top-1 always kept), as the LT reference code does;
            ``nucleus`` is standard nucleus sampling (the crossing token is kept).
        layer: index into Hugging Face's ``hidden_states`` tuple for h (-1 = after the final
            norm, -2 = raw residual stream after the second-to-last block).
        adapter_hidden: width of the optional Linear-GELU-Linear-LayerNorm adapter on the latent.
        tau: gold-token probability under which latents are inserted when building data.
        max_latents_per_position: at most this many `<thinking>` tokens before one token.
        insert_probs: probability of inserting the 1st, 2nd, ... latent at an uncertain token.
    """

    mode: Mode = "fusion"
    alpha: float = 0.6
    temperature: float = 1.0
    top_p: float = 0.8
    top_p_rule: TopPRule = "reference"
    layer: int = -2
    adapter_hidden: int | None = None
    tau: float = 0.7
    max_latents_per_position: int = 2
    insert_probs: tuple[float, ...] = (0.9, 0.2)

    def __post_init__(self) -> None:
        self.insert_probs = tuple(self.insert_probs)
        if self.mode not in ("fusion", "hidden", "prediction", "token"):
            raise ValueError(f"LatentConfig.mode must be fusion, hidden, prediction or token, got {self.mode!r}")
        if self.top_p_rule not in ("reference", "nucleus"):
            raise ValueError(f"LatentConfig.top_p_rule must be reference or nucleus, got {self.top_p_rule!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"LatentConfig.alpha must lie in [0, 1], got {self.alpha}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"LatentConfig.top_p must lie in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"LatentConfig.temperature must be positive, got {self.temperature}")
        if len(self.insert_probs) != self.max_latents_per_position:
            raise ValueError(
                f"LatentConfig.insert_probs has {len(self.insert_probs)} entries but "
                f"max_latents_per_position is {self.max_latents_per_position}: give one probability per latent"
            )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["insert_probs"] = list(self.insert_probs)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> LatentConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown LatentConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)
