"""Bundled trained checkpoints and loading by name or path."""

from __future__ import annotations

from pathlib import Path

import torch

from lensing.model import THINKING_TOKEN, CheckpointError, LatentLM
from lensing.model.latent_lm import ADAPTER_FILE, META_FILE

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
    if (path / META_FILE).is_file():
        return LatentLM.from_pretrained(path, device=device, dtype=dtype)
    if path.is_dir():
        _refuse_stripped_lensing_checkpoint(path)
        return load_hf_directory(path, device=device, dtype=dtype, device_map=device_map)
    names = ", ".join([*available(), *REAL])
    raise ValueError(f"unknown model {key!r}: not a known name ({names}) nor a model directory")


def _refuse_stripped_lensing_checkpoint(path: Path) -> None:
    """A lensing checkpoint that lost ``lensing.json`` must not load as a plain model with default
    latent settings: its tokenizer already has `<thinking>` (a plain HF model gets it added)."""
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json")
    has_thinking = any(
        THINKING_TOKEN in (path / name).read_text(errors="replace")
        for name in tokenizer_files
        if (path / name).is_file()
    )
    if has_thinking or (path / ADAPTER_FILE).is_file():
        raise CheckpointError(
            f"{path} looks like a lensing checkpoint (its tokenizer has {THINKING_TOKEN}) but {META_FILE} is "
            "missing, so its latent settings (mode, alpha, layer, answer marker) are unknown: restore "
            f"{META_FILE} from the run that wrote it, or load it as a plain model with settings you give: "
            "lensing.zoo.real.load_hf_directory(path, config=LatentConfig(...))"
        )
