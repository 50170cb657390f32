"""Likelihood-based OOD scores: pure functions of cached per-sample statistics.

Higher score = more likely OOD, everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def negative_log_likelihood(stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """``-log p(x)`` in bits per dimension: the naive score Nalisnick et al. show fails.

    Uses the tightest bound available: a VAE's importance-weighted bound when it was
    computed (``iwae_bits_per_dim``), else ``bits_per_dim``.

    References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?", 2019.
    """
    key = "iwae_bits_per_dim" if "iwae_bits_per_dim" in stats else "bits_per_dim"
    return np.asarray(stats[key], dtype=np.float64)


DENSITY_SCORES = {"nll": negative_log_likelihood}
