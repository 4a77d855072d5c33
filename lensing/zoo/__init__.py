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


REAL = ("smollm2-135m",)


def available() -> list[str]:
    """Bundled names :func:`load` accepts (plus ``smollm2-135m`` with ``lensing[real]``, and paths)."""
    return sorted(BUNDLED)


def load(
    name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, device_map=None
) -> LatentLM:
    """A model by name or path.

    Names: the bundled ``arith-tiny`` variants and ``smollm2-135m`` (needs ``lensing[real]``).
    Paths: a lensing checkpoint (with ``lensing.json``) or any Hugging Face Llama-family directory.

    >>> lm = load("arith-tiny")
    >>> lm.config.mode
    'fusion'
    """
    from lensing.zoo.real import load_hf_directory, load_smollm2

    key = str(name_or_path)
    if key in BUNDLED:
        return LatentLM.from_pretrained(BUNDLED_DIR / BUNDLED[key], device=device, dtype=dtype)
    if key == "smollm2-135m":
        return load_smollm2(device=device, dtype=dtype, device_map=device_map)
    path = Path(key).expanduser()
    if (path / "lensing.json").is_file():
        return LatentLM.from_pretrained(path, device=device, dtype=dtype)
    if path.is_dir():
        return load_hf_directory(path, device=device, dtype=dtype, device_map=device_map)
    names = ", ".join([*available(), *REAL])
    raise ValueError(f"unknown model {key!r}: not a known name ({names}) nor a model directory")
