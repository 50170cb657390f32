"""OOD detection metrics: higher score = more OOD, both FPR@95TPR conventions, bootstrap CIs.

- ``auroc``: probability that a random OOD sample scores higher than a random
  in-distribution one (ties count half); the same whichever class is called positive.
- ``aupr_in`` / ``aupr_out``: average precision with in-distribution (scores negated) /
  OOD as the positive class.
- ``fpr95_in``: fraction of OOD samples *accepted* at the threshold that accepts 95% of the
  in-distribution samples (in-distribution positive): the convention of Hendrycks & Gimpel,
  ODIN, the energy score and OpenOOD.
- ``fpr95_out``: fraction of in-distribution samples *flagged* at the threshold that flags
  95% of the OOD samples (OOD positive): the convention of pytorch-ood.

The two FPRs differ, often a lot: for in-distribution N(0, 1) and OOD N(2, 3^2),
``fpr95_in`` is 0.45 and ``fpr95_out`` 1.00. ``docs/metrics.md`` explains both.

Scores of +-inf rank as the most extreme (a model may give log p = -inf to an image far
from its data); NaN has no order and is one :class:`NaNScoresError` naming the images.

Point estimates come from scikit-learn. The bootstrap intervals resample the two sets
independently (:func:`scipy.stats.bootstrap`, percentile method); each resample's metrics
are computed from one sort of the pooled scores, so 1000 resamples of 10,000 + 10,000 scores
take about a second.

References:
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
    Examples in Neural Networks", ICLR 2017; Liang et al., "Enhancing The Reliability of
    Out-of-distribution Image Detection in Neural Networks" (ODIN), ICLR 2018; Liu et al.,
    "Energy-based Out-of-distribution Detection", NeurIPS 2020; Yang et al., "OpenOOD",
    NeurIPS 2022; Kirchheim et al., "PyTorch-OOD", CVPR Workshops 2022; Efron & Tibshirani,
    "An Introduction to the Bootstrap", 1993.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import bootstrap, rankdata
from sklearn.metrics import (
    average_precision_score,
    roc_auc_score,
    roc_curve,
)

TPR_LEVEL = 0.95  # the "95" of FPR@95TPR
METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95_in", "fpr95_out")
FPR_HEADERS = "FPR@95TPR in-pos (OOD accepted) | FPR@95TPR OOD-pos (in flagged)"
METRIC_DESCRIPTIONS: dict[str, str] = {
    "auroc": "AUROC: P(random OOD sample scores higher than random in-distribution one); "
    "0.5 = chance, 1 = perfect",
    "aupr_in": "AUPR-in: average precision, in-distribution positive (scores negated); "
    "chance = in-distribution share",
    "aupr_out": "AUPR-out: average precision, OOD positive; chance = OOD share",
    "fpr95_in": "FPR@95TPR (in positive; Hendrycks & Gimpel, ODIN, OpenOOD): fraction of OOD "
    "accepted when 95% of in-distribution is accepted; lower is better",
    "fpr95_out": "FPR@95TPR (OOD positive; pytorch-ood): fraction of in-distribution flagged "
    "when 95% of OOD is flagged; lower is better",
}
_BOOTSTRAP_BATCH = 50  # resamples per vectorized call: bounds memory at ~50 x n_in+n_out


class NaNScoresError(ValueError):
    """Scores with NaN: no order, so no metric. Names the images (indices) that have one."""

    def __init__(self, in_indices: np.ndarray, ood_indices: np.ndarray) -> None:
        self.in_indices, self.ood_indices = in_indices, ood_indices
        parts = [
            f"{name} images {_shown_indices(indices)}"
            for name, indices in (("in-distribution", in_indices), ("OOD", ood_indices))
            if indices.size
        ]
        super().__init__(f"the score is NaN for {' and '.join(parts)}")


def _shown_indices(indices: np.ndarray, at_most: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:at_most])
    more = f", ... ({indices.size} in all)" if indices.size > at_most else ""
    return f"[{shown}{more}]"


def _validate(in_scores: ArrayLike, out_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    scores_in = np.asarray(in_scores, dtype=np.float64).ravel()
    scores_out = np.asarray(out_scores, dtype=np.float64).ravel()
    if scores_in.size == 0 or scores_out.size == 0:
        raise ValueError(
            f"OOD metrics need both in-distribution and OOD scores; got {scores_in.size} "
            f"in-distribution and {scores_out.size} OOD scores"
        )
    nan_in, nan_out = np.flatnonzero(np.isnan(scores_in)), np.flatnonzero(np.isnan(scores_out))
    if nan_in.size or nan_out.size:
        raise NaNScoresError(nan_in, nan_out)
    if not (np.isfinite(scores_in).all() and np.isfinite(scores_out).all()):
        # +-inf is the most extreme score there is: rank it so (every metric here depends
        # only on the order of the scores and their ties)
        ranks = rankdata(np.concatenate([scores_in, scores_out]), method="dense")
        return ranks[: scores_in.size].astype(np.float64), ranks[scores_in.size :].astype(
            np.float64
        )
    return scores_in, scores_out


def _labels_scores(scores_in: np.ndarray, scores_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels with OOD = 1 and the pooled scores."""
    labels = np.concatenate([np.zeros(scores_in.size), np.ones(scores_out.size)])
    return labels, np.concatenate([scores_in, scores_out])


def auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Area under the ROC curve (ties count half)."""
    labels, scores = _labels_scores(*_validate(in_scores, out_scores))
    return float(roc_auc_score(labels, scores))


def aupr_out(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Average precision with OOD as the positive class."""
    labels, scores = _labels_scores(*_validate(in_scores, out_scores))
    return float(average_precision_score(labels, scores))


def aupr_in(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Average precision with in-distribution as the positive class (scores negated)."""
    labels, scores = _labels_scores(*_validate(in_scores, out_scores))
    return float(average_precision_score(1 - labels, -scores))


def fpr_at_tpr(
    in_scores: ArrayLike,
    out_scores: ArrayLike,
    tpr: float = TPR_LEVEL,
    *,
    positive: Literal["in", "out"],
) -> float:
    """False-positive rate at the first ROC threshold whose true-positive rate is >= ``tpr``.

    ``positive="in"``: fraction of OOD accepted when ``tpr`` of in-distribution is accepted
    (Hendrycks & Gimpel, OpenOOD). ``positive="out"``: fraction of in-distribution flagged
    when ``tpr`` of OOD is flagged (pytorch-ood).
    """
    if positive not in ("in", "out"):
        raise ValueError(f"positive must be 'in' or 'out', got {positive!r}")
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"tpr must be in [0, 1], got {tpr}")
    labels, scores = _labels_scores(*_validate(in_scores, out_scores))
    if positive == "in":
        labels, scores = 1 - labels, -scores
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fprs[np.searchsorted(tprs, tpr, side="left")])


@dataclass(frozen=True)
class OODMetrics:
    """Metrics of in-distribution vs OOD scores (higher = more OOD); see the module docstring."""

    auroc: float
    aupr_in: float  # average precision, positive class = in-distribution (scores negated)
    aupr_out: float  # positive class = OOD
    fpr95_in: float  # literature/OpenOOD: fraction of OOD accepted when 95% of in-dist is accepted
    fpr95_out: float  # pytorch-ood: fraction of in-dist flagged when 95% of OOD is flagged
    n_in: int
    n_out: int
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # {} when not computed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, with each interval as a ``[low, high]`` list."""
        values: dict[str, Any] = {name: getattr(self, name) for name in METRIC_NAMES}
        values |= {"n_in": self.n_in, "n_out": self.n_out}
        values["ci"] = {name: [low, high] for name, (low, high) in self.ci.items()}
        return values


class _PooledRanking:
    """The pooled scores sorted once, so any resample's metrics cost O(n) and no sort.

    A resample is given by index arrays into the in-distribution and OOD scores; its
    multiplicities, summed per distinct score, give the ROC and precision-recall counts.
    """

    def __init__(self, scores_in: np.ndarray, scores_out: np.ndarray):
        pooled = np.concatenate([scores_in, scores_out])
        order = np.argsort(-pooled, kind="stable")  # descending: thresholds from strict to lax
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        self.position_in = position[: scores_in.size]
        self.position_out = position[scores_in.size :]
        sorted_scores = pooled[order]
        # first sorted index of every distinct score: tied samples enter at one threshold
        self.group_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
        self.n_pooled = pooled.size

    def _group_counts(self, positions: np.ndarray) -> np.ndarray:
        """Per resample (rows), how many of its samples have each distinct score."""
        n_rows = positions.shape[0]
        offsets = (np.arange(n_rows) * self.n_pooled)[:, None]
        counts = np.bincount((positions + offsets).ravel(), minlength=n_rows * self.n_pooled)
        return np.add.reduceat(counts.reshape(n_rows, self.n_pooled), self.group_starts, axis=1)

    def metrics(self, index_in: np.ndarray, index_out: np.ndarray) -> np.ndarray:
        """``[5, n_rows]`` metrics (in :data:`METRIC_NAMES` order) of resamples ``[n_rows, n]``."""
        n_in, n_out = index_in.shape[-1], index_out.shape[-1]
        negatives = self._group_counts(self.position_in[index_in]).astype(np.float64)
        positives = self._group_counts(self.position_out[index_out]).astype(np.float64)
        # OOD positive, thresholds descending: samples scoring >= each distinct score
        true_pos, false_pos = positives.cumsum(1), negatives.cumsum(1)
        tpr, fpr = true_pos / n_out, false_pos / n_in
        zero = np.zeros((tpr.shape[0], 1))
        fpr_curve, tpr_curve = np.hstack([zero, fpr]), np.hstack([zero, tpr])
        area = np.sum(np.diff(fpr_curve, axis=1) * (tpr_curve[:, 1:] + tpr_curve[:, :-1]), 1) / 2
        # max(., 1): a score absent from the resample adds no recall, so its precision is moot
        precision_out = true_pos / np.maximum(true_pos + false_pos, 1)
        average_precision_out = np.sum(positives / n_out * precision_out, 1)
        # in-distribution positive, thresholds ascending: samples scoring <= each distinct score
        in_pos, in_false = negatives[:, ::-1].cumsum(1), positives[:, ::-1].cumsum(1)
        precision_in = in_pos / np.maximum(in_pos + in_false, 1)
        average_precision_in = np.sum(negatives[:, ::-1] / n_in * precision_in, 1)
        rows = np.arange(tpr.shape[0])
        fpr95_out = fpr[rows, np.argmax(tpr >= TPR_LEVEL, axis=1)]
        fpr95_in = (in_false / n_out)[rows, np.argmax(in_pos / n_in >= TPR_LEVEL, axis=1)]
        return np.stack([area, average_precision_in, average_precision_out, fpr95_in, fpr95_out])


def _bootstrap_intervals(
    scores_in: np.ndarray, scores_out: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> dict[str, tuple[float, float]]:
    ranking = _PooledRanking(scores_in, scores_out)

    def statistic(index_in: np.ndarray, index_out: np.ndarray, axis: int = -1) -> np.ndarray:
        batch_shape = index_in.shape[:-1]
        values = ranking.metrics(
            index_in.reshape(-1, index_in.shape[-1]), index_out.reshape(-1, index_out.shape[-1])
        )
        return values.reshape(len(METRIC_NAMES), *batch_shape)

    # resampling indices, not scores, lets the statistic reuse the one sort above
    result = bootstrap(
        (np.arange(scores_in.size), np.arange(scores_out.size)),
        statistic,
        n_resamples=n_resamples,
        batch=_BOOTSTRAP_BATCH,
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return {name: (float(low[i]), float(high[i])) for i, name in enumerate(METRIC_NAMES)}


def ood_metrics(
    in_scores: ArrayLike,
    out_scores: ArrayLike,
    *,
    confidence: float | None = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> OODMetrics:
    """All metrics at once (higher score = more OOD), with bootstrap intervals.

    ``confidence=None`` skips the bootstrap (``ci == {}``); otherwise ``ci`` holds a
    two-sided percentile interval per metric from ``n_resamples`` resamples of each set,
    reproducible with ``seed``.

    References:
        Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, chapter 13.
    """
    scores_in, scores_out = _validate(in_scores, out_scores)
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1) or None, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    ci = (
        {}
        if confidence is None
        else _bootstrap_intervals(scores_in, scores_out, confidence, n_resamples, seed)
    )
    return OODMetrics(
        auroc=auroc(scores_in, scores_out),
        aupr_in=aupr_in(scores_in, scores_out),
        aupr_out=aupr_out(scores_in, scores_out),
        fpr95_in=fpr_at_tpr(scores_in, scores_out, TPR_LEVEL, positive="in"),
        fpr95_out=fpr_at_tpr(scores_in, scores_out, TPR_LEVEL, positive="out"),
        n_in=int(scores_in.size),
        n_out=int(scores_out.size),
        ci=ci,
    )
