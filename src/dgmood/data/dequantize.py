"""uint8 pixels -> a model's continuous input scale. Pure and seeded; nothing in place.

Training uses uniform dequantization noise ``u ~ U[0, 1)`` per dimension (Theis et al. 2016;
Dinh et al. 2017), which makes the expected model log density a lower bound on the log
probability of the discrete image. At evaluation the choice is explicit:

- ``"uniform"`` (default): fresh seeded noise, the estimator behind published bits/dim;
- ``"center"``: ``u = 0.5``, the bin centre, deterministic (no noise);
- ``"none"``: ``u = 0``, the bin's lower corner.

Discrete models (``InputSpec.discrete``) never get noise: their likelihood is a mass.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dgmood.models.base import InputSpec

DequantMode = Literal["uniform", "center", "none"]


def reduce_bits(x_uint8: Tensor, n_bits: int) -> Tensor:
    """Integer levels ``0 .. 2**n_bits - 1`` from uint8 pixels (Glow's 5-bit CelebA)."""
    levels = x_uint8.to(torch.int64)
    if n_bits < 8:
        levels = levels // (2 ** (8 - n_bits))
    return levels


def to_model_input(
    x_uint8: Tensor,
    spec: InputSpec,
    mode: DequantMode = "uniform",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Map uint8 images ``[B, C, H, W]`` onto ``spec``'s continuous input scale."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x_uint8.dtype}")
    if tuple(x_uint8.shape[1:]) != spec.shape:
        raise ValueError(
            f"images have shape {tuple(x_uint8.shape[1:])}, the model expects {spec.shape} "
            "(channels, height, width)"
        )
    levels = reduce_bits(x_uint8, spec.n_bits).to(dtype)
    width = spec.high - spec.low
    if spec.discrete:
        return spec.low + levels / (spec.n_levels - 1) * width
    if mode == "uniform":
        offset = torch.rand(levels.shape, generator=generator, dtype=dtype, device="cpu")
        offset = offset.to(levels.device)
    elif mode == "center":
        offset = torch.full_like(levels, 0.5)
    elif mode == "none":
        offset = torch.zeros_like(levels)
    else:
        raise ValueError(f"unknown dequantization mode {mode!r}; use uniform, center or none")
    return spec.low + (levels + offset) / spec.n_levels * width


def to_uint8(x: Tensor, spec: InputSpec) -> Tensor:
    """Inverse of :func:`to_model_input` up to the noise: continuous scale -> uint8 images."""
    width = spec.high - spec.low
    if spec.discrete:
        levels = torch.round((x - spec.low) / width * (spec.n_levels - 1))
    else:
        levels = torch.floor((x - spec.low) / width * spec.n_levels)
    levels = levels.clamp(0, spec.n_levels - 1)
    if spec.n_bits < 8:
        levels = levels * (2 ** (8 - spec.n_bits))
    return levels.to(torch.uint8)
