"""Noise schedules of a variance-preserving diffusion: ``gamma(t) = -log SNR(t)``, increasing.

``z_t = alpha_t x + sigma_t eps`` with ``alpha_t^2 = sigmoid(-gamma(t))`` and ``sigma_t^2 =
sigmoid(gamma(t))``, so ``alpha_t^2 + sigma_t^2 = 1`` and ``SNR = alpha^2 / sigma^2 =
exp(-gamma)``. Time runs from ``t = 0`` (almost clean) to ``t = 1`` (almost pure noise).

References: Kingma, Salimans, Poole & Ho, "Variational Diffusion Models", NeurIPS 2021, Sec. 3.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


def alpha_sigma(gamma: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha, sigma) = (sqrt(sigmoid(-gamma)), sqrt(sigmoid(gamma)))``: signal, noise scale."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


class NoiseSchedule(nn.Module, ABC):
    """A monotonically increasing ``gamma(t)`` on ``t in [0, 1]`` and its derivative."""

    @abstractmethod
    def forward(self, t: Tensor) -> Tensor:
        """``gamma(t)``, same shape as ``t``."""

    @abstractmethod
    def derivative(self, t: Tensor) -> Tensor:
        """``d gamma / dt`` at ``t`` (the weight of the continuous-time diffusion loss)."""

    def endpoints(self) -> tuple[Tensor, Tensor]:
        """``(gamma(0), gamma(1))`` as 0-dim tensors."""
        like = next(iter([*self.parameters(), *self.buffers()]))
        ends = self(torch.tensor([0.0, 1.0], dtype=like.dtype, device=like.device))
        return ends[0], ends[1]


class FixedLinearSchedule(NoiseSchedule):
    """``gamma(t) = gamma_0 + (gamma_1 - gamma_0) t``: log SNR linear in time, not trained.

    References: Kingma et al., "Variational Diffusion Models", NeurIPS 2021 (the fixed
    schedule of their ablations).
    """

    gamma_0: Tensor
    gamma_1: Tensor

    def __init__(self, gamma_0: float, gamma_1: float) -> None:
        super().__init__()
        if not gamma_0 < gamma_1:
            raise ValueError(f"gamma must increase: gamma(0)={gamma_0} >= gamma(1)={gamma_1}")
        self.register_buffer("gamma_0", torch.tensor(float(gamma_0)))
        self.register_buffer("gamma_1", torch.tensor(float(gamma_1)))

    def forward(self, t: Tensor) -> Tensor:
        return self.gamma_0 + (self.gamma_1 - self.gamma_0) * t

    def derivative(self, t: Tensor) -> Tensor:
        return (self.gamma_1 - self.gamma_0).expand_as(t)


class LearnedLinearSchedule(NoiseSchedule):
    """``gamma(t) = b + |w| t`` with both end points trained on the bound (VDM's CIFAR-10 choice).

    In continuous time the diffusion loss depends on the schedule only through its end
    points, so learning ``b`` and ``w`` trades the prior and reconstruction terms against
    the diffusion term. Initialised to the fixed schedule ``[gamma_0, gamma_1]``.

    References: Kingma et al., "Variational Diffusion Models", NeurIPS 2021, Sec. 5.1 and
    their ``learnable_scalar`` schedule.
    """

    def __init__(self, gamma_0: float, gamma_1: float) -> None:
        super().__init__()
        if not gamma_0 < gamma_1:
            raise ValueError(f"gamma must increase: gamma(0)={gamma_0} >= gamma(1)={gamma_1}")
        self.bias = nn.Parameter(torch.tensor(float(gamma_0)))
        self.scale = nn.Parameter(torch.tensor(float(gamma_1 - gamma_0)))

    def forward(self, t: Tensor) -> Tensor:
        return self.bias + self.scale.abs() * t

    def derivative(self, t: Tensor) -> Tensor:
        return self.scale.abs().expand_as(t)
