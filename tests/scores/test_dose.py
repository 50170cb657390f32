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
