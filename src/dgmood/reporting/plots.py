"""Figures of the likelihood experiments (matplotlib without pyplot; PNG + SVG files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dgmood.reporting.figures import save_figure
from dgmood.reporting.style import PALETTE, styled


def _outside(values: np.ndarray, lo: float, hi: float) -> str:
    """Legend text for the values a histogram's axis leaves out (never silently dropped)."""
    below, above = int((values < lo).sum()), int((values > hi).sum())
    if below == 0 and above == 0:
        return ""
    return f"; {below} below, {above} above the axis"


def _axis_range(values: np.ndarray) -> tuple[float, float]:
    """0.1-99.9 percentile range: a few extreme images (VAE KL terms of millions of nats)
    would otherwise squeeze every other image into one bin; the legend counts them."""
    lo, hi = (float(v) for v in np.percentile(values, [0.1, 99.9]))
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


@styled
def plot_bpd_histograms(
    bits_per_dim: Mapping[str, np.ndarray], out_path: Path, title: str = ""
) -> Path:
    """Overlaid normalised histograms of bits/dim per set (Nalisnick et al., Figure 1)."""
    fig = Figure(figsize=(6, 4), layout="tight")
    ax = fig.subplots()
    values = np.concatenate([np.asarray(v) for v in bits_per_dim.values()])
    lo, hi = _axis_range(values)
    bins = np.linspace(lo, hi, 60).tolist()
    for color, (label, bpd) in zip(PALETTE, bits_per_dim.items(), strict=False):
        ax.hist(
            bpd,
            bins=bins,
            density=True,
            alpha=0.45,
            color=color,
            edgecolor=color,
            histtype="stepfilled",
            label=f"{label} (median {np.median(bpd):.2f} bits/dim"
            f"{_outside(np.asarray(bpd), lo, hi)})",
        )
    ax.set_xlabel("bits/dim (lower = higher likelihood)")
    ax.set_ylabel("density (fraction of images per bits/dim)")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, out_path)


@styled
def plot_flow_decomposition(stats: Mapping[str, Mapping[str, np.ndarray]], out_path: Path) -> Path:
    """Histograms of the density term log p(z) and the volume term log|det J| per set."""
    fig = Figure(figsize=(10, 4), layout="tight")
    axes = fig.subplots(1, 2)
    for ax, key, name in (
        (axes[0], "log_pz", "density term  log p(z)  [nats]"),
        (axes[1], "log_abs_det_jacobian", "volume term  log|det J|  [nats]"),
    ):
        values = np.concatenate([np.asarray(s[key]) for s in stats.values()])
        lo, hi = _axis_range(values)
        bins = np.linspace(lo, hi, 60).tolist()
        for color, (label, s) in zip(PALETTE, stats.items(), strict=False):
            ax.hist(
                s[key],
                bins=bins,
                density=True,
                alpha=0.45,
                color=color,
                edgecolor=color,
                histtype="stepfilled",
                label=f"{label}{_outside(np.asarray(s[key]), lo, hi)}",
            )
        ax.set_xlabel(name)
        ax.set_ylabel("density (fraction of images per nat)")
        ax.legend()
    return save_figure(fig, out_path)
