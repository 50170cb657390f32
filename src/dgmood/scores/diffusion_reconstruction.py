"""Reconstruction error of a diffusion model from several noise levels (Graham et al. 2023).

Each image is noised to a few noise levels, denoised back with a few deterministic DDIM
steps, and compared with the original by MSE and SSIM; each error is turned into a z-score
with the mean and standard deviation of in-distribution images at that level, and the
score is the mean over levels of the summed z-scores (their ``mse+perceptual`` target).

References: Graham, Pinaya, Tudosiu, Nachev, Ourselin & Cardoso, "Denoising diffusion models
for out-of-distribution detection", CVPR Workshops (VAND) 2023; Wang, Bovik, Sheikh &
Simoncelli, "Image quality assessment: from error visibility to structural similarity",
IEEE TIP 2004 (SSIM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dgmood.models.diffusion.vdm import VariationalDiffusion
from dgmood.scores.base import ScoreInput, register_score
from dgmood.scores.diffusion_base import DiffusionScore, image_noise


def ddpm_scaled_linear_log_snr(
    step: int, beta_start: float = 0.0015, beta_end: float = 0.0195, n_steps: int = 1000
) -> float:
    """log SNR after ``step + 1`` noising steps of the DDPM "scaled linear" beta schedule
    that Graham et al. train with (betas from ``beta_start`` to ``beta_end``, squared-linear)."""
    betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n_steps) ** 2
    alpha_bar = float(np.prod(1.0 - betas[: step + 1]))
    return math.log(alpha_bar / (1.0 - alpha_bar))


# Graham et al. reconstruct from DDPM steps spread evenly over 0..1000 of their schedule; ours
# are five of them spread evenly over the part of that range our models are trained on
# (log SNR >= -5, i.e. DDPM steps <= ~780): log SNR 1.54, 0.03, -1.18, -2.51, -4.14
GRAHAM_START_STEPS = (100, 250, 400, 550, 700)
DEFAULT_LOG_SNRS = tuple(round(ddpm_scaled_linear_log_snr(s), 3) for s in GRAHAM_START_STEPS)
METRICS = ("mse", "ssim")


def ddim_reconstruct(
    model: VariationalDiffusion, x: Tensor, gamma_start: float, steps: int, eps: Tensor
) -> Tensor:
    """Noise ``x`` to level ``gamma_start`` with ``eps``, then ``steps`` DDIM steps (evenly
    spaced in gamma) down to ``gamma(0)``; returns ``z_0 / alpha_0`` clipped to [-1, 1]."""
    gamma_low, gamma_high = model.gamma_range()
    if not gamma_low <= gamma_start <= gamma_high:
        raise ValueError(
            f"noise level gamma = {gamma_start:.3f} (log SNR {-gamma_start:.3f}) lies outside "
            f"the model's trained range [{gamma_low:.3f}, {gamma_high:.3f}]"
        )
    gammas = torch.linspace(gamma_start, gamma_low, steps + 1, dtype=x.dtype, device=x.device)
    z = model.diffuse(x, gammas[0], eps)
    for gamma_t, gamma_s in zip(gammas[:-1], gammas[1:], strict=True):
        z, _ = model.ddim_step(z, gamma_t, gamma_s)
    alpha_0, _ = model.alpha_sigma(gammas[-1])
    return (z / alpha_0).clamp(-1.0, 1.0)


def gaussian_window(size: int = 11, sigma: float = 1.5, like: Tensor | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps (SSIM's 11-tap, sigma 1.5 window)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    taps = taps / taps.sum()
    return taps if like is None else taps.to(dtype=like.dtype, device=like.device)


def structural_similarity(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM per image of ``a`` and ``b`` ``[B, C, H, W]`` (Wang et al. 2004).

    Gaussian-weighted local statistics (11 taps, sigma 1.5, population covariances),
    ``K1 = 0.01``, ``K2 = 0.03``; the SSIM map is averaged over channels and over the
    positions where the window fits inside the image (skimage's
    ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``).
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"need two [B, C, H, W] batches of one shape, got {a.shape}, {b.shape}")
    taps = gaussian_window(like=a)
    size = taps.numel()
    if min(a.shape[-2:]) < size:
        raise ValueError(f"SSIM's {size}x{size} window needs images of at least that size")
    channels = a.shape[1]
    rows = taps.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = taps.view(1, 1, 1, size).expand(channels, 1, 1, size)

    def local_mean(values: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(values, rows, groups=channels), cols, groups=channels)

    mean_a, mean_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mean_a**2
    var_b = local_mean(b * b) - mean_b**2
    covariance = local_mean(a * b) - mean_a * mean_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    )
    return ssim_map.flatten(1).mean(1)


def reconstruction_errors(
    model: VariationalDiffusion,
    x: Tensor,
    log_snrs: Sequence[float],
    steps: int,
    eps: Tensor,
) -> dict[str, Tensor]:
    """Per image and level ``[B, L]``: ``mse`` (on the [0, 1] pixel scale) and ``ssim``
    (``1 - SSIM``, a dissimilarity) between ``x`` and its reconstruction from each level.

    ``eps`` ``[B, L, C, H, W]`` is the noise that takes image ``b`` to level ``l``.
    """
    errors: dict[str, list[Tensor]] = {"mse": [], "ssim": []}
    original = (x + 1) / 2
    for level, log_snr in enumerate(log_snrs):
        reconstruction = (ddim_reconstruct(model, x, -log_snr, steps, eps[:, level]) + 1) / 2
        errors["mse"].append((reconstruction - original).square().flatten(1).mean(1))
        errors["ssim"].append(1.0 - structural_similarity(reconstruction, original))
    return {name: torch.stack(values, dim=1) for name, values in errors.items()}


@register_score
class DiffusionReconstruction(DiffusionScore):
    """Mean z-score of MSE and 1 - SSIM after noising and DDIM-denoising at several levels.

    ``fit`` stores, per level and metric, the mean and standard deviation (ddof = 1) of the
    errors of up to ``fit_images`` in-distribution images; ``score`` is the mean over levels
    of ``sum_metric (error - mean) / std``. Graham et al. also use LPIPS, whose network
    weights are downloaded at run time: not available offline, so MSE and SSIM only.

    References: Graham, Pinaya, Tudosiu, Nachev, Ourselin & Cardoso, "Denoising diffusion
    models for out-of-distribution detection", CVPR Workshops 2023.
    """

    name = "diffusion-reconstruction"
    needs_fit = True

    def __init__(
        self,
        log_snrs: Sequence[float] = DEFAULT_LOG_SNRS,
        steps: int = 5,
        metrics: Sequence[str] = METRICS,
        fit_images: int = 1000,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        unknown = set(metrics) - set(METRICS)
        if not metrics or unknown:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics}")
        if not log_snrs or steps < 1 or fit_images < 2:
            raise ValueError(
                f"need >= 1 noise level, steps >= 1 and fit_images >= 2; got {len(log_snrs)} "
                f"levels, steps={steps}, fit_images={fit_images}"
            )
        self.log_snrs, self.steps = tuple(float(v) for v in log_snrs), steps
        self.metrics, self.fit_images = tuple(metrics), fit_images
        self.means: dict[str, np.ndarray] = {}
        self.stds: dict[str, np.ndarray] = {}

    @property
    def nfe(self) -> int:
        return len(self.log_snrs) * self.steps

    def errors(self, data: ScoreInput) -> dict[str, np.ndarray]:
        """Per image and level ``[N, L]``, for each of ``self.metrics``."""
        levels = len(self.log_snrs)

        def compute(model: VariationalDiffusion, x: Tensor, seeds: list[int]) -> Tensor:
            eps = image_noise(seeds, (levels, *x.shape[1:]), x)
            errors = reconstruction_errors(model, x, self.log_snrs, self.steps, eps)
            return torch.stack([errors[m] for m in self.metrics], dim=2)  # [B, L, M]

        values = self.per_image(data, compute)
        return {m: values[:, :, i] for i, m in enumerate(self.metrics)}

    def fit(self, train: ScoreInput) -> DiffusionReconstruction:
        subset = train.subset(np.arange(min(len(train), self.fit_images)))
        if len(subset) < 2:
            raise ValueError("diffusion-reconstruction needs >= 2 in-distribution images to fit")
        errors = self.errors(subset)
        self.means = {m: e.mean(0) for m, e in errors.items()}
        self.stds = {m: np.maximum(e.std(0, ddof=1), 1e-12) for m, e in errors.items()}
        return self

    def score(self, data: ScoreInput) -> np.ndarray:
        if not self.means:
            raise ValueError("call fit() on in-distribution training data before score()")
        errors = self.errors(data)
        z_scores = np.zeros((len(data), len(self.log_snrs)))
        for metric in self.metrics:
            z_scores += (errors[metric] - self.means[metric]) / self.stds[metric]
        result: np.ndarray = z_scores.mean(1)
        return result
