"""Synthetic reasoning tasks with graded difficulty."""

from lensing.tasks.arith import (
    ANSWER_MARKER,
    MAX_STEPS,
    Problem,
    Splits,
    extract_answer,
    is_correct,
    make_problem,
    make_splits,
)
from lensing.tasks.tokenizer import build_char_tokenizer

__all__ = [
    "ANSWER_MARKER",
    "MAX_STEPS",
    "Problem",
    "Splits",
    "build_char_tokenizer",
    "extract_answer",
    "is_correct",
    "make_problem",
    "make_splits",
]
