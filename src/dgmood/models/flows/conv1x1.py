"""Invertible 1x1 convolutions: a learned channel mixing, plain or LU-decomposed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmood.models.flows.bijection import Bijection, spatial_size
from dgmood.nn.eval_cache import eval_cached


def mix_channels(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``weight @ x`` at every pixel, in the weight's precision even under autocast.

    The 1x1 convs are a small share of a flow's FLOPs but feed every later log-density
    term; keeping them out of bf16 autocast keeps the latents exact to float32.
    """
    with torch.autocast(x.device.type, enabled=False):
        return F.conv2d(x.to(weight.dtype), weight[:, :, None, None], bias)


def _random_rotation(num_channels: int, generator: torch.Generator | None = None) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, generator=generator))
    result: Tensor = q
    return result


class InvertibleConv1x1(Bijection):
    """``z = W x`` at every pixel; ``log|det J| = H * W * log|det W|`` (slogdet each call).

    References: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(_random_rotation(num_channels))

    def matrix(self) -> Tensor:
        return self.weight

    def sources(self) -> list[Tensor]:
        """The tensors ``W`` is computed from (the cache key of derived weights)."""
        return [*self.parameters(), *self.buffers()]

    def log_abs_det(self) -> Tensor:
        """``log|det W|`` (per pixel)."""
        result: Tensor = eval_cached(
            self, "log_abs_det", self.sources(), lambda: torch.linalg.slogdet(self.matrix())[1]
        )
        return result

    def weight_matrix(self) -> Tensor:
        """``W``, cached in evaluation (see :mod:`dgmood.nn.eval_cache`)."""
        return eval_cached(self, "matrix", self.sources(), self.matrix)

    def inverse_matrix(self) -> Tensor:
        result: Tensor = eval_cached(
            self, "inverse", self.sources(), lambda: torch.linalg.inv(self.matrix())
        )
        return result

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = spatial_size(x) * self.log_abs_det()
        z = mix_channels(x, self.weight_matrix())
        return z, log_det.expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_det = spatial_size(z) * self.log_abs_det()
        x = mix_channels(z, self.inverse_matrix())
        return x, -log_det.expand(z.shape[0])


class LUInvertibleConv1x1(InvertibleConv1x1):
    """1x1 conv with ``W = P L (U + diag(sign_s * exp(log_s)))``: O(C) log-determinant.

    ``P`` and ``sign_s`` are fixed buffers; ``L`` is unit lower triangular, ``U`` strictly upper.

    References: Kingma & Dhariwal, 2018, section 3.2.
    """

    permutation: Tensor
    sign_s: Tensor
    lower_mask: Tensor
    eye: Tensor

    def __init__(self, num_channels: int) -> None:
        nn.Module.__init__(self)
        weight = _random_rotation(num_channels)
        permutation, lower, upper = torch.linalg.lu(weight)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", torch.sign(diagonal))
        self.register_buffer("lower_mask", torch.tril(torch.ones(num_channels, num_channels), -1))
        self.register_buffer("eye", torch.eye(num_channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(diagonal)))

    def matrix(self) -> Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def log_abs_det(self) -> Tensor:
        return self.log_s.sum()
