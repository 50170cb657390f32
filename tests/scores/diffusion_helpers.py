"""A diffusion model whose denoiser is known in closed form, for the diffusion scores' tests.

Images are x ~ N(mean, diag(var)) per sub-pixel; the optimal denoiser is then
E[x | z] = mean + alpha var / (alpha^2 var + sigma^2) (z - alpha mean).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from dgmood.config import DataConfig, RunConfig
from dgmood.models.diffusion.schedule import FixedLinearSchedule, alpha_sigma
from dgmood.models.diffusion.vdm import VariationalDiffusion
from dgmood.models.registry import resolve_model
from dgmood.runs import LoadedRun
from dgmood.scores.base import ScoreInput

GAMMA_0, GAMMA_1 = -13.3, 5.0
SIZE = 16  # 16x16 gray images: big enough for SSIM's 11x11 window


def posterior_mean(z: Tensor, gamma: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """E[x | z] for x ~ N(mean, diag(var)), z = alpha x + sigma eps (``gamma`` per image)."""
    alpha, sigma = alpha_sigma(gamma.reshape(-1, 1, 1, 1))
    return mean + alpha * var / (alpha**2 * var + sigma**2) * (z - alpha * mean)


class DiagonalGaussianDenoiser(nn.Module):
    """``eps_hat = (z - alpha E[x | z]) / sigma`` for x ~ N(mean, diag(var))."""

    def __init__(self, mean: Tensor, var: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("var", var)

    def forward(self, z: Tensor, gamma: Tensor) -> Tensor:
        alpha, sigma = alpha_sigma(gamma.reshape(-1, 1, 1, 1))
        return (z - alpha * posterior_mean(z, gamma, self.mean, self.var)) / sigma


def smooth_mean_image() -> Tensor:
    """A diagonal gradient from -0.6 to 0.6 on the [-1, 1] scale, ``[1, SIZE, SIZE]``."""
    ramp = torch.linspace(-0.6, 0.6, SIZE, dtype=torch.float64)
    return ((ramp[:, None] + ramp[None, :]) / 2).unsqueeze(0)


def gaussian_model(mean: Tensor, var: Tensor) -> VariationalDiffusion:
    """A float64 diffusion model with the optimal denoiser of N(mean, diag(var))."""
    model = VariationalDiffusion(
        DiagonalGaussianDenoiser(mean, var),
        FixedLinearSchedule(GAMMA_0, GAMMA_1),
        tuple(mean.shape),  # type: ignore[arg-type]
        eval_timesteps=4,
    )
    return model.double().eval()


def gaussian_images(mean: Tensor, std: float, n: int, seed: int) -> Tensor:
    """uint8 images drawn from N(mean, std^2) on [-1, 1], rounded to the 256 levels."""
    generator = torch.Generator().manual_seed(seed)
    x = mean + std * torch.randn((n, *mean.shape), generator=generator, dtype=torch.float64)
    return torch.round((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)


def score_input(images: Tensor, model: VariationalDiffusion, label: str = "set") -> ScoreInput:
    """A ScoreInput whose run is ``model`` (its config is a placeholder)."""
    config = RunConfig(model=resolve_model("diffusion", "tiny"), data=DataConfig(image_size=SIZE))
    run = LoadedRun(config=config, model=model, step=0, run_dir=Path("unused"))
    n = len(images)
    return ScoreInput(stats={}, images=images, labels=torch.full((n,), -1), run=run, label=label)


def as_model_input(images: Tensor) -> Tensor:
    """uint8 -> the diffusion model's [-1, 1] level grid, float64."""
    return -1.0 + 2.0 * images.double() / 255


def content_seeds(images: Tensor, seed: int, stream: str) -> list[int]:
    """The documented per-image seed, written out here: blake2b (8 bytes, little endian) of
    ``"{seed}:{stream}:"`` and the image's uint8 bytes (``stream`` = the score's name)."""
    import hashlib

    salt = f"{seed}:{stream}:".encode()
    return [
        int.from_bytes(hashlib.blake2b(salt + row.tobytes(), digest_size=8).digest(), "little")
        for row in images.contiguous().numpy()
    ]
