"""One-class model on cached statistics: a shifted cluster is separated."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from dgmood.evaluation.metrics import auroc
from dgmood.scores.base import ScoreInput
from dgmood.scores.dose import DensityOfStates

MakeInput = Callable[..., ScoreInput]


def _cluster(shift: float, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    log_pz = rng.normal(-2000.0, 50.0, n)
    # the volume term is correlated with the density term; the OOD cluster breaks only that
    volume = 0.5 * log_pz + rng.normal(0.0, 5.0, n) + shift
    return {
        "log_pz": log_pz,
        "log_abs_det_jacobian": volume,
        "bits_per_dim": -(log_pz + volume) / 1000,
    }


@pytest.mark.parametrize("method", ["ocsvm", "gmm"])
def test_separates_a_shifted_cluster(method: str, make_input: MakeInput) -> None:
    score = DensityOfStates(method=method).fit(make_input(_cluster(0.0, 800, 0)))  # type: ignore[arg-type]
    assert score.keys == ("bits_per_dim", "log_pz", "log_abs_det_jacobian")
    in_scores = score.score(make_input(_cluster(0.0, 300, 1)))
    ood_scores = score.score(make_input(_cluster(40.0, 300, 2)))
    assert auroc(in_scores, ood_scores) > 0.97


def test_uses_only_statistics_present_and_needs_fit(make_input: MakeInput) -> None:
    with pytest.raises(ValueError, match="fit"):
        DensityOfStates().score(make_input({"bits_per_dim": np.zeros(3)}))
    with pytest.raises(ValueError, match="none of the statistics"):
        DensityOfStates().fit(make_input({"logits": np.zeros(3)}))
    with pytest.raises(ValueError, match="method"):
        DensityOfStates(method="kde")  # type: ignore[arg-type]


def _standardized(train: np.ndarray, data: np.ndarray) -> np.ndarray:
    return (data - train.mean(axis=0)) / train.std(axis=0)


def _columns(stats: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([stats[k] for k in ("bits_per_dim", "log_pz", "log_abs_det_jacobian")], 1)


def test_gaussian_mixture_of_one_component_is_the_fitted_gaussian(make_input: MakeInput) -> None:
    """With one component the GMM is the ML Gaussian of the standardized training statistics."""
    from scipy.stats import multivariate_normal

    train, test = _cluster(0.0, 400, 3), _cluster(20.0, 50, 4)
    score = DensityOfStates(method="gmm", n_components=1).fit(make_input(train))  # type: ignore[arg-type]
    got = score.score(make_input(test))  # type: ignore[arg-type]
    features = _standardized(_columns(train), _columns(train))
    mean = features.mean(axis=0)
    covariance = np.cov(features, rowvar=False, bias=True) + 1e-6 * np.eye(3)  # sklearn's reg_covar
    expected = -multivariate_normal(mean, covariance).logpdf(
        _standardized(_columns(train), _columns(test))
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_one_class_svm_is_the_rbf_svm_with_nu_on_standardized_statistics(
    make_input: MakeInput,
) -> None:
    """The score is minus the decision function of an RBF one-class SVM, nu = 0.05, with
    gamma = 1 / (features x variance) of the standardized training statistics (sklearn's
    "scale"), fitted here on features standardized by hand."""
    from sklearn.svm import OneClassSVM

    train, test = _cluster(0.0, 400, 5), _cluster(20.0, 50, 6)
    got = DensityOfStates().fit(make_input(train)).score(make_input(test))  # type: ignore[arg-type]
    features = _standardized(_columns(train), _columns(train))
    gamma = 1.0 / (features.shape[1] * features.var())
    svm = OneClassSVM(kernel="rbf", gamma=gamma, nu=0.05).fit(features)
    expected = -svm.decision_function(_standardized(_columns(train), _columns(test)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    # a different nu gives different scores: the comparison can fail
    other = DensityOfStates(nu=0.2).fit(make_input(train)).score(make_input(test))  # type: ignore[arg-type]
    assert np.abs(other - expected).max() > 1e-3
