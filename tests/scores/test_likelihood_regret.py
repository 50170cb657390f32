"""Likelihood regret on a tiny VAE trained on bars: >= 0, and larger for unlike images."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from dgmood.config import DataConfig, RunConfig
from dgmood.data.dequantize import to_model_input
from dgmood.models.latent.vae import VAE, VAEConfig, build_vae
from dgmood.runs import LoadedRun
from dgmood.scores.base import ScoreInput
from dgmood.scores.likelihood_regret import LikelihoodRegret, likelihood_regret


def _bars(n: int, generator: torch.Generator) -> torch.Tensor:
    """Dark 32x32 images with one bright horizontal bar at a random row."""
    images = torch.full((n, 1, 32, 32), 10, dtype=torch.uint8)
    rows = torch.randint(4, 28, (n,), generator=generator)
    for i, row in enumerate(rows.tolist()):
        images[i, 0, row : row + 3] = 240
    return images


@pytest.fixture(scope="module")
def trained_vae() -> VAE:
    torch.manual_seed(0)
    config = VAEConfig(latent_dim=4, base_channels=4, feature_dim=16)
    model = build_vae(config, DataConfig())
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(60):
        x = to_model_input(_bars(16, generator), model.input_spec, "uniform", generator)
        loss, _ = model.training_loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_regret_is_nonnegative_and_larger_for_noise(trained_vae: VAE) -> None:
    generator = torch.Generator().manual_seed(1)
    in_images = _bars(8, generator)
    noise = torch.randint(0, 256, (8, 1, 32, 32), generator=generator).to(torch.uint8)
    spec = trained_vae.input_spec
    regret_in = likelihood_regret(
        trained_vae,
        to_model_input(in_images, spec, "center"),
        steps=10,
        lr=1e-2,
        generator=torch.Generator().manual_seed(0),
    )
    regret_noise = likelihood_regret(
        trained_vae,
        to_model_input(noise, spec, "center"),
        steps=10,
        lr=1e-2,
        generator=torch.Generator().manual_seed(0),
    )
    assert (regret_in >= 0).all() and (regret_noise >= 0).all()
    # noise is far from anything the amortised encoder saw: a per-image encoder gains more
    assert regret_noise.mean() > 3 * regret_in.mean()


def test_score_runs_in_chunks_and_does_not_touch_the_model(trained_vae: VAE) -> None:
    before = {k: v.clone() for k, v in trained_vae.state_dict().items()}
    config = RunConfig(model=VAEConfig(latent_dim=4, base_channels=4, feature_dim=16))
    run = LoadedRun(config=config, model=trained_vae, step=0, run_dir=Path("unused"))
    images = _bars(5, torch.Generator().manual_seed(2))
    data = ScoreInput(stats={}, images=images, labels=torch.full((5,), -1), run=run)
    score = LikelihoodRegret(steps=3, batch_size=2)
    scores = score.score(data)
    assert scores.shape == (5,) and np.isfinite(scores).all() and (scores >= 0).all()
    np.testing.assert_allclose(score.score(data), scores)  # seeded: same images, same regret
    # seeded per image: an image's regret does not depend on its position or batch
    reversed_data = ScoreInput(
        stats={}, images=images.flip(0), labels=torch.full((5,), -1), run=run
    )
    np.testing.assert_allclose(score.score(reversed_data), scores[::-1], rtol=1e-5, atol=1e-5)
    assert score.applies_to(run)
    for key, value in trained_vae.state_dict().items():
        assert torch.equal(value, before[key])


def _adam_on_one_image(
    model: VAE, image: torch.Tensor, noise: torch.Tensor, steps: int, lr: float
) -> list[float]:
    """ELBOs (nats) of one image while torch's Adam fits a copy of the encoder to it alone.

    The decoder stays fixed; ``noise [S, 1, L]`` is the standard normal draw every ELBO uses.
    """
    encoder, posterior = copy.deepcopy(model.encoder), copy.deepcopy(model.posterior)
    optimiser = torch.optim.Adam([*encoder.parameters(), *posterior.parameters()], lr=lr)
    n_samples = noise.shape[0]
    elbos = []
    for step in range(steps + 1):
        features = encoder(image)
        z, log_q = posterior.transform_noise(features, noise)
        decoded = model.decode(z.reshape(n_samples, -1))
        reconstruction = model.likelihood.log_prob(decoded, image.expand(n_samples, -1, -1, -1))
        kl = posterior.kl_to_prior(features, z, log_q)[:, 0]  # the model's KL (analytic here)
        elbo = (reconstruction - kl).mean()
        elbos.append(float(elbo.detach()))
        if step == steps:
            break
        optimiser.zero_grad()
        (-elbo).backward()
        optimiser.step()
    return elbos


def test_regret_is_the_best_elbo_gain_of_an_independent_adam_run(trained_vae: VAE) -> None:
    """Each image's regret = max over steps 0..T of ELBO_t - ELBO_0 under torch.optim.Adam."""
    images = torch.cat(
        [
            _bars(2, torch.Generator().manual_seed(4)),
            torch.full((1, 1, 32, 32), 128, dtype=torch.uint8),
        ]
    )
    x = to_model_input(images, trained_vae.input_spec, "center")
    steps, lr, n_samples = 6, 2e-2, 3
    noise = torch.randn(
        (n_samples, len(x), trained_vae.latent_dim), generator=torch.Generator().manual_seed(5)
    )

    def regret(steps: int, lr: float) -> np.ndarray:
        values = likelihood_regret(
            trained_vae,
            x,
            steps=steps,
            lr=lr,
            n_samples=n_samples,
            generator=torch.Generator().manual_seed(5),
        )
        return values.detach().numpy()

    expected = []
    for b in range(len(x)):
        elbos = _adam_on_one_image(trained_vae, x[b : b + 1], noise[:, b : b + 1], steps, lr)
        expected.append(max(elbos) - elbos[0])
    assert max(expected) > 1.0  # the fit gains something: the comparison is not 0 == 0
    np.testing.assert_allclose(regret(steps, lr), expected, rtol=1e-4, atol=1e-3)
    # the check tells the settings apart: one step fewer or half the rate gives other values
    for other in (regret(steps - 1, lr), regret(steps, lr / 2)):
        assert np.abs(other - np.array(expected)).max() > 0.05
