"""The typicality test at batch level: AUROC of batches of M images, per batch size M.

References: Nalisnick, Matsukawa, Teh & Lakshminarayanan, "Detecting Out-of-Distribution
Inputs to Deep Generative Models Using Typicality", 2019.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dgmood.evaluation.metrics import auroc
from dgmood.scores.typicality import BATCH_SIZES, batch_mean_nll


def typicality_batch_auroc(
    in_nll: np.ndarray,
    ood_nll: np.ndarray,
    entropy: float,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    n_batches: int = 1000,
    seed: int = 0,
) -> dict[int, float]:
    """AUROC of the batch score ``|mean NLL of M images - entropy|``, in-test vs OOD, per M.

    Batches are drawn with replacement from each set, ``n_batches`` per set and size.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for m in batch_sizes:
        in_scores = np.abs(batch_mean_nll(in_nll, m, n_batches, rng) - entropy)
        ood_scores = np.abs(batch_mean_nll(ood_nll, m, n_batches, rng) - entropy)
        out[int(m)] = auroc(in_scores, ood_scores)
    return out
