"""Shared fixtures: a tiny random-weight Llama wrapped as a LatentLM (offline, seconds to build)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lensing.metrics import effective_rank, participation_ratio, rankme, stable_rank
from lensing.model import LatentConfig, LatentLM
from lensing.tasks import ANSWER_MARKER, build_char_tokenizer
from lensing.tasks.tokenizer import save_and_reload


def make_tiny_lm(tmp_dir, mode: str = "fusion", seed: int = 0, thinking_boost: float = 2.5, **config) -> LatentLM:
    """2 layers, d=32; the `<thinking>` LM-head row is scaled so greedy decoding emits some latents."""
    tokenizer = save_and_reload(build_char_tokenizer(), tmp_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=96,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )
    lm = LatentLM(LlamaForCausalLM(cfg), tokenizer, LatentConfig(mode=mode, **config), answer_marker=ANSWER_MARKER)
    with torch.no_grad():
        head = lm.model.get_output_embeddings().weight
        head[lm.thinking_id] = thinking_boost * head[lm.tokenizer.convert_tokens_to_ids("7")]
    return lm.eval()


@pytest.fixture
def tiny_lm(tmp_path):
    return make_tiny_lm(tmp_path / "tok")


PROMPTS = ["a=12;b=a+3;b?\n", "a=5;b=a-7;c=b+1;c?\n", "a=99;b=a+9;c=b+9;d=c-2;d?\n"]


def close(actual, expected, tol: float = 1e-6, scale: float = 1.0) -> None:
    """|actual - expected| <= tol * max(scale, |expected|): relative, with an absolute floor for values near 0."""
    actual, expected = float(actual), float(expected)
    assert abs(actual - expected) <= tol * max(scale, abs(expected)), (actual, expected)


def spectra(x: torch.Tensor) -> list[torch.Tensor]:
    """Every spectral metric of ``x``, centred and uncentred."""
    return [
        effective_rank(x),
        effective_rank(x, center=False),
        participation_ratio(x),
        participation_ratio(x, center=False),
        stable_rank(x),
        stable_rank(x, center=True),
        rankme(x),
    ]
