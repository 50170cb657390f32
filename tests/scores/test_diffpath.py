"""DiffPath scores against independent computations on a model with a closed-form denoiser.

The path features are recomputed from the Gaussian's posterior mean step by step; the
density fits (one-component mixture, Scott-bandwidth KDE) are recomputed with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusion_helpers import (
    GAMMA_0,
    GAMMA_1,
    SIZE,
    as_model_input,
    gaussian_images,
    gaussian_model,
    posterior_mean,
    score_input,
    smooth_mean_image,
)
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from torch import Tensor

from dgmood.models.diffusion.schedule import alpha_sigma
from dgmood.scores import score_names
from dgmood.scores.diffpath import DiffPath, DiffPath1D

MEAN, VAR = smooth_mean_image(), torch.full((1, SIZE, SIZE), 0.04, dtype=torch.float64)


def reference_features(x: Tensor, steps: int) -> np.ndarray:
    """DDIM inversion t = 0 -> 1 in ``steps`` steps with the Gaussian's E[x | z], written out,
    then sum eps^p and sum (d eps/dt)^p for p = 1, 2, 3 (DiffPath's six statistics)."""
    gammas = GAMMA_0 + (GAMMA_1 - GAMMA_0) * np.linspace(0.0, 1.0, steps + 1)
    z = alpha_sigma(torch.tensor(gammas[0], dtype=torch.float64))[0] * x
    eps_path = []
    for gamma_t, gamma_s in zip(gammas[:-1], gammas[1:], strict=True):
        alpha_t, sigma_t = alpha_sigma(torch.tensor(gamma_t, dtype=torch.float64))
        alpha_s, sigma_s = alpha_sigma(torch.tensor(gamma_s, dtype=torch.float64))
        x_hat = posterior_mean(z, torch.full((len(x),), gamma_t, dtype=torch.float64), MEAN, VAR)
        eps = (z - alpha_t * x_hat) / sigma_t
        eps_path.append(eps.flatten(1).numpy())
        z = alpha_s * x_hat + sigma_s * eps
    eps_array = np.stack(eps_path, axis=1)  # [N, S, D]
    curvature = np.diff(eps_array, axis=1) * steps
    return np.stack(
        [(eps_array**p).sum((1, 2)) for p in (1, 2, 3)]
        + [(curvature**p).sum((1, 2)) for p in (1, 2, 3)],
        axis=1,
    )


def test_path_features_equal_the_closed_form_ddim_inversion() -> None:
    model = gaussian_model(MEAN, VAR)
    images = gaussian_images(MEAN, 0.2, 6, seed=0)
    features = DiffPath(steps=4, batch_size=4).features(score_input(images, model))
    np.testing.assert_allclose(
        features, reference_features(as_model_input(images), 4), rtol=1e-6, atol=1e-6
    )


def test_six_dimensional_score_is_the_negative_log_density_of_the_fitted_gaussian() -> None:
    model = gaussian_model(MEAN, VAR)
    train_images = gaussian_images(MEAN, 0.2, 40, seed=1)
    test_images = torch.cat(
        [gaussian_images(MEAN, 0.2, 4, seed=2), gaussian_images(-MEAN, 0.2, 4, seed=3)]
    )
    score = DiffPath(steps=3, components=(1,), covariance_types=("full",), batch_size=16)
    values = score.fit(score_input(train_images, model)).score(score_input(test_images, model))

    train = reference_features(as_model_input(train_images), 3)
    test = reference_features(as_model_input(test_images), 3)
    center, scale = train.mean(0), train.std(0)
    standardized = (train - center) / scale
    covariance = np.cov(standardized, rowvar=False, ddof=0) + 1e-6 * np.eye(6)  # sklearn's reg
    expected = -multivariate_normal(standardized.mean(0), covariance).logpdf(
        (test - center) / scale
    )
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert values[4:].min() > values[:4].max()  # the mirrored gradient is far off the path
    assert score.nfe == 3


def test_one_dimensional_score_is_a_scott_bandwidth_kde_of_the_curvature_norm() -> None:
    model = gaussian_model(MEAN, VAR)
    train_images = gaussian_images(MEAN, 0.2, 30, seed=4)
    test_images = torch.cat(
        [gaussian_images(MEAN, 0.2, 3, seed=5), gaussian_images(MEAN, 0.5, 3, seed=6)]
    )
    score = DiffPath1D(steps=3, batch_size=16)
    values = score.fit(score_input(train_images, model)).score(score_input(test_images, model))

    train = np.sqrt(reference_features(as_model_input(train_images), 3)[:, 4])
    test = np.sqrt(reference_features(as_model_input(test_images), 3)[:, 4])
    center, scale = train.mean(), train.std()
    bandwidth = len(train) ** (-1 / 5)  # Scott's rule in one dimension (sklearn)
    distances = ((test - center) / scale)[:, None] - ((train - center) / scale)[None, :]
    log_kernels = -0.5 * distances**2 / bandwidth**2 - np.log(bandwidth * np.sqrt(2 * np.pi))
    expected = -(logsumexp(log_kernels, axis=1) - np.log(len(train)))
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert values[3:].min() > values[:3].max()  # wider images bend the path more


def test_fit_chooses_the_mixture_by_cross_validation_and_scores_need_a_fit() -> None:
    assert {"diffpath", "diffpath-1d"} <= set(score_names("density"))
    model = gaussian_model(MEAN, VAR)
    data = score_input(gaussian_images(MEAN, 0.2, 20, seed=7), model)
    with pytest.raises(ValueError, match="fit"):
        DiffPath(steps=2).score(data)
    score = DiffPath(steps=2, components=(1, 2), covariance_types=("full", "diag"), cv_folds=4)
    fitted = score.fit(data).density
    assert fitted is not None
    assert fitted.named_steps["gmm"].n_components in (1, 2)
    assert np.isfinite(score.score(data)).all()
