"""DiffPath: statistics of the deterministic DDIM path from an image to noise, and their density.

The image is carried from ``t = 0`` to ``t = 1`` by ``steps`` DDIM inversion steps (the
probability-flow ODE, solved to first order); the noise predictions ``eps_i`` along the way
give the path's rate of change, and their differences ``(eps_{i+1} - eps_i) * steps`` its
curvature. DiffPath-6D sums the first three powers of both over pixels and steps and fits a
Gaussian mixture to these six numbers of in-distribution training images (standardised);
DiffPath-1D keeps the norm of the curvature, ``sqrt(sum (d eps / dt)^2)``, with a kernel
density estimate. The score is the negative log density.

References: Heng, Thiery & Soh, "Out-of-Distribution Detection with a Single Unconditional
Diffusion Model", NeurIPS 2024 (their ``save_train_statistics.py``, ``eval_6d.py``,
``eval_1d.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from dgmood.models.diffusion.vdm import VariationalDiffusion
from dgmood.scores.base import ScoreInput, register_score
from dgmood.scores.diffusion_base import DiffusionScore

PATH_FEATURES = (
    "eps_sum",
    "eps_sum_sq",
    "eps_sum_cb",
    "deps_dt_sum",
    "deps_dt_sum_sq",
    "deps_dt_sum_cb",
)


def ddim_path_noise_predictions(model: VariationalDiffusion, x: Tensor, steps: int) -> Tensor:
    """``eps_hat`` at each of ``steps`` DDIM inversion steps from ``t = 0`` to ``t = 1``.

    The path starts at ``z_0 = alpha_0 x`` (no noise drawn: the path is deterministic) and
    steps through ``t_i = i / steps`` of the model's schedule; returns ``[steps, B, C, H, W]``.
    """
    if steps < 2:
        raise ValueError(f"the path needs >= 2 steps (its curvature differences them), got {steps}")
    times = torch.linspace(0.0, 1.0, steps + 1, dtype=x.dtype, device=x.device)
    gammas = model.gamma(times)
    z = model.diffuse(x, gammas[0], torch.zeros_like(x))
    predictions = []
    for gamma_t, gamma_s in zip(gammas[:-1], gammas[1:], strict=True):
        z, eps_hat = model.ddim_step(z, gamma_t, gamma_s)
        predictions.append(eps_hat)
    return torch.stack(predictions)


def path_features(eps: Tensor) -> Tensor:
    """The six DiffPath statistics ``[B, 6]`` (order :data:`PATH_FEATURES`) of ``eps [S, B, ...]``.

    ``sum eps^p`` and ``sum (d eps/dt)^p`` for p = 1, 2, 3, summed over steps and sub-pixels,
    with ``d eps / dt = (eps_{i+1} - eps_i) * S``.
    """
    steps = eps.shape[0]
    rate = eps.transpose(0, 1).flatten(1)  # [B, S * D]
    curvature = (torch.diff(eps, dim=0) * steps).transpose(0, 1).flatten(1)
    return torch.stack(
        [
            rate.sum(1),
            rate.pow(2).sum(1),
            rate.pow(3).sum(1),
            curvature.sum(1),
            curvature.pow(2).sum(1),
            curvature.pow(3).sum(1),
        ],
        dim=1,
    )


class _PathScore(DiffusionScore):
    """Path features of images under the run's diffusion model, fitted density on them."""

    def __init__(
        self, steps: int = 10, fit_images: int = 1000, batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if steps < 2 or fit_images < 2:
            raise ValueError(f"need steps >= 2 and fit_images >= 2, got {steps}, {fit_images}")
        self.steps, self.fit_images = steps, fit_images
        self.density: Pipeline | None = None

    @property
    def nfe(self) -> int:
        return self.steps

    def features(self, data: ScoreInput) -> np.ndarray:
        """The six path statistics of every image, ``[N, 6]`` (float64)."""

        def compute(model: VariationalDiffusion, x: Tensor, seeds: list[int]) -> Tensor:
            return path_features(ddim_path_noise_predictions(model, x, self.steps))

        return self.per_image(data, compute)

    def _fit_features(self, train: ScoreInput) -> np.ndarray:
        subset = train.subset(np.arange(min(len(train), self.fit_images)))
        return self.features(subset)

    def _fitted(self) -> Pipeline:
        if self.density is None:
            raise ValueError("call fit() on in-distribution training data before score()")
        return self.density


@register_score
class DiffPath(_PathScore):
    """Negative log density (Gaussian mixture) of the six DiffPath statistics of the DDIM path.

    The mixture's size and covariance type are chosen by ``cv_folds``-fold cross-validated
    log-likelihood on in-distribution training statistics (as DiffPath's grid search).

    References: Heng, Thiery & Soh, "Out-of-Distribution Detection with a Single Unconditional
    Diffusion Model", NeurIPS 2024 (DiffPath-6D).
    """

    name = "diffpath"
    needs_fit = True

    def __init__(
        self,
        steps: int = 10,
        fit_images: int = 1000,
        components: tuple[int, ...] = (1, 2, 4, 8),
        covariance_types: tuple[str, ...] = ("full", "diag"),
        cv_folds: int = 5,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(steps=steps, fit_images=fit_images, batch_size=batch_size, seed=seed)
        self.components, self.covariance_types = tuple(components), tuple(covariance_types)
        self.cv_folds = cv_folds

    def fit(self, train: ScoreInput) -> DiffPath:
        features = self._fit_features(train)
        pipeline = Pipeline(
            [("scale", StandardScaler()), ("gmm", GaussianMixture(random_state=self.seed))]
        )
        grid: dict[str, list[int] | list[str]] = {
            "gmm__n_components": list(self.components),
            "gmm__covariance_type": list(self.covariance_types),
        }
        if len(self.components) * len(self.covariance_types) == 1:
            pipeline.set_params(
                gmm__n_components=self.components[0],
                gmm__covariance_type=self.covariance_types[0],
            )
            self.density = pipeline.fit(features)
            return self
        folds = min(self.cv_folds, len(features))
        search = GridSearchCV(pipeline, grid, cv=folds).fit(features)
        self.density = search.best_estimator_
        return self

    def score(self, data: ScoreInput) -> np.ndarray:
        return -np.asarray(self._fitted().score_samples(self.features(data)), dtype=np.float64)


@register_score
class DiffPath1D(_PathScore):
    """Negative log density (Gaussian KDE) of the DDIM path's curvature norm, sqrt(sum (deps/dt)^2).

    The statistic is standardised on in-distribution training images and the bandwidth set
    by Scott's rule (DiffPath fixes 5 on the raw statistic, whose scale depends on the image
    size and the number of steps).

    References: Heng, Thiery & Soh, "Out-of-Distribution Detection with a Single Unconditional
    Diffusion Model", NeurIPS 2024 (DiffPath-1D).
    """

    name = "diffpath-1d"
    needs_fit = True

    @staticmethod
    def curvature_norm(features: np.ndarray) -> np.ndarray:
        result: np.ndarray = np.sqrt(features[:, [PATH_FEATURES.index("deps_dt_sum_sq")]])
        return result

    def fit(self, train: ScoreInput) -> DiffPath1D:
        statistic = self.curvature_norm(self._fit_features(train))
        self.density = Pipeline(
            [("scale", StandardScaler()), ("kde", KernelDensity(bandwidth="scott"))]
        ).fit(statistic)
        return self

    def score(self, data: ScoreInput) -> np.ndarray:
        statistic = self.curvature_norm(self.features(data))
        return -np.asarray(self._fitted().score_samples(statistic), dtype=np.float64)
