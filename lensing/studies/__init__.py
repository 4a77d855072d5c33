"""Studies that run models and probes and turn metrics into reports: collapse and trails."""

from lensing.studies.collapse import CollapseAccumulator, CollapseReport, collapse_study, collect
from lensing.studies.trails import TrailsReport, attribution_trail, trails_study

__all__ = [
    "CollapseAccumulator",
    "CollapseReport",
    "TrailsReport",
    "attribution_trail",
    "collapse_study",
    "collect",
    "trails_study",
]
