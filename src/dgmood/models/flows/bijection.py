"""The bijection contract and composition.

A bijection maps data -> latent: ``forward(x) -> (z, log_abs_det_jacobian)`` with one
log-determinant per sample; ``inverse(z) -> (x, log_abs_det_jacobian of the inverse)``.
A bijection knows nothing about the model it sits in.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from dgmood.models.flows.reversible import reversible_forward


class Bijection(nn.Module):
    """Base class: subclasses implement :meth:`forward` and :meth:`inverse`."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class Compose(Bijection):
    """Bijections applied in order; log-determinants add up.

    ``memory_light``: when gradients are needed, keep only the output and recompute the
    inner activations from it in the backward pass (:mod:`dgmood.models.flows.reversible`);
    set by whoever trains the model (:meth:`MultiscaleFlow.set_memory_light`), since it
    changes how backprop stores activations, not the function or its parameters.
    Otherwise each initialised actnorm followed by an invertible 1x1 conv runs as one
    convolution (:mod:`dgmood.models.flows.fused`; weights cached in eval mode without
    gradients); ``fold = False`` runs every bijection by itself.
    """

    fold: bool = True

    def __init__(self, bijections: Iterable[Bijection]) -> None:
        super().__init__()
        self.bijections = nn.ModuleList(bijections)
        self.memory_light = False

    def _steps(self) -> list[Bijection]:
        return [b for b in self.bijections if isinstance(b, Bijection)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.memory_light and torch.is_grad_enabled():
            steps = self._steps()
            if self.fold:
                from dgmood.models.flows.fused import fold_pairs

                steps = fold_pairs(steps)
            return reversible_forward(steps, x)
        if self.fold:
            # fused.py builds on the bijections defined beside this one
            from dgmood.models.flows.fused import fused_forward

            return fused_forward(self._steps(), x)
        total = x.new_zeros(x.shape[0])
        for bijection in self.bijections:
            x, log_abs_det_jacobian = bijection(x)
            total = total + log_abs_det_jacobian
        return x, total

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for bijection in reversed(self._steps()):
            z, log_abs_det_jacobian = bijection.inverse(z)
            total = total + log_abs_det_jacobian
        return z, total


class Squeeze(Bijection):
    """Space-to-depth: ``[B, C, H, W] -> [B, 4C, H/2, W/2]``; volume preserving.

    References: Dinh et al., "Density estimation using Real NVP", 2017.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"squeeze needs even height and width, got {h}x{w}")
        z = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(b, c * 4, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        x = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, h * 2, w * 2), z.new_zeros(b)


def spatial_size(x: Tensor) -> int:
    """H * W of an image batch: the multiplier of per-channel log-determinants."""
    return int(x.shape[-2] * x.shape[-1])


def sum_except_batch(x: Tensor) -> Tensor:
    return torch.flatten(x, 1).sum(-1)
