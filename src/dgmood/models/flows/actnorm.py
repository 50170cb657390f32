"""Activation normalisation as a bijection."""

from __future__ import annotations

import torch
from torch import Tensor

from dgmood.models.flows.bijection import Bijection, spatial_size
from dgmood.nn.layers import ActNormLayer


class ActNorm(Bijection):
    """Per-channel affine bijection with data-dependent initialisation.

    ``log|det J| = H * W * sum_c log_scale_c``; the volume change does not depend on x.

    References: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.layer = ActNormLayer(num_channels)

    def log_abs_det_jacobian(self, x: Tensor) -> Tensor:
        value = spatial_size(x) * self.layer.log_scale.sum()
        return value.expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.layer(x)
        return z, self.log_abs_det_jacobian(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.layer.inverse(z), -self.log_abs_det_jacobian(z)

    @property
    def scale(self) -> Tensor:
        """Per-channel multiplier ``exp(log_scale)``, shape ``[C]``."""
        return torch.exp(self.layer.log_scale).flatten()
