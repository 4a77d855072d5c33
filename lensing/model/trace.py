"""Trace: everything one generated (or scored) sequence fed to and got from the model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

KINDS = ("prompt", "cot", "latent", "answer")
_TENSOR_FIELDS = ("token_ids", "input_embeds", "latent_h", "latent_pred", "logits", "max_prob", "entropy", "gold_prob")


@dataclass
class Trace:
    """One sequence, position by position.

    Position ``t`` holds the token fed at ``t`` (the `<thinking>` id for latents), its kind, the
    input vector actually fed, and the model's output at ``t`` (the logits predicting ``t+1``
    and their confidence). ``gold_prob[t]`` is the probability given to the token at ``t+1``
    (NaN at the last position). ``latent_h`` / ``latent_pred`` hold the fusion parts of the
    latent positions, in order.
    """

    token_ids: Int[Tensor, " pos"]
    tokens: list[str]
    kinds: list[str]
    input_embeds: Float[Tensor, "pos d_model"]
    latent_h: Float[Tensor, "n_latent d_model"]
    latent_pred: Float[Tensor, "n_latent d_model"]
    logits: Float[Tensor, "pos vocab"]
    max_prob: Float[Tensor, " pos"]
    entropy: Float[Tensor, " pos"]
    gold_prob: Float[Tensor, " pos"]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def latent_positions(self) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == "latent"]

    @property
    def n_latents(self) -> int:
        return len(self.latent_positions)

    @property
    def prompt_length(self) -> int:
        return sum(k == "prompt" for k in self.kinds)

    def text(self, latent_mark: str = "") -> str:
        """The generated text after the prompt; latents rendered as ``latent_mark``."""
        start = self.prompt_length
        return "".join(
            latent_mark if k == "latent" else t
            for t, k in zip(self.tokens[start:], self.kinds[start:], strict=True)
            if not (k != "latent" and t in self.meta.get("special_tokens", ()))
        )

    def __str__(self) -> str:
        lines = [f"Trace: {len(self)} positions, {self.n_latents} latent(s)"]
        for t, (tok, kind) in enumerate(zip(self.tokens, self.kinds, strict=True)):
            shown = "[LATENT]" if kind == "latent" else repr(tok)
            conf = f"p_max={self.max_prob[t]:.3f} H={self.entropy[t]:.3f}"
            gold = "" if math.isnan(self.gold_prob[t]) else f" p_next={self.gold_prob[t]:.3f}"
            lines.append(f"{t:4d} {kind:7s} {shown:10s} {conf}{gold}")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        """Writes ``path.safetensors`` and ``path.json`` (tensors, then text), each atomically."""
        path = Path(path)
        tensors = {name: getattr(self, name).contiguous().cpu() for name in _TENSOR_FIELDS}
        meta = {"tokens": self.tokens, "kinds": self.kinds, "meta": self.meta}
        tmp_t, tmp_j = path.with_suffix(".safetensors.tmp"), path.with_suffix(".json.tmp")
        save_file(tensors, str(tmp_t))
        tmp_j.write_text(json.dumps(meta))
        tmp_t.replace(path.with_suffix(".safetensors"))
        tmp_j.replace(path.with_suffix(".json"))

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Reads what :meth:`save` wrote; a corrupt or inconsistent file raises ValueError."""
        path = Path(path)
        try:
            tensors = load_file(str(path.with_suffix(".safetensors")))
            meta = json.loads(path.with_suffix(".json").read_text())
        except (SafetensorError, json.JSONDecodeError, OSError) as err:
            raise ValueError(f"cannot read trace {path}: {err}") from err
        missing = set(_TENSOR_FIELDS) - set(tensors)
        if missing or len(meta["tokens"]) != len(tensors["token_ids"]):
            raise ValueError(f"trace {path} is inconsistent (missing tensors {sorted(missing)} or length mismatch)")
        return cls(tokens=meta["tokens"], kinds=meta["kinds"], meta=meta["meta"], **tensors)


def confidence(logits: Float[Tensor, "... vocab"]) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """Max probability and entropy (nats) of softmax(logits)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return p.max(dim=-1).values, -(p * logp).nan_to_num().sum(dim=-1)
