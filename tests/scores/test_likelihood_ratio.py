"""Likelihood ratio: a background model that explains the OOD set's high likelihood."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dgmood.config import DataConfig, RunConfig, TrainConfig
from dgmood.evaluation.metrics import auroc
from dgmood.models.latent.vae import VAEConfig
from dgmood.scores.base import ScoreInput, make_score
from dgmood.scores.likelihood_ratio import (
    LikelihoodRatio,
    background_run_name,
    weight_decay_from_l2_coefficient,
)
from dgmood.training.loop import mutate_pixels

MakeInput = Callable[..., ScoreInput]


def _config() -> RunConfig:
    return RunConfig(model=VAEConfig(), data=DataConfig(), train=TrainConfig(seed=3))


def test_aux_run_is_the_same_config_with_mutation_and_weight_decay() -> None:
    score = LikelihoodRatio(mutation_rate=0.3, weight_decay=1e-3)
    ((name, background),) = score.aux_runs(_config()).items()
    assert name == background_run_name(0.3, 1e-3) == "background-mu0.3-wd0.001"
    assert background.model == _config().model and background.data == _config().data
    assert background.train.mutation_rate == 0.3 and background.train.weight_decay == 1e-3
    assert background.train.seed == 3  # only the two hyperparameters change
    assert RunConfig.from_yaml(background.to_yaml()) == background


def test_background_explains_the_ood_likelihood(make_input: MakeInput) -> None:
    # the model's failure: OOD (second half) gets *lower* bits/dim than in-distribution ...
    model_in, model_ood = np.array([3.0, 3.2, 2.9]), np.array([2.0, 2.1, 1.9])
    # ... but the background model, which only knows low-level statistics, finds it even easier
    background_in, background_ood = np.array([4.0, 4.1, 3.9]), np.array([1.5, 1.4, 1.6])
    score = make_score("likelihood-ratio")
    name = score.background_name  # type: ignore[attr-defined]
    in_scores = score.score(
        make_input({"bits_per_dim": model_in}, {name: {"bits_per_dim": background_in}})
    )
    ood_scores = score.score(
        make_input({"bits_per_dim": model_ood}, {name: {"bits_per_dim": background_ood}})
    )
    np.testing.assert_allclose(in_scores, [-1.0, -0.9, -1.0])
    np.testing.assert_allclose(ood_scores, [0.5, 0.7, 0.3])
    assert auroc(model_in, model_ood) == 0.0 and auroc(in_scores, ood_scores) == 1.0


def test_missing_background_statistics_is_one_clear_error(make_input: MakeInput) -> None:
    with pytest.raises(ValueError, match="auxiliary run"):
        LikelihoodRatio().score(make_input({"bits_per_dim": np.zeros(2)}))


def test_mutate_pixels_replaces_the_expected_fraction_reproducibly() -> None:
    images = torch.full((64, 1, 32, 32), 7, dtype=torch.uint8)
    mutated = mutate_pixels(images, 0.2, torch.Generator().manual_seed(0))
    again = mutate_pixels(images, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(mutated, again) and torch.equal(images, torch.full_like(images, 7))
    changed = float((mutated != images).double().mean())
    assert changed == pytest.approx(0.2 * 255 / 256, abs=0.01)  # 1/256 redraws the same level
    assert torch.equal(mutate_pixels(images, 0.0, torch.Generator()), images)
    with pytest.raises(ValueError, match="mutation_rate"):
        mutate_pixels(images, 1.5, torch.Generator())


def test_prepare_batch_mutates_only_with_a_mutation_rate() -> None:
    from dgmood.models.registry import build_model
    from dgmood.training.loop import _prepare_batch

    config = RunConfig(model=VAEConfig(latent_dim=2, base_channels=2, feature_dim=4))
    model = build_model(config.model, config.data)
    images = torch.full((8, 1, 32, 32), 128, dtype=torch.uint8)
    device = torch.device("cpu")
    clean = _prepare_batch(model, images, config, 5, device)
    noisy_config = RunConfig(model=config.model, train=TrainConfig(mutation_rate=0.5))
    noisy = _prepare_batch(model, images, noisy_config, 5, device)
    assert clean.unique().numel() == 1
    assert 0.4 < float((noisy != clean).double().mean()) < 0.6
    other_step = _prepare_batch(model, images, noisy_config, 6, device)
    assert not torch.equal(noisy, other_step)  # fresh per batch


def test_weight_decay_step_equals_a_step_on_rens_l2_penalty_in_bits_per_dim() -> None:
    """Ren et al. add lambda |theta|^2 to a loss in nats per image; our loss is that loss over
    D ln 2. One SGD step with the converted coupled weight decay on our loss must equal one
    plain SGD step on (nats loss + lambda |theta|^2) / (D ln 2), computed by autograd."""
    generator = torch.Generator().manual_seed(0)
    theta0 = torch.randn(5, generator=generator, dtype=torch.float64)
    target = torch.randn(5, generator=generator, dtype=torch.float64)
    l2_coefficient, num_dims, lr = 10.0, 1024, 0.1

    def nats_loss(theta: torch.Tensor) -> torch.Tensor:
        return ((theta - target) ** 4).sum()

    decayed = theta0.clone().requires_grad_(True)
    optimiser = torch.optim.SGD(
        [decayed], lr=lr, weight_decay=weight_decay_from_l2_coefficient(l2_coefficient, num_dims)
    )
    (nats_loss(decayed) / (num_dims * math.log(2))).backward()
    optimiser.step()

    penalised = theta0.clone().requires_grad_(True)
    objective = (nats_loss(penalised) + l2_coefficient * penalised.square().sum()) / (
        num_dims * math.log(2)
    )
    (gradient,) = torch.autograd.grad(objective, penalised)
    torch.testing.assert_close(decayed.detach(), theta0 - lr * gradient, rtol=1e-12, atol=1e-12)


def test_scores_doc_quotes_the_converted_weight_decay() -> None:
    """docs/scores.md's "their 10 corresponds to ..." is the function's value for D = 1024."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scores.md").read_text()
    match = re.search(r"their 10 corresponds to .*?~ ([0-9.]+e-[0-9]+)", doc, flags=re.S)
    assert match, "docs/scores.md should state what Ren et al.'s lambda = 10 becomes"
    quoted = float(match.group(1))
    assert quoted == pytest.approx(weight_decay_from_l2_coefficient(10.0, 1024), rel=0.02)
