"""Normalizing flows: bijections, multiscale composition and presets (Glow, CV-Glow, RealNVP)."""
