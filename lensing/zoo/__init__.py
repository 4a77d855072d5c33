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
    "hops-tiny": "hops-tiny/stepsup",
    "hops-tiny:stepsup": "hops-tiny/stepsup",
    "hops-tiny:cot": "hops-tiny/cot",
    "hops-tiny:coconut": "hops-tiny/coconut",
}


REAL = ("smollm2-135m",)


def available() -> list[str]:
    """Bundled names :func:`load` accepts (plus ``smollm2-135m`` with ``lensing[real]``, and paths)."""
    return sorted(BUNDLED)


def load(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    device_map=None,
    offload_folder: str | Path | None = None,
) -> LatentLM:
    """A model by name or path.

    Names: the bundled ``arith-tiny`` and ``hops-tiny`` variants and ``smollm2-135m`` (needs ``lensing[real]``).
    Paths: a lensing checkpoint (with ``lensing.json``) or any Hugging Face Llama-family directory.

    ``dtype`` (``torch.bfloat16`` or ``"bf16"``, ``"fp16"``, ``"fp32"``) is the weights' type.
    ``device_map`` goes to Hugging Face / accelerate for models larger than one device:
    ``"auto"`` (fill the GPUs, then CPU, then ``offload_folder`` on disk), ``"cpu"``, or a dict
    from module names to devices; ``device`` is then ignored. A Hugging Face directory is loaded
    straight into its map; a lensing checkpoint is loaded on CPU and then dispatched.

    >>> lm = load("arith-tiny")
    >>> lm.config.mode
    'fusion'
    """
    from lensing.zoo.real import load_hf_directory, load_smollm2

    dtype = resolve_dtype(dtype)
    key = str(name_or_path)
    if key == "smollm2-135m":
        return load_smollm2(device=device, dtype=dtype, device_map=device_map, offload_folder=offload_folder)
    path = BUNDLED_DIR / BUNDLED[key] if key in BUNDLED else Path(key).expanduser()
    if (path / META_FILE).is_file():
        if device_map is None:
            return LatentLM.from_pretrained(path, device=device, dtype=dtype)
        return dispatch(LatentLM.from_pretrained(path, device="cpu", dtype=dtype), device_map, offload_folder)
    if path.is_dir():
        _refuse_stripped_lensing_checkpoint(path)
        return load_hf_directory(path, device=device, dtype=dtype, device_map=device_map, offload_folder=offload_folder)
    names = ", ".join([*available(), *REAL])
    raise ValueError(f"unknown model {key!r}: not a known name ({names}) nor a model directory")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype, ``"fp32"`` / ``"bf16"`` / ``"fp16"`` (or torch's names), or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    named = {**DTYPES, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in named:
        raise ValueError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16")
    return named[dtype]


def dispatch(lm: LatentLM, device_map, offload_folder: str | Path | None = None) -> LatentLM:
    """Spreads an already loaded LatentLM's model over devices with accelerate (``"auto"``, a device, or a map).

    The adapter (if any) goes with the input embeddings, where latents are built.
    """
    from accelerate import dispatch_model, infer_auto_device_map

    model = lm.model
    if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        device_map = {"": device_map}
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(
            model, no_split_module_classes=getattr(model, "_no_split_modules", None) or [], dtype=model.dtype
        )
    if "disk" in set(device_map.values()) and offload_folder is None:
        raise ValueError("device_map puts modules on disk: give offload_folder= (a folder for the offloaded weights)")
    lm.model = dispatch_model(model, device_map=device_map, offload_dir=str(offload_folder) if offload_folder else None)
    if lm.adapter is not None:
        lm.adapter.to(lm.device)
    return lm.eval()


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
