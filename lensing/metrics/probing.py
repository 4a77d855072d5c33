"""Linear probes: how much of a label (e.g. a reasoning step's intermediate result) a set of vectors encodes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Float, Int
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor


class ProbeResult(NamedTuple):
    """Held-out accuracy of the probe and of always predicting the training folds' majority class."""

    accuracy: float
    baseline: float


def probe_accuracy(
    features: Float[Tensor, "n d"], labels: Int[Tensor, " n"], folds: int = 5, seed: int = 0
) -> ProbeResult:
    """Cross-validated accuracy of a standardised multinomial logistic regression, with its majority baseline.

    Decodes, e.g., each step's intermediate result from the latent at each step and layer; an
    accuracy well above `baseline` means the information is linearly readable there. Folds are
    stratified when every class has at least `folds` members, plain shuffled k-fold otherwise;
    both scores are the fraction of samples predicted correctly while held out, and a training
    fold with a single class predicts that class.

    >>> import torch
    >>> x = torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    >>> result = probe_accuracy(x, (x[:, 0] > 0).long())
    >>> result.accuracy > 0.9, 0.5 <= result.baseline < 0.7
    (True, True)
    """
    x = features.detach().cpu().double().numpy()
    y = labels.detach().cpu().numpy()
    splitter = StratifiedKFold if np.unique(y, return_counts=True)[1].min() >= folds else KFold
    correct = majority = 0
    for train, test in splitter(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        values, counts = np.unique(y[train], return_counts=True)
        most = values[counts.argmax()]
        majority += (y[test] == most).sum()
        if len(values) == 1:
            correct += (y[test] == most).sum()
        else:
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            correct += (probe.fit(x[train], y[train]).predict(x[test]) == y[test]).sum()
    return ProbeResult(float(correct / len(y)), float(majority / len(y)))
