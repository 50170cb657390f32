"""Typicality test: is an input (or a batch) as far from the model's entropy as data are?

References: Nalisnick, Matsukawa, Teh & Lakshminarayanan, "Detecting Out-of-Distribution
Inputs to Deep Generative Models Using Typicality", 2019 (arXiv:1906.02994).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dgmood.scores.base import Score, ScoreInput, register_score
from dgmood.scores.density import negative_log_likelihood

BATCH_SIZES = (1, 2, 5, 10, 25)  # the batch sizes M of Nalisnick et al. 2019b, Table 1


@dataclass(frozen=True)
class TypicalSet:
    """An entropy estimate and, per batch size M, the bootstrap radius of the typical set."""

    entropy: float  # mean NLL of in-distribution data (bits/dim), estimates H[p]
    thresholds: dict[int, float]  # M -> (1 - alpha) quantile of |mean NLL of M images - entropy|


def batch_mean_nll(
    nll: np.ndarray, batch_size: int, n_batches: int, rng: np.random.Generator
) -> np.ndarray:
    """Mean NLL of ``n_batches`` batches of ``batch_size`` images drawn with replacement."""
    if batch_size < 1 or n_batches < 1:
        raise ValueError(f"batch_size and n_batches must be >= 1, got {batch_size}, {n_batches}")
    values = np.asarray(nll, dtype=np.float64)
    if values.size == 0:
        raise ValueError("need at least one NLL value")
    picks = rng.integers(0, values.size, size=(n_batches, batch_size))
    result: np.ndarray = values[picks].mean(axis=1)
    return result


def fit_typical_set(
    train_nll: np.ndarray,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    alpha: float = 0.01,
    n_bootstrap: int = 5000,
    seed: int = 0,
) -> TypicalSet:
    """Entropy from the first half of ``train_nll``; thresholds by bootstrap on the second.

    ``train_nll``: NLLs of held-out in-distribution images (not the model's training
    images, whose NLL is biased low). Keeping the halves apart avoids measuring the spread
    around an estimate fitted on the same images. A batch of M in-distribution images lies
    outside the threshold with probability about ``alpha``.
    """
    values = np.asarray(train_nll, dtype=np.float64)
    if values.size < 4:
        raise ValueError(f"the typicality test needs >= 4 training NLL values, got {values.size}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    half = values.size // 2
    entropy = float(values[:half].mean())
    rng = np.random.default_rng(seed)
    thresholds = {
        int(m): float(
            np.quantile(
                np.abs(batch_mean_nll(values[half:], m, n_bootstrap, rng) - entropy), 1.0 - alpha
            )
        )
        for m in batch_sizes
    }
    return TypicalSet(entropy=entropy, thresholds=thresholds)


@register_score
class Typicality(Score):
    """Distance of an image's NLL (bits/dim) from the entropy of in-distribution data.

    ``fit`` estimates the entropy and the bootstrap thresholds of the typical set for batch
    sizes 1, 2, 5, 10, 25 (:attr:`typical_set`) on *held-out* in-distribution images
    (``fits_on = "held_out"``): a model's NLL on the images it trained on is lower than on new
    ones, so a typical set fitted there flags in-distribution test batches. The per-image
    score is ``|NLL(x) - H|`` (M = 1). :meth:`is_atypical` applies the test to a batch.

    References: Nalisnick, Matsukawa, Teh & Lakshminarayanan, "Detecting Out-of-Distribution
    Inputs to Deep Generative Models Using Typicality", 2019 (arXiv:1906.02994).
    """

    name = "typicality"
    needs_stats = ("bits_per_dim",)
    needs_fit = True
    fits_on = "held_out"

    def __init__(self, alpha: float = 0.01, n_bootstrap: int = 5000, seed: int = 0) -> None:
        self.alpha, self.n_bootstrap, self.seed = alpha, n_bootstrap, seed
        self.typical_set: TypicalSet | None = None

    def fit(self, train: ScoreInput) -> Typicality:
        """Fit on held-out in-distribution statistics (the model never trained on them)."""
        self.typical_set = fit_typical_set(
            negative_log_likelihood(train.stats),
            alpha=self.alpha,
            n_bootstrap=self.n_bootstrap,
            seed=self.seed,
        )
        return self

    def _fitted(self) -> TypicalSet:
        if self.typical_set is None:
            raise ValueError("call fit() on in-distribution training data before score()")
        return self.typical_set

    def score(self, data: ScoreInput) -> np.ndarray:
        return np.abs(negative_log_likelihood(data.stats) - self._fitted().entropy)

    def is_atypical(self, batch_nll: np.ndarray) -> bool:
        """The test on one batch: its mean NLL is farther from H than the M-image threshold."""
        typical = self._fitted()
        m = int(np.asarray(batch_nll).size)
        if m not in typical.thresholds:
            raise ValueError(
                f"no threshold for batch size {m}; fitted: {sorted(typical.thresholds)}"
            )
        return bool(abs(float(np.mean(batch_nll)) - typical.entropy) > typical.thresholds[m])
