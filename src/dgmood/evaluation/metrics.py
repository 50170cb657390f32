"""OOD detection metrics with one convention: OOD is the positive class, higher score = more OOD.

- AUROC: probability that a random OOD sample scores higher than a random in-distribution one.
- AUPR-out / AUPR-in: average precision with OOD (resp. in-distribution, scores negated)
  as the positive class.
- FPR@95TPR: fraction of in-distribution samples flagged as OOD at the threshold that flags
  95% of the OOD samples.

All computed with scikit-learn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _validate(in_scores: ArrayLike, out_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    scores_in = np.asarray(in_scores, dtype=np.float64).ravel()
    scores_out = np.asarray(out_scores, dtype=np.float64).ravel()
    if scores_in.size == 0 or scores_out.size == 0:
        raise ValueError(
            "OOD metrics need both in-distribution and OOD scores; one of them is empty"
        )
    if not (np.isfinite(scores_in).all() and np.isfinite(scores_out).all()):
        raise ValueError("OOD metrics need finite scores; got NaN or inf")
    return scores_in, scores_out


def _labels_scores(scores_in: np.ndarray, scores_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate([np.zeros(scores_in.size), np.ones(scores_out.size)])
    return labels, np.concatenate([scores_in, scores_out])


def auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    labels, scores = _labels_scores(*_validate(in_scores, out_scores))
    return float(roc_auc_score(labels, scores))


def aupr_out(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    labels, scores = _labels_scores(*_validate(in_scores, out_scores))
    return float(average_precision_score(labels, scores))


def aupr_in(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    labels, scores = _labels_scores(*_validate(in_scores, out_scores))
    return float(average_precision_score(1 - labels, -scores))


def fpr_at_tpr(in_scores: ArrayLike, out_scores: ArrayLike, tpr: float = 0.95) -> float:
    """Smallest false-positive rate among thresholds whose true-positive rate is >= ``tpr``."""
    labels, scores = _labels_scores(*_validate(in_scores, out_scores))
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fprs[np.searchsorted(tprs, tpr, side="left")])


@dataclass(frozen=True)
class OODMetrics:
    auroc: float
    aupr_in: float
    aupr_out: float
    fpr95_in: float  # fraction of OOD accepted when 95% of in-dist is accepted (literature)
    fpr95_out: float  # fraction of in-dist flagged when 95% of OOD is flagged (pytorch-ood)
    n_in: int
    n_out: int
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ood_metrics(
    in_scores: ArrayLike, out_scores: ArrayLike, *, confidence: float | None = None
) -> OODMetrics:
    """All metrics at once (higher score = more OOD)."""
    scores_in, scores_out = _validate(in_scores, out_scores)
    return OODMetrics(
        auroc=auroc(scores_in, scores_out),
        aupr_in=aupr_in(scores_in, scores_out),
        aupr_out=aupr_out(scores_in, scores_out),
        fpr95_in=fpr_at_tpr(-scores_out, -scores_in, 0.95),
        fpr95_out=fpr_at_tpr(scores_in, scores_out, 0.95),
        n_in=int(scores_in.size),
        n_out=int(scores_out.size),
    )
