"""WAIC on synthetic ensemble statistics: -(mean - var) across members."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from dgmood.config import RunConfig, TrainConfig
from dgmood.models.latent.vae import VAEConfig
from dgmood.scores.base import ScoreInput
from dgmood.scores.waic import WAIC, waic_score

MakeInput = Callable[..., ScoreInput]


def test_waic_by_hand() -> None:
    log_probs = np.array([[-10.0, -5.0], [-12.0, -5.0], [-14.0, -5.0]])
    # member means -12 and -5; unbiased variances 4 and 0
    np.testing.assert_allclose(waic_score(log_probs), [-(-12.0 - 4.0), 5.0])


def test_disagreeing_members_make_an_input_more_ood() -> None:
    agree = [-100.0] * 5
    disagree = [-80.0, -120.0, -90.0, -110.0, -100.0]  # same mean, large variance
    scores = waic_score(np.array([agree, disagree]).T)
    assert scores[1] > scores[0]


def test_aux_runs_are_seeded_members_and_score_uses_them(make_input: MakeInput) -> None:
    config = RunConfig(model=VAEConfig(), train=TrainConfig(seed=10))
    runs = WAIC(n_members=3).aux_runs(config)
    assert sorted(runs) == ["waic-member-seed11", "waic-member-seed12"]
    assert [r.train.seed for r in runs.values()] == [11, 12]
    main = np.array([-1.0, -2.0])
    aux = {
        "waic-member-seed11": {"log_prob": np.array([-3.0, -2.0])},
        "waic-member-seed12": {"log_prob": np.array([-5.0, -2.0])},
    }
    scores = WAIC(n_members=3).score(make_input({"log_prob": main}, aux))
    np.testing.assert_allclose(scores, [-(-3.0 - 4.0), 2.0])
    with pytest.raises(ValueError, match="auxiliary"):
        WAIC(n_members=5).score(make_input({"log_prob": main}, aux))
    with pytest.raises(ValueError, match="n_members"):
        WAIC(n_members=1)
