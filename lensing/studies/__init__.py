"""Studies that run models and probes and turn metrics into reports: collapse and trails."""

from lensing.studies.collapse import (
    CollapseAccumulator,
    CollapseReport,
    LatentSet,
    collapse_ci,
    collapse_study,
    collect,
    fusion_parts,
    latent_states,
    natural_vs_forced,
)
from lensing.studies.trails import TrailsReport, attribution_trail, trails_study

__all__ = [
    "CollapseAccumulator",
    "CollapseReport",
    "LatentSet",
    "TrailsReport",
    "attribution_trail",
    "collapse_ci",
    "collapse_study",
    "collect",
    "fusion_parts",
    "latent_states",
    "natural_vs_forced",
    "trails_study",
]
