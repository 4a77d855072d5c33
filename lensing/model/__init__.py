"""The LT-Tuning model: LatentConfig, fusion, LatentLM and Trace."""

from lensing.model.config import THINKING_TOKEN, LatentConfig
from lensing.model.fusion import latent_embedding, prediction_distribution, top_p_filter
from lensing.model.latent_lm import CheckpointError, LatentForward, LatentLM
from lensing.model.trace import Trace

__all__ = [
    "THINKING_TOKEN",
    "CheckpointError",
    "LatentConfig",
    "LatentForward",
    "LatentLM",
    "Trace",
    "latent_embedding",
    "prediction_distribution",
    "top_p_filter",
]
