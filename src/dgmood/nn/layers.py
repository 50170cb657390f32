"""Plain network pieces shared by models: actnorm, zero-initialised convs, conditioners."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ActNormLayer(nn.Module):
    """Per-channel affine ``y = (x + bias) * exp(log_scale)`` with data-dependent init.

    On the first forward pass in training mode, bias and scale are set so that the output
    has zero mean and unit variance per channel on that batch.

    References: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018.
    """

    initialized: Tensor

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        return (x + self.bias) * torch.exp(self.log_scale)

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class ZeroConv2d(nn.Module):
    """3x3 conv initialised to output zeros, with a learned per-channel output scale.

    Makes every coupling start as the identity. ``out = conv(x) * exp(logs * logscale_factor)``.

    References: Kingma & Dhariwal, 2018 (Glow's ``conv2d_zeros``).
    """

    def __init__(self, in_channels: int, out_channels: int, logscale_factor: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        assert self.conv.bias is not None
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.logscale_factor = logscale_factor

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(self.logs * self.logscale_factor)


class GlowConditioner(nn.Module):
    """Glow's coupling network: conv3x3, actnorm, relu, conv1x1, actnorm, relu, zero conv3x3."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False),
            ActNormLayer(hidden_channels),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1, bias=False),
            ActNormLayer(hidden_channels),
            nn.ReLU(),
            ZeroConv2d(hidden_channels, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """Pre-activation residual block with actnorm (RealNVP's conditioner, actnorm for batchnorm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            ActNormLayer(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            ActNormLayer(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ResNetConditioner(nn.Module):
    """RealNVP's coupling network: conv in, ``n_blocks`` residual blocks, zero conv out.

    References: Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int, n_blocks: int
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            *[ResidualBlock(hidden_channels) for _ in range(n_blocks)],
            ActNormLayer(hidden_channels),
            nn.ReLU(),
            ZeroConv2d(hidden_channels, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
