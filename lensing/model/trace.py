"""Trace: everything one generated (or scored) sequence fed to and got from the model."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
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

    def __repr__(self) -> str:
        """One line: length, positions per kind and the generated text (latents as ◆), cut at 80 characters.

        ``str(trace)`` is the full position-by-position table.
        """
        counts = ", ".join(f"{self.kinds.count(k)} {k}" for k in KINDS if k in self.kinds)
        text = self.text("◆").replace("\n", "⏎")
        text = text if len(text) <= 80 else text[:79] + "…"
        return f"Trace({len(self)} positions: {counts}; text={text!r})"

    def _repr_html_(self) -> str:
        """The sequence as a token strip coloured by kind (latents ◆), confidence on hover, for notebooks."""
        from html import escape

        from lensing.viz.style import KIND_COLORS

        spans = []
        for t, (tok, kind) in enumerate(zip(self.tokens, self.kinds, strict=True)):
            shown = "◆" if kind == "latent" else tok.replace("\n", "⏎") or "∅"
            tip = f"{t} {kind}: p_max {float(self.max_prob[t]):.3f}, entropy {float(self.entropy[t]):.3f}"
            colour = KIND_COLORS.get(kind, "#999999")
            spans.append(
                f'<span title="{escape(tip)}" style="border-bottom:3px solid {colour};padding:0 1px;'
                f'margin:0 1px;white-space:pre">{escape(shown)}</span>'
            )
        legend = " ".join(
            f'<span style="border-bottom:3px solid {KIND_COLORS[k]}">{k}</span>' for k in KINDS if k in self.kinds
        )
        head = escape(f"Trace: {len(self)} positions, {self.n_latents} latent(s)")
        return (
            f'<div style="font-family:monospace;line-height:1.9"><div><b>{head}</b> &nbsp; {legend}</div>'
            f"<div>{''.join(spans)}</div></div>"
        )

    def save(self, path: str | Path) -> None:
        """Writes ``<path>.safetensors`` (tensors) and ``<path>.json`` (text), each atomically.

        The whole given name is kept (``run.v1`` and ``run.v2`` are different traces); a trailing
        ``.safetensors`` or ``.json`` is taken as naming the pair.
        """
        tensor_file, json_file = trace_files(path)
        tensors = {name: getattr(self, name).contiguous().cpu() for name in _TENSOR_FIELDS}
        meta = {"tokens": self.tokens, "kinds": self.kinds, "meta": self.meta}
        _write_atomically(tensor_file, lambda tmp: save_file(tensors, str(tmp)))
        _write_atomically(json_file, lambda tmp: tmp.write_text(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Reads what :meth:`save` wrote; a missing, corrupt or inconsistent file raises ValueError naming it."""
        tensor_file, json_file = trace_files(path)
        try:
            tensors = load_file(str(tensor_file))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read trace {tensor_file}: {err}") from err
        try:
            meta = json.loads(json_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            raise ValueError(f"cannot read trace {json_file}: {err}") from err
        _check_text(meta, json_file)
        _check_tensors(tensors, meta, tensor_file, json_file)
        return cls(tokens=meta["tokens"], kinds=meta["kinds"], meta=meta["meta"], **tensors)


def trace_files(path: str | Path) -> tuple[Path, Path]:
    """The ``.safetensors`` and ``.json`` files of the trace saved as ``path``."""
    path = Path(path)
    name = next((path.name[: -len(s)] for s in (".safetensors", ".json") if path.name.endswith(s)), path.name)
    if not name:
        raise ValueError(f"trace path {path} has no name; give one such as runs/trace")
    return path.with_name(f"{name}.safetensors"), path.with_name(f"{name}.json")


def _write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Calls ``write`` on a temporary sibling of ``target``, then renames it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _check_text(meta, json_file: Path) -> None:
    """``tokens`` and ``kinds`` are lists of strings of one length, kinds from KINDS; ``meta`` is a dict."""

    def fail(what: str):
        raise ValueError(f"invalid trace {json_file}: {what}; re-save the trace with Trace.save")

    if not isinstance(meta, dict):
        fail(f"expected a JSON object, found {type(meta).__name__}")
    missing = sorted({"tokens", "kinds", "meta"} - set(meta))
    if missing:
        fail(f"missing keys {missing}")
    for key in ("tokens", "kinds"):
        if not isinstance(meta[key], list) or not all(isinstance(x, str) for x in meta[key]):
            fail(f"{key!r} must be a list of strings")
    if not isinstance(meta["meta"], dict):
        fail(f"'meta' must be an object, found {type(meta['meta']).__name__}")
    if len(meta["tokens"]) != len(meta["kinds"]):
        fail(f"{len(meta['tokens'])} tokens but {len(meta['kinds'])} kinds")
    unknown = sorted(set(meta["kinds"]) - set(KINDS))
    if unknown:
        fail(f"unknown kinds {unknown} (known: {list(KINDS)})")


def _check_tensors(tensors: dict[str, Tensor], meta: dict, tensor_file: Path, json_file: Path) -> None:
    """Every tensor is present, of the right rank and dtype, and matches the positions and latents in the JSON."""

    def fail(what: str):
        raise ValueError(f"invalid trace {tensor_file}: {what}; re-save the trace with Trace.save")

    missing = sorted(set(_TENSOR_FIELDS) - set(tensors))
    if missing:
        fail(f"missing tensors {missing}")
    for name in _TENSOR_FIELDS:
        rank = 2 if name in ("input_embeds", "latent_h", "latent_pred", "logits") else 1
        floating = name != "token_ids"
        tensor = tensors[name]
        if tensor.dim() != rank or tensor.is_floating_point() != floating:
            kind = "float" if floating else "integer"
            fail(f"{name} must be a {rank}-D {kind} tensor, found {tensor.dtype} of shape {list(tensor.shape)}")
    n, n_latent = len(meta["tokens"]), meta["kinds"].count("latent")
    for name in _TENSOR_FIELDS:
        expected = n_latent if name in ("latent_h", "latent_pred") else n
        if tensors[name].shape[0] != expected:
            what = "latent positions" if name in ("latent_h", "latent_pred") else "positions"
            fail(f"{name} has {tensors[name].shape[0]} rows but {json_file.name} has {expected} {what}")
    d_model = tensors["input_embeds"].shape[1]
    for name in ("latent_h", "latent_pred"):
        if tensors[name].shape[1] != d_model:
            fail(f"{name} has width {tensors[name].shape[1]} but input_embeds has {d_model}")


def confidence(logits: Float[Tensor, "... vocab"]) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """Max probability and entropy (nats) of softmax(logits)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return p.max(dim=-1).values, -(p * logp).nan_to_num().sum(dim=-1)
