"""mystats: the statistics of a user's own project.

An example of code worth running on a cluster: bootstrap resampling is
embarrassingly parallel, one seed per task.
"""
from typing import Sequence, Tuple

import numpy as np


def sample(size: int = 2_000) -> np.ndarray:
    """The data set under study (synthetic and fixed, so every node has the same)."""
    return np.random.default_rng(0).lognormal(mean=1.0, sigma=0.5, size=size)


def bootstrap_means(seed: int, resamples: int = 500) -> np.ndarray:
    """The means of ``resamples`` bootstrap resamples of :func:`sample`, drawn from ``seed``."""
    data = sample()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(resamples, len(data)))
    return data[picks].mean(axis=1)


def confidence_interval(means: Sequence[np.ndarray], level: float = 0.95) -> Tuple[float, float]:
    """The central ``level`` interval of the bootstrap means."""
    every = np.concatenate(list(means))
    tail = (1.0 - level) / 2
    low, high = np.quantile(every, [tail, 1.0 - tail])
    return float(low), float(high)
