"""Statistics that can rank agents over few runs: the estimators of rliable (Agarwal et al., NeurIPS 2021).

A score is one training run's result on one task (here: its success rate on the clean and on the
hazard episodes of the protocol), so an agent is an (runs x tasks) matrix.

* **IQM**: the interquartile mean over every run and task (the mean of the middle 50 % of the
  scores), robust to one collapsed seed yet not as noisy as the median.
* **Stratified bootstrap CI**: resample the runs with replacement within each task, recompute
  the statistic, take the 2.5 / 97.5 percentiles.
* **Probability of improvement** P(X > Y): per task, the Mann-Whitney statistic of X's runs
  against Y's (ties count one half), averaged over tasks; its CI bootstraps both agents' runs.

Written in numpy rather than imported: rliable 1.2.0 requires ``arch < 8``, and arch 7.2 fails to
import next to pandas 3 (``TypeError`` in ``deprecate_kwarg``), which the simulator's dependencies
install.  The definitions follow rliable's ``metrics.aggregate_iqm``,
``metrics.probability_of_improvement`` and ``library.StratifiedBootstrap``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["iqm", "probability_of_improvement", "stratified_bootstrap_ci"]


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all scores: the 25 % trimmed mean, as ``scipy.stats.trim_mean(x, 0.25)``."""
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = len(values)
    if n == 0:
        raise ValueError("iqm of no scores")
    cut = int(0.25 * n)  # trim_mean's rule: the same count off each end
    return float(values[cut:n - cut].mean())


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y): per task (column), the share of run pairs where X's score beats Y's (ties: 1/2), averaged."""
    x, y = np.atleast_2d(np.asarray(x, dtype=np.float64)), np.atleast_2d(np.asarray(y, dtype=np.float64))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"different tasks: {x.shape[1]} and {y.shape[1]}")
    per_task = [((xi[:, None] > yi[None, :]) + 0.5 * (xi[:, None] == yi[None, :])).mean()
                for xi, yi in zip(x.T, y.T)]
    return float(np.mean(per_task))


def stratified_bootstrap_ci(statistic: Callable[..., float], *scores: np.ndarray, reps: int = 2000,
                            seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """(point estimate, low, high) of ``statistic(*scores)``, resampling each matrix's runs (rows) with
    replacement within each task (column), independently per matrix."""
    rng = np.random.default_rng(seed)
    matrices = [np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in scores]
    point = statistic(*matrices)
    draws = np.empty(reps)
    for r in range(reps):
        resampled = []
        for m in matrices:
            rows = rng.integers(0, m.shape[0], size=m.shape)  # a run index per (draw, task)
            resampled.append(np.take_along_axis(m, rows, axis=0))
        draws[r] = statistic(*resampled)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(point), float(low), float(high)
