"""The coarse-band likelihood ratio against its closed form for Gaussian data.

For x ~ N(m, v) per sub-pixel and the optimal denoiser, E||eps - eps_hat||^2 at log SNR
lambda is sum SNR v / (1 + SNR v), so the band above gamma_c integrates to
1/2 sum log((1 + SNR_c v) / (1 + SNR_1 v)) (the I-MMSE relation), and the prior term to
1/2 sum (alpha_1^2 (v + m^2) + sigma_1^2 - log sigma_1^2 - 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusion_helpers import (
    GAMMA_1,
    SIZE,
    content_seeds,
    gaussian_images,
    gaussian_model,
    score_input,
    smooth_mean_image,
)

from dgmood.scores import score_names
from dgmood.scores.noise_level_ratio import NoiseLevelRatio, coarse_bits_per_dim

MEAN, VARIANCE = smooth_mean_image(), 0.04
DIMS = SIZE * SIZE


def expected_bits_per_dim(cutoff_log_snr: float) -> float:
    snr_c, snr_1 = math.exp(cutoff_log_snr), math.exp(-GAMMA_1)
    alpha_sq, sigma_sq = 1 / (1 + math.exp(GAMMA_1)), 1 / (1 + math.exp(-GAMMA_1))
    m_sq = MEAN.square().numpy()
    prior = 0.5 * (alpha_sq * (VARIANCE + m_sq) + sigma_sq - math.log(sigma_sq) - 1).sum()
    band = 0.5 * DIMS * math.log((1 + snr_c * VARIANCE) / (1 + snr_1 * VARIANCE))
    return float(prior + band) / (DIMS * math.log(2))


@pytest.mark.parametrize("cutoff_log_snr", [0.0, 3.0, -2.0])
def test_coarse_bits_match_the_closed_form_for_gaussian_data(cutoff_log_snr: float) -> None:
    model = gaussian_model(MEAN, torch.full((1, SIZE, SIZE), VARIANCE, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    n, k = 400, 8
    x = MEAN + math.sqrt(VARIANCE) * torch.randn(
        n, 1, SIZE, SIZE, generator=generator, dtype=torch.float64
    )
    uniforms = torch.rand(n, k, generator=generator, dtype=torch.float64)
    eps = torch.randn(k, n, 1, SIZE, SIZE, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        bits = coarse_bits_per_dim(model, x, -cutoff_log_snr, uniforms, eps)
    stderr = float(bits.std()) / math.sqrt(n)
    expected = expected_bits_per_dim(cutoff_log_snr)
    assert stderr < 0.01 * expected
    assert abs(float(bits.mean()) - expected) < 4 * stderr, (float(bits.mean()), expected)


def test_score_uses_documented_per_image_noise_and_ranks_unlike_images_higher() -> None:
    model = gaussian_model(MEAN, torch.full((1, SIZE, SIZE), VARIANCE, dtype=torch.float64))
    images = torch.cat(
        [gaussian_images(MEAN, 0.2, 4, seed=1), gaussian_images(MEAN.flip(-1), 0.2, 4, seed=2)]
    )
    score = NoiseLevelRatio(cutoff_log_snr=1.0, n_timesteps=6, batch_size=3, seed=5)
    values = score.score(score_input(images, model))
    x = -1.0 + 2.0 * images.double() / 255
    expected = []
    seeds = content_seeds(images, 5, "noise-level-ratio")
    for i in range(len(images)):
        generator = torch.Generator().manual_seed(seeds[i])
        uniforms = torch.rand(6, generator=generator, dtype=torch.float64)
        eps = torch.randn((6, 1, SIZE, SIZE), generator=generator, dtype=torch.float64)
        with torch.no_grad():
            bits = coarse_bits_per_dim(model, x[i : i + 1], -1.0, uniforms[None], eps[:, None])
        expected.append(float(bits[0]))
    np.testing.assert_allclose(values, expected, rtol=1e-10)
    assert values[4:].min() > values[:4].max()
    assert score.nfe == 6 and "noise-level-ratio" in score_names("density")


def test_cutoff_outside_the_trained_noise_range_is_refused() -> None:
    model = gaussian_model(MEAN, torch.full((1, SIZE, SIZE), VARIANCE, dtype=torch.float64))
    data = score_input(gaussian_images(MEAN, 0.2, 2, seed=0), model)
    with pytest.raises(ValueError, match="outside"):
        NoiseLevelRatio(cutoff_log_snr=-6.0).score(data)


def test_an_images_score_does_not_depend_on_its_position_or_company() -> None:
    model = gaussian_model(MEAN, torch.full((1, SIZE, SIZE), VARIANCE, dtype=torch.float64))
    images = gaussian_images(MEAN, 0.2, 5, seed=3)
    score = NoiseLevelRatio(cutoff_log_snr=1.0, n_timesteps=4, batch_size=2, seed=1)
    forward = score.score(score_input(images, model))
    backward = score.score(score_input(images.flip(0), model))
    alone = score.score(score_input(images[2:3], model))
    np.testing.assert_allclose(backward[::-1], forward, rtol=1e-12)
    np.testing.assert_allclose(alone, forward[2:3], rtol=1e-12)
