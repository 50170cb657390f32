"""The typicality test at batch level: AUROC of batches of M images, per batch size M, and
the test itself (its thresholds) on held-out in-distribution and OOD batches.

References: Nalisnick, Matsukawa, Teh & Lakshminarayanan, "Detecting Out-of-Distribution
Inputs to Deep Generative Models Using Typicality", 2019.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dgmood.evaluation.metrics import auroc
from dgmood.scores.typicality import BATCH_SIZES, batch_mean_nll, fit_typical_set


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


@dataclass(frozen=True)
class BatchTestResult:
    """The typicality test on batches of ``batch_size`` images."""

    batch_size: int
    auroc: float  # of |mean NLL - H|, held-out in-distribution batches vs OOD batches
    threshold: float  # bootstrap (1 - alpha) quantile: a batch farther from H is flagged
    in_flagged: float  # share of held-out in-distribution batches flagged (~ alpha by design)
    ood_flagged: float  # share of OOD batches flagged (the test's power)


def typicality_batch_test(
    in_nll: np.ndarray,
    ood_nll: np.ndarray,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    *,
    alpha: float = 0.01,
    n_bootstrap: int = 5000,
    n_batches: int = 1000,
    seed: int = 0,
) -> list[BatchTestResult]:
    """Nalisnick et al.'s test on batches of M images, from held-out in-distribution NLLs.

    ``in_nll``: NLLs (bits/dim) of in-distribution images the model never trained on (a test
    split). Its first half fits the typical set (:func:`fit_typical_set`: entropy and
    bootstrap thresholds, from halves of that half); ``n_batches`` batches are drawn from its
    second half and from ``ood_nll``, so no evaluated batch contains an image the fit saw.
    """
    values = np.asarray(in_nll, dtype=np.float64)
    half = values.size // 2
    if half < 4:
        raise ValueError(f"the batch test needs >= 8 in-distribution NLL values, got {values.size}")
    typical = fit_typical_set(values[:half], batch_sizes, alpha, n_bootstrap, seed)
    rng = np.random.default_rng(seed + 1)
    results = []
    for m in batch_sizes:
        in_scores = np.abs(batch_mean_nll(values[half:], m, n_batches, rng) - typical.entropy)
        ood_scores = np.abs(batch_mean_nll(ood_nll, m, n_batches, rng) - typical.entropy)
        threshold = typical.thresholds[int(m)]
        results.append(
            BatchTestResult(
                batch_size=int(m),
                auroc=auroc(in_scores, ood_scores),
                threshold=threshold,
                in_flagged=float((in_scores > threshold).mean()),
                ood_flagged=float((ood_scores > threshold).mean()),
            )
        )
    return results
