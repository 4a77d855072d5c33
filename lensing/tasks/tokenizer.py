"""A character-level tokenizer, saved and loaded as a Hugging Face tokenizer directory."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
ARITH_CHARACTERS = "0123456789abcdefg=+-;?#\n"


def build_char_tokenizer(characters: str = ARITH_CHARACTERS) -> PreTrainedTokenizerFast:
    """One token per character plus pad/bos/eos/unk; decoding joins characters without spaces."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in dict.fromkeys(characters):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)


def save_and_reload(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> PreTrainedTokenizerFast:
    """Round-trips through disk: TransformerLens needs a tokenizer loaded from a directory."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(str(directory))
    return AutoTokenizer.from_pretrained(str(directory))
