"""ODE likelihood score on a diagonal Gaussian, where the flow's density is known per pixel.

With independent pixels the Jacobian of the denoiser is diagonal, so Hutchinson's estimate
with a Rademacher probe is exact (v_i^2 = 1) and the score must equal the closed form up to
the RK4 solver's error.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusion_helpers import (
    GAMMA_0,
    GAMMA_1,
    SIZE,
    content_seeds,
    gaussian_images,
    gaussian_model,
    score_input,
    smooth_mean_image,
)

from dgmood.models.diffusion.schedule import alpha_sigma
from dgmood.scores import score_names
from dgmood.scores.diffusion_ode_nll import DiffusionODENegativeLogLikelihood

MEAN, VARIANCE = smooth_mean_image(), 0.04
WIDTH = 2 / 255  # spacing of the 256 levels on [-1, 1]


def closed_form_bits(images: torch.Tensor, seed: int) -> np.ndarray:
    """-(log p(x + WIDTH u') + D log WIDTH) / (D ln 2) with the documented per-image offsets u',
    p = the pushforward of N(0, I) at t = 1 through the Gaussian's exact flow, per pixel:
    x_tilde_0 ~ N(m - a_0 alpha_1 m / (alpha_0 a_1), (a_0 / (alpha_0 a_1))^2),
    a_t = (alpha_t^2 v + sigma_t^2)^1/2."""
    (alpha_0, sigma_0), (alpha_1, sigma_1) = (
        alpha_sigma(torch.tensor(g, dtype=torch.float64)) for g in (GAMMA_0, GAMMA_1)
    )
    a_0 = (alpha_0**2 * VARIANCE + sigma_0**2).sqrt()
    a_1 = (alpha_1**2 * VARIANCE + sigma_1**2).sqrt()
    gain = a_0 / (alpha_0 * a_1)
    density = torch.distributions.Normal(MEAN - gain * alpha_1 * MEAN, gain)
    x = -1.0 + 2.0 * images.double() / 255
    bits = []
    seeds = content_seeds(images, seed, "ode-nll")
    for i in range(len(images)):
        generator = torch.Generator().manual_seed(seeds[i])
        offsets = torch.rand((1, SIZE, SIZE), generator=generator, dtype=torch.float64) - 0.5
        log_density = density.log_prob(x[i] + WIDTH * offsets).sum()
        bits.append(-float(log_density + SIZE * SIZE * math.log(WIDTH)) / (SIZE**2 * math.log(2)))
    return np.array(bits)


def test_ode_bits_per_dim_match_the_closed_form_and_do_not_depend_on_batch_size() -> None:
    model = gaussian_model(MEAN, torch.full((1, SIZE, SIZE), VARIANCE, dtype=torch.float64))
    images = torch.cat(
        [gaussian_images(MEAN, 0.2, 3, seed=0), gaussian_images(MEAN.flip(-1), 0.2, 3, seed=1)]
    )
    expected = closed_form_bits(images, seed=3)
    score = DiffusionODENegativeLogLikelihood(steps=50, batch_size=4, seed=3)
    values = score.score(score_input(images, model))
    np.testing.assert_allclose(values, expected, rtol=0, atol=3e-4)
    assert values[3:].min() > values[:3].max()  # unlike images: lower likelihood
    # the default 25 RK4 steps: within 3e-3 bits/dim (measured 5e-4 in, 2.5e-3 out of dist.)
    default = DiffusionODENegativeLogLikelihood(batch_size=1, seed=3)
    default_values = default.score(score_input(images, model))
    np.testing.assert_allclose(default_values, expected, rtol=0, atol=3e-3)
    rebatched = DiffusionODENegativeLogLikelihood(batch_size=6, seed=3)
    np.testing.assert_allclose(rebatched.score(score_input(images, model)), default_values)
    assert default.nfe == 100 and "ode-nll" in score_names("density")
