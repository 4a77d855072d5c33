"""Bundled trained checkpoints and loading by name or path."""

from __future__ import annotations

from pathlib import Path

import torch

from lensing.model import LatentLM

BUNDLED_DIR = Path(__file__).parent
BUNDLED = {
    "arith-tiny": "arith-tiny/lt",
    "arith-tiny:lt": "arith-tiny/lt",
    "arith-tiny:hidden": "arith-tiny/hidden",
    "arith-tiny:cot": "arith-tiny/cot",
}


def available() -> list[str]:
    """Names :func:`load` accepts besides a checkpoint path."""
    return sorted(BUNDLED)


def load(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> LatentLM:
    """A bundled model by name (``arith-tiny``, ``arith-tiny:cot`` ...) or any checkpoint directory.

    >>> lm = load("arith-tiny")
    >>> lm.config.mode
    'fusion'
    """
    key = str(name_or_path)
    if key in BUNDLED:
        return LatentLM.from_pretrained(BUNDLED_DIR / BUNDLED[key], device=device, dtype=dtype)
    path = Path(key).expanduser()
    if path.is_dir():
        return LatentLM.from_pretrained(path, device=device, dtype=dtype)
    raise ValueError(f"unknown model {key!r}: not a bundled name ({', '.join(available())}) nor a checkpoint directory")
