"""Variational diffusion models (Kingma et al. 2021): bound in bits/dim, per-term breakdown."""

from dgmood.models.diffusion.vdm import (
    BoundNoise,
    DiffusionConfig,
    VariationalDiffusion,
    build_diffusion,
)

__all__ = ["BoundNoise", "DiffusionConfig", "VariationalDiffusion", "build_diffusion"]
