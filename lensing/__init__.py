"""lensing: look inside language models that reason with continuous latent tokens.

>>> import lensing
>>> lm = lensing.load("arith-tiny")
>>> trace = lm.generate("a=12;b=a+3;c=b-5;c?\\n")[0]
>>> trace.text()
'b=12+3=15\\nc=15-5=10\\n###10'
"""

from lensing.model import LatentConfig, LatentLM, Trace
from lensing.probes import attach
from lensing.zoo import available, load

__all__ = ["LatentConfig", "LatentLM", "Trace", "attach", "available", "load"]
