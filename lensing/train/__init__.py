"""The three-stage LT-Tuning curriculum, its data and its evaluation."""

from lensing.train.curriculum import PRESETS, TrainConfig, run_curriculum
from lensing.train.data import Example, collate, encode_problems, gold_probabilities, insert_latents
from lensing.train.evaluate import EvalResult, evaluate

__all__ = [
    "PRESETS",
    "EvalResult",
    "Example",
    "TrainConfig",
    "collate",
    "encode_problems",
    "evaluate",
    "gold_probabilities",
    "insert_latents",
    "run_curriculum",
]
