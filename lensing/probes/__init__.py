"""Hook-based probes through a TransformerLens bridge over a LatentLM's own weights."""

from lensing.probes.attention import AttentionResult
from lensing.probes.core import ALL_PROBES, Batch, Probe, attach
from lensing.probes.decompose import DecompositionResult
from lensing.probes.logit_lens import LatentDecodingResult, LogitLensResult, prediction_depth
from lensing.probes.tuned_lens import TunedLens

__all__ = [
    "ALL_PROBES",
    "AttentionResult",
    "Batch",
    "DecompositionResult",
    "LatentDecodingResult",
    "LogitLensResult",
    "Probe",
    "TunedLens",
    "attach",
    "prediction_depth",
]
