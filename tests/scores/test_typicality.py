"""Typicality: entropy and thresholds computable by hand; batches make the test sharper."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from dgmood.evaluation.compare import compare_scores
from dgmood.evaluation.typicality import typicality_batch_auroc, typicality_batch_test
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


def test_typicality_is_fitted_on_held_out_images_not_on_the_models_training_images(
    make_input: MakeInput,
) -> None:
    """Defect: the entropy and thresholds came from training images, whose NLL a model that
    learned them puts low; the paper bootstraps on held-out data. compare_scores cross-fits
    the score on the in-distribution test set: each half is scored by a fit on the other."""
    rng = np.random.default_rng(0)
    train = make_input({"bits_per_dim": rng.normal(2.5, 0.1, 400)})  # seen: lower NLL
    in_nll = rng.normal(3.0, 0.1, 400)
    ood_nll = rng.normal(3.3, 0.1, 100)
    (comparison,) = compare_scores(
        [Typicality(n_bootstrap=100)],
        make_input({"bits_per_dim": in_nll}),
        {"ood": make_input({"bits_per_dim": ood_nll})},
        train,
    )
    # by hand: a fit on values v takes the entropy from v's first half
    entropy_from_second_half = in_nll[200:300].mean()
    entropy_from_first_half = in_nll[0:100].mean()
    np.testing.assert_allclose(
        comparison.in_scores,
        np.concatenate(
            [
                np.abs(in_nll[:200] - entropy_from_second_half),
                np.abs(in_nll[200:] - entropy_from_first_half),
            ]
        ),
    )
    np.testing.assert_allclose(comparison.ood_scores, np.abs(ood_nll - entropy_from_second_half))
    assert Typicality.fits_on == "held_out"


def test_batch_test_flags_about_alpha_of_held_out_batches_and_most_ood_batches() -> None:
    rng = np.random.default_rng(1)
    in_nll = rng.normal(3.0, 0.5, 4000)
    ood_nll = rng.normal(2.6, 0.5, 2000)  # more likely on average: atypical all the same
    results = typicality_batch_test(in_nll, ood_nll, (1, 5, 25), n_bootstrap=2000)
    assert [r.batch_size for r in results] == [1, 5, 25]
    for r in results:
        assert 0.0 <= r.in_flagged <= 0.03  # alpha = 0.01 by construction
    assert results[0].auroc < results[1].auroc < results[2].auroc
    assert results[2].auroc > 0.95 and results[2].ood_flagged > 0.5
    # the thresholds are the bootstrap quantiles of a fit on the first half alone
    fitted = fit_typical_set(in_nll[:2000], (1, 5, 25), n_bootstrap=2000)
    assert [r.threshold for r in results] == [fitted.thresholds[m] for m in (1, 5, 25)]
    with pytest.raises(ValueError, match=">= 8"):
        typicality_batch_test(in_nll[:7], ood_nll)
