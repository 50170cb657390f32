"""Diffusion reconstruction score (Graham et al. 2023) against independent computations.

The model's denoiser is the optimal one of a Gaussian, so every DDIM step is an affine map
that the test recomputes itself; SSIM is checked against scikit-image; the normalisation
by in-distribution statistics is recomputed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusion_helpers import (
    GAMMA_0,
    SIZE,
    as_model_input,
    content_seeds,
    gaussian_images,
    gaussian_model,
    posterior_mean,
    score_input,
    smooth_mean_image,
)
from skimage.metrics import structural_similarity as skimage_ssim
from torch import Tensor

from dgmood.models.diffusion.schedule import alpha_sigma
from dgmood.scores import make_score, score_names
from dgmood.scores.diffusion_reconstruction import (
    DEFAULT_LOG_SNRS,
    DiffusionReconstruction,
    ddim_reconstruct,
    ddpm_scaled_linear_log_snr,
    structural_similarity,
)

MEAN, VAR = smooth_mean_image(), torch.full((1, SIZE, SIZE), 0.04, dtype=torch.float64)


def test_ssim_matches_scikit_image() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 20, 24, generator=generator, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(3, 3, 20, 24, generator=generator, dtype=torch.float64)).clamp(0, 1)
    ours = structural_similarity(a, b)
    for i in range(3):
        reference = skimage_ssim(
            a[i].numpy(),
            b[i].numpy(),
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert float(ours[i]) == pytest.approx(reference, abs=1e-10)
    torch.testing.assert_close(structural_similarity(a, a), torch.ones(3, dtype=torch.float64))


def test_default_noise_levels_follow_graham_et_al_schedule() -> None:
    """log SNR of DDPM's scaled-linear betas 0.0015 -> 0.0195 at steps 100, 250, ..., 700."""
    betas = np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
    alpha_bar = np.cumprod(1 - betas)
    for step, value in zip((100, 250, 400, 550, 700), DEFAULT_LOG_SNRS, strict=True):
        assert value == pytest.approx(np.log(alpha_bar[step] / (1 - alpha_bar[step])), abs=1e-3)
        assert ddpm_scaled_linear_log_snr(step) == pytest.approx(value, abs=1e-3)
    assert all(-5.0 < v < 13.3 for v in DEFAULT_LOG_SNRS)  # inside the VDM schedule's range


def reference_reconstruction(x: Tensor, gamma_start: float, steps: int, eps: Tensor) -> Tensor:
    """DDIM from gamma_start to gamma(0) with the Gaussian's E[x | z], written out."""
    gammas = np.linspace(gamma_start, GAMMA_0, steps + 1)
    alpha, sigma = alpha_sigma(torch.tensor(gammas[0], dtype=torch.float64))
    z = alpha * x + sigma * eps
    for gamma_t, gamma_s in zip(gammas[:-1], gammas[1:], strict=True):
        g_t = torch.full((len(x),), gamma_t, dtype=torch.float64)
        alpha_t, sigma_t = alpha_sigma(g_t[0])
        alpha_s, sigma_s = alpha_sigma(torch.tensor(gamma_s, dtype=torch.float64))
        x_hat = posterior_mean(z, g_t, MEAN, VAR)
        z = alpha_s * x_hat + sigma_s * (z - alpha_t * x_hat) / sigma_t
    return (z / alpha_sigma(torch.tensor(GAMMA_0, dtype=torch.float64))[0]).clamp(-1, 1)


def test_ddim_reconstruction_equals_the_closed_form_recursion() -> None:
    model = gaussian_model(MEAN, VAR)
    x = as_model_input(gaussian_images(MEAN, 0.2, 4, seed=1))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        for log_snr, steps in ((1.5, 5), (-3.0, 2), (4.0, 1)):
            ours = ddim_reconstruct(model, x, -log_snr, steps, eps)
            torch.testing.assert_close(ours, reference_reconstruction(x, -log_snr, steps, eps))
    # from little noise the image comes back; from nearly pure noise it is forgotten (two
    # images noised with the same eps come back as nearly the same image)
    other = as_model_input(gaussian_images(MEAN, 0.2, 4, seed=9))
    with torch.no_grad():
        from_clean = ddim_reconstruct(model, x, -10.0, 10, eps)
        from_noise = ddim_reconstruct(model, x, 4.9, 10, eps)
        other_from_noise = ddim_reconstruct(model, other, 4.9, 10, eps)
    assert (from_clean - x).abs().mean() < 0.01  # the noise at log SNR 10: sigma = 0.0067
    assert (from_noise - other_from_noise).abs().mean() < 0.2 * (x - other).abs().mean()


def per_level_errors(x: Tensor, eps: Tensor, log_snrs: tuple[float, ...], steps: int) -> np.ndarray:
    """[N, L, 2]: MSE and 1 - SSIM (scikit-image) of each reconstruction, on [0, 1]."""
    out = np.zeros((len(x), len(log_snrs), 2))
    for level, log_snr in enumerate(log_snrs):
        reconstruction = (reference_reconstruction(x, -log_snr, steps, eps[:, level]) + 1) / 2
        original = (x + 1) / 2
        for i in range(len(x)):
            out[i, level, 0] = float(((reconstruction[i] - original[i]) ** 2).mean())
            out[i, level, 1] = 1 - skimage_ssim(
                reconstruction[i, 0].numpy(),
                original[i, 0].numpy(),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
    return out


def documented_noise(images: Tensor, levels: int, seed: int) -> Tensor:
    """Each image's noise comes from its content seed (``content_seeds``)."""
    return torch.stack(
        [
            torch.randn(
                (levels, 1, SIZE, SIZE),
                generator=torch.Generator().manual_seed(image_seed),
                dtype=torch.float64,
            )
            for image_seed in content_seeds(images, seed, "diffusion-reconstruction")
        ]
    )


def test_score_is_the_mean_over_levels_of_z_scores_from_in_distribution_statistics() -> None:
    model = gaussian_model(MEAN, VAR)
    log_snrs, steps, seed = (2.0, -1.0, -4.0), 3, 7
    train_images = gaussian_images(MEAN, 0.2, 12, seed=3)
    test_images = gaussian_images(-MEAN, 0.2, 5, seed=4)
    score = DiffusionReconstruction(log_snrs=log_snrs, steps=steps, batch_size=5, seed=seed)
    score.fit(score_input(train_images, model))
    values = score.score(score_input(test_images, model))

    train = per_level_errors(
        as_model_input(train_images), documented_noise(train_images, 3, seed), log_snrs, steps
    )
    test = per_level_errors(
        as_model_input(test_images), documented_noise(test_images, 3, seed), log_snrs, steps
    )
    mean, std = train.mean(0), train.std(0, ddof=1)  # per level and metric
    np.testing.assert_allclose(score.means["mse"], mean[:, 0], rtol=1e-6)
    np.testing.assert_allclose(score.stds["ssim"], std[:, 1], rtol=1e-6)
    expected = ((test - mean) / std).sum(2).mean(1)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    # the mirrored gradient is far from anything in distribution
    assert (values > 3).all()
    assert score.nfe == 9


def test_out_of_distribution_images_score_higher_and_results_are_batch_independent() -> None:
    model = gaussian_model(MEAN, VAR)
    score = DiffusionReconstruction(steps=2, batch_size=4, seed=0)
    score.fit(score_input(gaussian_images(MEAN, 0.2, 16, seed=5), model))
    inside = score.score(score_input(gaussian_images(MEAN, 0.2, 10, seed=6), model))
    outside = score.score(score_input(gaussian_images(MEAN.flip(-1), 0.2, 10, seed=6), model))
    assert outside.min() > inside.max()
    rebatched = DiffusionReconstruction(steps=2, batch_size=7, seed=0)
    rebatched.means, rebatched.stds = score.means, score.stds
    np.testing.assert_allclose(
        rebatched.score(score_input(gaussian_images(MEAN, 0.2, 10, seed=6), model)), inside
    )
    assert math.isfinite(float(inside.mean()))


def test_registered_and_refuses_unfitted_or_out_of_range_use() -> None:
    assert "diffusion-reconstruction" in score_names("density")
    model = gaussian_model(MEAN, VAR)
    data = score_input(gaussian_images(MEAN, 0.2, 2, seed=0), model)
    with pytest.raises(ValueError, match="fit"):
        make_score("diffusion-reconstruction").score(data)
    with pytest.raises(ValueError, match="outside"):
        DiffusionReconstruction(log_snrs=(20.0,)).fit(data)
