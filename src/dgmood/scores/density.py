"""The paper's baseline: a density model's negative log-likelihood.

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?", 2019.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dgmood.scores.base import Score, ScoreInput, register_score


def negative_log_likelihood(stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """``-log p(x)`` in bits per dimension, with the tightest bound available.

    A VAE's importance-weighted bound when it was computed (``iwae_bits_per_dim``), else
    ``bits_per_dim``.
    """
    key = "iwae_bits_per_dim" if "iwae_bits_per_dim" in stats else "bits_per_dim"
    return np.asarray(stats[key], dtype=np.float64)


@register_score
class NegativeLogLikelihood(Score):
    """Negative log-likelihood in bits/dim: the naive score that fails on FashionMNIST -> MNIST.

    References: Nalisnick, Matsukawa, Teh, Gorur & Lakshminarayanan, "Do Deep Generative
    Models Know What They Don't Know?", ICLR 2019.
    """

    name = "nll"
    needs_stats = ("bits_per_dim",)

    def score(self, data: ScoreInput) -> np.ndarray:
        return negative_log_likelihood(data.stats)
