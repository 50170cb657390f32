"""Convolutional encoder and decoder for 32x32 images (three stride-2 stages, 32 -> 4)."""

from __future__ import annotations

from torch import Tensor, nn

_BOTTOM_SIZE = 4  # spatial side after three stride-2 stages from 32


class ConvEncoder(nn.Module):
    """Image ``[B, C, 32, 32]`` on the ``[0, 1]`` scale -> features ``[B, feature_dim]``.

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    """

    def __init__(self, in_channels: int, base_channels: int, feature_dim: int) -> None:
        super().__init__()
        widths = (base_channels, 2 * base_channels, 4 * base_channels)
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(widths[0], widths[0], 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(widths[0], widths[1], 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(widths[1], widths[2], 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(widths[2] * _BOTTOM_SIZE**2, feature_dim),
            nn.SiLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        # centre the [0, 1] inputs so the first layer sees zero-mean values
        result: Tensor = self.layers(2.0 * x - 1.0)
        return result


class ConvDecoder(nn.Module):
    """Latents ``[N, L]`` -> likelihood parameters ``[N, C, P, 32, 32]``."""

    def __init__(
        self, latent_dim: int, base_channels: int, out_channels: int, params_per_subpixel: int
    ) -> None:
        super().__init__()
        widths = (4 * base_channels, 2 * base_channels, base_channels)
        self.out_channels = out_channels
        self.params_per_subpixel = params_per_subpixel
        self.layers = nn.Sequential(
            nn.Linear(latent_dim, widths[0] * _BOTTOM_SIZE**2),
            nn.SiLU(),
            nn.Unflatten(1, (widths[0], _BOTTOM_SIZE, _BOTTOM_SIZE)),
            nn.ConvTranspose2d(widths[0], widths[1], 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(widths[1], widths[2], 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(widths[2], widths[2], 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(widths[2], out_channels * params_per_subpixel, 1),
        )

    @property
    def output_layer(self) -> nn.Conv2d:
        layer = self.layers[-1]
        assert isinstance(layer, nn.Conv2d)
        return layer

    def forward(self, z: Tensor) -> Tensor:
        result: Tensor = self.layers(z).unflatten(1, (self.out_channels, self.params_per_subpixel))
        return result
