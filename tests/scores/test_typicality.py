"""Typicality: entropy and thresholds computable by hand; batches make the test sharper."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from dgmood.evaluation.typicality import typicality_batch_auroc
from dgmood.scores.base import ScoreInput
from dgmood.scores.typicality import Typicality, fit_typical_set

MakeInput = Callable[..., ScoreInput]


def test_entropy_from_first_half_and_thresholds_from_second() -> None:
    # first half has mean 2; every second-half value is 1 away from it
    train = np.array([1.0, 3.0, 1.0, 3.0, 1.0, 1.0, 3.0, 3.0])
    typical = fit_typical_set(train, batch_sizes=(1, 2), n_bootstrap=2000)
    assert typical.entropy == 2.0
    assert typical.thresholds[1] == pytest.approx(1.0)
    assert typical.thresholds[2] == pytest.approx(1.0)  # a pair (1, 1) or (3, 3) is 1 away


def test_score_is_distance_to_entropy_and_the_batch_test(make_input: MakeInput) -> None:
    score = Typicality(n_bootstrap=500).fit(
        make_input({"bits_per_dim": np.array([1.0, 3.0, 1.0, 3.0, 2.0, 2.0, 2.0, 2.0])})
    )
    np.testing.assert_allclose(
        score.score(make_input({"bits_per_dim": np.array([2.0, 5.0, 0.0])})), [0.0, 3.0, 2.0]
    )
    # too *likely* is atypical too: the point of the test
    assert score.is_atypical(np.array([0.5])) and not score.is_atypical(np.array([2.0]))
    with pytest.raises(ValueError, match="batch size 3"):
        score.is_atypical(np.zeros(3))


def test_unfitted_score_is_a_clear_error(make_input: MakeInput) -> None:
    with pytest.raises(ValueError, match="fit"):
        Typicality().score(make_input({"bits_per_dim": np.zeros(2)}))


def test_batch_auroc_grows_with_batch_size() -> None:
    rng = np.random.default_rng(0)
    in_nll = rng.normal(3.0, 0.5, size=2000)
    ood_nll = rng.normal(2.6, 0.5, size=2000)  # more likely than in-distribution on average
    result = typicality_batch_auroc(in_nll, ood_nll, entropy=3.0, n_batches=500)
    assert list(result) == [1, 2, 5, 10, 25]
    assert result[1] < 0.7 and result[25] > 0.95
    assert result[1] < result[5] < result[25]
