"""Likelihood-based OOD scores: pure functions of cached per-sample statistics.

Higher score = more likely OOD, everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def negative_log_likelihood(stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """``-log p(x)`` in bits per dimension: the naive score Nalisnick et al. show fails.

    References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?", 2019.
    """
    return np.asarray(stats["bits_per_dim"], dtype=np.float64)


DENSITY_SCORES = {"nll": negative_log_likelihood}
