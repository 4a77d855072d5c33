"""Studies that run models and probes and turn metrics into reports: collapse, decodability and trails."""

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
from lensing.studies.decoding import DecodingReport, decodability
from lensing.studies.headline import HeadlineReport, headline
from lensing.studies.latent_trails import LatentTrailsReport, latent_trails_study, rut_test
from lensing.studies.records import collapse_records
from lensing.studies.trails import TrailsReport, attribution_trail, trails_study

__all__ = [
    "CollapseAccumulator",
    "CollapseReport",
    "DecodingReport",
    "HeadlineReport",
    "LatentSet",
    "LatentTrailsReport",
    "TrailsReport",
    "attribution_trail",
    "collapse_ci",
    "collapse_records",
    "collapse_study",
    "collect",
    "decodability",
    "fusion_parts",
    "headline",
    "latent_states",
    "latent_trails_study",
    "natural_vs_forced",
    "rut_test",
    "trails_study",
]
