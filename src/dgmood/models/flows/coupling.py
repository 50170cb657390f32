"""Coupling layers: one base class, the element-wise transform and the partition as parts.

A coupling keeps one part of the input fixed, feeds it to a conditioner network, and
transforms the other part element-wise with the network's output. What varies between
Glow, additive (NICE / CV-Glow) and RealNVP couplings is assembled from:

- an element-wise transform: :class:`AffineSigmoid` (Glow), :class:`AffineTanh` (RealNVP),
  :class:`Additive` (translation only, zero log-determinant);
- a partition: :class:`ChannelCoupling` (channel halves) or :class:`MaskedCoupling`
  (a fixed binary mask, e.g. checkerboard).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dgmood.models.flows.bijection import Bijection, sum_except_batch


class ElementwiseTransform(nn.Module):
    """``y = f(x; params)`` element-wise; ``params`` has ``params_per_dim`` channels per dim."""

    params_per_dim: int = 2

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(y, log|dy/dx|)`` element-wise."""
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> Tensor:
        raise NotImplementedError


class Additive(ElementwiseTransform):
    """``y = x + t``: volume preserving.

    References: Dinh, Krueger & Bengio, "NICE", 2015.
    """

    params_per_dim = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params, torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> Tensor:
        return y - params


class AffineSigmoid(ElementwiseTransform):
    """``y = (x + t) * sigmoid(h + 2)``: Glow's bounded, near-identity-at-init scale.

    References: Kingma & Dhariwal, 2018 (openai/glow ``f`` with ``scale = sigmoid(h + 2.)``).
    """

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw_scale = params[:, 0::2], params[:, 1::2]
        return shift, torch.nn.functional.logsigmoid(raw_scale + 2.0)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._split(params)
        return (x + shift) * torch.exp(log_scale), log_scale

    def inverse(self, y: Tensor, params: Tensor) -> Tensor:
        shift, log_scale = self._split(params)
        return y * torch.exp(-log_scale) - shift


class AffineTanh(ElementwiseTransform):
    """``y = x * exp(s) + t`` with ``s = scale * tanh(h)`` (a learned per-channel ``scale``).

    References: Dinh et al., "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, num_channels, 1, 1))

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw_scale = params[:, 0::2], params[:, 1::2]
        return shift, self.scale * torch.tanh(raw_scale)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._split(params)
        return x * torch.exp(log_scale) + shift, log_scale

    def inverse(self, y: Tensor, params: Tensor) -> Tensor:
        shift, log_scale = self._split(params)
        return (y - shift) * torch.exp(-log_scale)


class Coupling(Bijection):
    """Base coupling: subclasses define which part conditions and which is transformed."""

    def __init__(self, conditioner: nn.Module, transform: ElementwiseTransform) -> None:
        super().__init__()
        self.conditioner = conditioner
        self.transform = transform

    def _partition(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Split ``x`` into ``(conditioning part, transformed part)``."""
        raise NotImplementedError

    def _merge(self, fixed: Tensor, transformed: Tensor) -> Tensor:
        raise NotImplementedError

    def _active(self, transformed: Tensor) -> Tensor | None:
        """Mask of the elements of the transformed part that really change (None = all)."""
        return None

    def _params(self, fixed: Tensor, free: Tensor) -> Tensor:
        # under bf16 autocast the conditioner runs in bf16; the transform and its
        # log-determinant stay in the data's precision
        result: Tensor = self.conditioner(fixed).to(free.dtype)
        return result

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fixed, free = self._partition(x)
        out, log_scale = self.transform(free, self._params(fixed, free))
        active = self._active(free)
        if active is not None:
            out = active * out + (1 - active) * free
            log_scale = active * log_scale
        return self._merge(fixed, out), sum_except_batch(log_scale)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        fixed, free = self._partition(z)
        params = self._params(fixed, free)
        out = self.transform.inverse(free, params)
        _, log_scale = self.transform(out, params)
        active = self._active(free)
        if active is not None:
            out = active * out + (1 - active) * free
            log_scale = active * log_scale
        return self._merge(fixed, out), -sum_except_batch(log_scale)


class ChannelCoupling(Coupling):
    """The first ``ceil(C/2)`` channels condition the rest (Glow, RealNVP's channel masks).

    The conditioner maps ``ceil(C/2)`` channels to ``params_per_dim * floor(C/2)`` channels.
    """

    def __init__(self, num_channels: int, conditioner: nn.Module, transform: ElementwiseTransform):
        super().__init__(conditioner, transform)
        self.split_at = num_channels - num_channels // 2

    def _partition(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, : self.split_at], x[:, self.split_at :]

    def _merge(self, fixed: Tensor, transformed: Tensor) -> Tensor:
        return torch.cat([fixed, transformed], dim=1)


class MaskedCoupling(Coupling):
    """Pixels where ``mask == 1`` condition, the others are transformed (checkerboard).

    The conditioner sees ``x * mask`` (``C`` channels) and returns ``params_per_dim * C``.

    References: Dinh et al., "Density estimation using Real NVP", ICLR 2017.
    """

    mask: Tensor

    def __init__(self, mask: Tensor, conditioner: nn.Module, transform: ElementwiseTransform):
        super().__init__(conditioner, transform)
        self.register_buffer("mask", mask)

    def _partition(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.mask, x

    def _merge(self, fixed: Tensor, transformed: Tensor) -> Tensor:
        return transformed

    def _active(self, transformed: Tensor) -> Tensor:
        return 1 - self.mask


def checkerboard_mask(height: int, width: int, parity: int) -> Tensor:
    """``[1, 1, H, W]`` mask with ones where ``(i + j) % 2 == parity``."""
    rows = torch.arange(height).view(-1, 1)
    cols = torch.arange(width).view(1, -1)
    return ((rows + cols) % 2 == parity).float().view(1, 1, height, width)
