"""OOD metrics: OOD is the positive class and higher score = more OOD."""

from __future__ import annotations

import numpy as np
import pytest

from dgmood.evaluation.metrics import aupr_in, aupr_out, auroc, fpr_at_tpr, ood_metrics


def test_perfect_separation() -> None:
    m = ood_metrics(in_scores=[0.1, 0.2, 0.3], out_scores=[0.9, 1.0, 1.1, 1.2])
    assert m.auroc == 1.0 and m.aupr_in == 1.0 and m.aupr_out == 1.0 and m.fpr95_out == 0.0


def test_reversed_scores_give_auroc_zero_and_fpr_one() -> None:
    m = ood_metrics(in_scores=[5.0, 6.0, 7.0], out_scores=[0.0, 1.0])
    assert m.auroc == 0.0 and m.fpr95_out == 1.0


def test_hand_computed_case() -> None:
    scores_in = np.array([0.0, 2.0, 4.0, 6.0])
    scores_out = np.array([1.0, 5.0, 7.0, 8.0])
    # pairs (out > in): 1>0; 5>0,2,4; 7>all; 8>all => 1+3+4+4 = 12 of 16
    assert auroc(scores_in, scores_out) == pytest.approx(12 / 16)
    # 95% of OOD flagged needs threshold <= 1.0, which flags in-scores 2, 4, 6 => FPR 3/4
    assert fpr_at_tpr(scores_in, scores_out) == pytest.approx(0.75)
    # AUPR-out = average precision with OOD positive, ranks: 8,7,6(in),5,4(in),2(in),1,0(in)
    ap_out = (1 / 1 + 2 / 2 + 3 / 4 + 4 / 7) / 4
    assert aupr_out(scores_in, scores_out) == pytest.approx(ap_out)
    assert 0 < aupr_in(scores_in, scores_out) < 1


def test_one_class_or_nan_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="both in-distribution and OOD"):
        ood_metrics([], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        ood_metrics([0.0, np.nan], [1.0])
