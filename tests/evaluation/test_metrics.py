"""OOD metrics: higher score = more OOD; both FPR@95TPR conventions; bootstrap intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pytorch_ood.metrics import OODMetrics as PytorchOODMetrics
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from dgmood.evaluation.metrics import (
    METRIC_DESCRIPTIONS,
    METRIC_NAMES,
    OODMetrics,
    _PooledRanking,
    aupr_in,
    aupr_out,
    auroc,
    fpr_at_tpr,
    ood_metrics,
)


def point_values(m: OODMetrics) -> list[float]:
    return [getattr(m, name) for name in METRIC_NAMES]


def test_perfect_separation() -> None:
    m = ood_metrics(in_scores=[0.1, 0.2, 0.3], out_scores=[0.9, 1.0, 1.1, 1.2])
    assert point_values(m) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert (m.n_in, m.n_out) == (3, 4)


def test_reversed_separation_gives_auroc_zero_and_both_fprs_one() -> None:
    m = ood_metrics(in_scores=[5.0, 6.0, 7.0], out_scores=[0.0, 1.0], confidence=None)
    assert m.auroc == 0.0 and m.fpr95_in == 1.0 and m.fpr95_out == 1.0
    # every in-distribution sample ranks below every OOD one once negated: AP at chance floor
    assert m.aupr_out == pytest.approx((1 / 4 + 2 / 5) / 2)


def test_all_scores_tied_is_chance() -> None:
    m = ood_metrics(np.zeros(30), np.zeros(10))
    assert m.auroc == 0.5
    assert m.aupr_out == pytest.approx(10 / 40) and m.aupr_in == pytest.approx(30 / 40)
    assert m.fpr95_in == 1.0 and m.fpr95_out == 1.0  # one threshold: accept all or none
    assert m.ci["auroc"] == (0.5, 0.5)


def test_hand_computed_case() -> None:
    scores_in = np.array([0.0, 2.0, 4.0, 6.0])
    scores_out = np.array([1.0, 5.0, 7.0, 8.0])
    # pairs (out > in): 1>0; 5>0,2,4; 7>all; 8>all => 1+3+4+4 = 12 of 16
    assert auroc(scores_in, scores_out) == pytest.approx(12 / 16)
    # flagging 95% of OOD needs threshold <= 1.0, which flags in-scores 2, 4, 6 => 3/4
    assert fpr_at_tpr(scores_in, scores_out, positive="out") == pytest.approx(0.75)
    # accepting 95% of in-dist needs threshold >= 6.0, which accepts OOD 1, 5 => 2/4
    assert fpr_at_tpr(scores_in, scores_out, positive="in") == pytest.approx(0.5)
    # AUPR-out, OOD positive, descending: 8,7,6(in),5,4(in),2(in),1,0(in)
    assert aupr_out(scores_in, scores_out) == pytest.approx((1 / 1 + 2 / 2 + 3 / 4 + 4 / 7) / 4)
    # AUPR-in, in positive, ascending: 0,1(out),2,4,5(out),6,7(out),8(out)
    assert aupr_in(scores_in, scores_out) == pytest.approx((1 / 1 + 2 / 3 + 3 / 4 + 4 / 6) / 4)


def test_the_two_fpr_conventions_differ_as_the_population_predicts() -> None:
    # in N(0, 1), OOD N(2, 3^2): the issue tracker's 0.464 / 1.000 came from a small sample
    rng = np.random.default_rng(0)
    m = ood_metrics(rng.normal(0, 1, 100_000), rng.normal(2, 3, 100_000), confidence=None)
    threshold_in = norm.ppf(0.95)  # accepts 95% of in-distribution
    assert m.fpr95_in == pytest.approx(norm.cdf(threshold_in, 2, 3), abs=0.005)  # 0.453
    threshold_out = norm.ppf(0.05, 2, 3)  # flags 95% of OOD
    assert m.fpr95_out == pytest.approx(norm.sf(threshold_out), abs=0.001)  # 0.998
    assert m.auroc == pytest.approx(norm.cdf(2 / np.sqrt(10)), abs=0.003)  # 0.736


@pytest.mark.parametrize(
    ("in_scores", "out_scores", "message"),
    [
        ([], [1.0, 2.0], "both in-distribution and OOD"),
        ([1.0], [], "both in-distribution and OOD"),
        ([0.0, np.nan], [1.0], r"NaN for in-distribution images \[1\]"),
        ([0.0], [1.0, np.nan, np.nan], r"NaN for OOD images \[1, 2\]"),
    ],
)
def test_empty_or_nan_input_is_a_clear_error(
    in_scores: list[float], out_scores: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ood_metrics(in_scores, out_scores)


def test_infinite_scores_rank_as_the_most_extreme() -> None:
    m = ood_metrics([0.0, -np.inf, 1.0], [np.inf, 2.0], confidence=None)
    assert m.auroc == 1.0 and m.fpr95_in == 0.0


def test_bad_bootstrap_settings_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="confidence"):
        ood_metrics([0.0], [1.0], confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        ood_metrics([0.0], [1.0], n_resamples=0)
    with pytest.raises(ValueError, match="positive"):
        fpr_at_tpr([0.0], [1.0], positive="ood")  # type: ignore[arg-type]


@pytest.mark.parametrize("discrete", [False, True])
def test_bootstrap_statistic_equals_sklearn_on_the_full_sample(discrete: bool) -> None:
    rng = np.random.default_rng(3)
    scores_in, scores_out = rng.normal(0, 1, 400), rng.normal(0.7, 1.5, 250)
    if discrete:  # many ties, inside and across the two sets
        scores_in, scores_out = np.round(scores_in), np.round(scores_out)
    ranking = _PooledRanking(scores_in, scores_out)
    values = ranking.metrics(np.arange(400)[None], np.arange(250)[None])[:, 0]
    expected = ood_metrics(scores_in, scores_out, confidence=None)
    np.testing.assert_allclose(values, point_values(expected), rtol=0, atol=1e-12)
    # and on a resample with repeated indices, against sklearn on the resampled scores
    index_in, index_out = rng.integers(0, 400, 400), rng.integers(0, 250, 250)
    values = ranking.metrics(index_in[None], index_out[None])[:, 0]
    resampled = ood_metrics(scores_in[index_in], scores_out[index_out], confidence=None)
    np.testing.assert_allclose(values, point_values(resampled), rtol=0, atol=1e-12)


def test_intervals_contain_the_estimate_narrow_with_n_and_are_seeded() -> None:
    rng = np.random.default_rng(1)
    small = ood_metrics(rng.normal(0, 1, 200), rng.normal(1, 1, 200), n_resamples=400)
    large = ood_metrics(rng.normal(0, 1, 5000), rng.normal(1, 1, 5000), n_resamples=400)
    assert set(small.ci) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        low, high = large.ci[name]
        assert low <= getattr(large, name) <= high
        small_width = small.ci[name][1] - small.ci[name][0]
        assert high - low < small_width / 2  # 25x the samples: about 1/5 the width
    # AUROC's standard error for two unit normals 1 apart, n = 5000 each, is ~0.0045
    assert 0.012 < large.ci["auroc"][1] - large.ci["auroc"][0] < 0.024
    scores_in, scores_out = rng.normal(0, 1, 200), rng.normal(1, 1, 200)
    first = ood_metrics(scores_in, scores_out, n_resamples=200, seed=7)
    assert ood_metrics(scores_in, scores_out, n_resamples=200, seed=7).ci == first.ci
    assert ood_metrics(scores_in, scores_out, n_resamples=200, seed=8).ci != first.ci


def test_to_dict_is_json_ready_and_names_every_metric() -> None:
    m = ood_metrics([0.0, 1.0, 2.0], [1.5, 3.0], n_resamples=50)
    as_dict = json.loads(json.dumps(m.to_dict()))
    assert as_dict["auroc"] == m.auroc and as_dict["n_out"] == 2
    assert as_dict["ci"]["fpr95_in"] == list(m.ci["fpr95_in"])
    assert ood_metrics([0.0], [1.0], confidence=None).to_dict()["ci"] == {}
    assert set(METRIC_DESCRIPTIONS) == set(METRIC_NAMES)


def test_bootstrap_of_ten_thousand_by_ten_thousand_keeps_the_exact_point_estimate() -> None:
    # its speed is measured by benchmarks/metrics_bootstrap.py, not asserted here
    rng = np.random.default_rng(2)
    scores_in, scores_out = rng.normal(0, 1, 10_000), rng.normal(1, 2, 10_000)
    m = ood_metrics(scores_in, scores_out, n_resamples=200)
    labels = np.r_[np.zeros(10_000), np.ones(10_000)]
    assert m.auroc == roc_auc_score(labels, np.r_[scores_in, scores_out])
    low, high = m.ci["auroc"]
    assert low < m.auroc < high and high - low < 0.03


def test_pytorch_ood_agrees_on_random_data() -> None:
    rng = np.random.default_rng(4)
    scores_in, scores_out = rng.normal(0, 1, 3000), rng.normal(1, 2, 2000)
    scores_in[:300] = np.round(scores_in[:300], 1)  # some ties
    m = ood_metrics(scores_in, scores_out, confidence=None)
    # pytorch-ood: OOD has labels < 0, OOD is positive, higher score = more OOD
    scores = torch.from_numpy(np.r_[scores_in, scores_out])
    labels = torch.from_numpy(np.r_[np.zeros(3000), -np.ones(2000)]).long()
    theirs = PytorchOODMetrics().update(scores, labels).compute()
    assert theirs["AUROC"] == pytest.approx(m.auroc, abs=1e-12)
    assert theirs["FPR95TPR"] == pytest.approx(m.fpr95_out, abs=1e-12)
    # their AUPRs integrate the PR curve by trapezoids, ours is average precision (steps)
    assert theirs["AUPR-IN"] == pytest.approx(m.aupr_in, abs=2e-3)
    assert theirs["AUPR-OUT"] == pytest.approx(m.aupr_out, abs=2e-3)
    # the literature's FPR is theirs with the classes swapped and the scores negated
    swapped = PytorchOODMetrics().update(-scores, -1 - labels).compute()
    assert swapped["FPR95TPR"] == pytest.approx(m.fpr95_in, abs=1e-12)
