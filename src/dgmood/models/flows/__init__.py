"""Normalizing flows: bijections, multiscale composition and presets (Glow, CV-Glow, RealNVP)."""

from dgmood.models.flows.multiscale import MultiscaleFlow
from dgmood.models.flows.presets import GlowConfig, RealNVPConfig, build_glow, build_realnvp

__all__ = ["GlowConfig", "MultiscaleFlow", "RealNVPConfig", "build_glow", "build_realnvp"]
