"""Quiet by default: the command line hides third-party progress bars, log lines and warnings.

lensing's own progress bars (tqdm, on stderr, only on a terminal) and messages stay. ``lensing
--verbose`` leaves every library as it is.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

THIRD_PARTY_LOGGERS = (
    "transformers",
    "transformer_lens",
    "huggingface_hub",
    "torch",
    "accelerate",
    "kaleido",
    "choreographer",
)


def quiet(verbose: bool = False) -> None:
    """Silences Hugging Face's "Loading weights" bars, library log lines below ERROR and warnings,
    unless ``verbose``. Call before the libraries are imported (it also works after)."""
    if verbose:
        if "transformers" in sys.modules:  # undo an earlier quiet() in this process
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()
            hf_logging.set_verbosity_warning()
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.simplefilter("ignore")
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # already imported: switch its bars off directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
