"""lensing: look inside language models that reason with continuous latent tokens.

>>> import lensing
>>> lm = lensing.load("arith-tiny")
>>> trace = lm.generate("a=12;b=a+3;c=b-5;c?\\n")[0]
>>> trace.text()
'b=12+3=15\\nc=15-5=10\\n###10'
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lensing")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

# the top-level names load torch and transformers on first use, so `lensing --version` and
# `lensing --help` answer at once
_EXPORTS = {
    "LatentConfig": "lensing.model",
    "LatentLM": "lensing.model",
    "Trace": "lensing.model",
    "attach": "lensing.probes",
    "available": "lensing.zoo",
    "load": "lensing.zoo",
}
_SUBPACKAGES = ("interventions", "metrics", "model", "probes", "studies", "tasks", "train", "viz", "zoo")
__all__ = ["LatentConfig", "LatentLM", "Trace", "__version__", "attach", "available", "load"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:  # `import lensing; lensing.metrics.effective_rank(...)` keeps working
        return import_module(f"lensing.{name}")
    raise AttributeError(f"module 'lensing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
