"""Figures of the paper's analyses: histograms whose axes show every value, and curves.

Unlike the percentile-clipped histograms of :mod:`dgmood.reporting.plots`, every histogram
here spans the full range of the data (minimum to maximum over all sets), so a long tail is
drawn where it lies instead of being piled into an edge bin; each legend entry also gives
the set's median and its minimum/maximum. Every figure is written as PNG with an SVG beside it.

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019 (Figures 1-7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dgmood.reporting.figures import save_figure
from dgmood.reporting.style import PALETTE, styled

BINS = 60


def full_range_bins(values: Sequence[np.ndarray], bins: int = BINS) -> np.ndarray:
    """Bin edges from the smallest to the largest value of all arrays (never clipped)."""
    finite = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values])
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def histogram_panel(ax: Axes, values: Mapping[str, np.ndarray], xlabel: str) -> None:
    """Overlaid normalised histograms over the full range of all sets; stats in the legend."""
    edges = full_range_bins(list(values.values()))
    for color, (label, v) in zip(PALETTE, values.items(), strict=False):
        v = np.asarray(v, dtype=np.float64)
        ax.hist(
            v,
            bins=list(edges),
            density=True,
            alpha=0.5,
            color=color,
            label=f"{label} (median {np.median(v):.3g}, range {v.min():.3g} to {v.max():.3g})",
        )
        ax.axvline(float(np.median(v)), color=color, linestyle="--", linewidth=1)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=7)


@styled
def plot_histograms(
    values: Mapping[str, np.ndarray], out_path: Path, xlabel: str, title: str = ""
) -> Path:
    """One panel of full-range histograms, one per set (dashed line: the set's median)."""
    fig = Figure(figsize=(7, 4), layout="tight")
    ax = fig.subplots()
    histogram_panel(ax, values, xlabel)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, out_path)


@styled
def plot_histogram_panels(
    panels: Mapping[str, Mapping[str, np.ndarray]], out_path: Path, title: str = ""
) -> Path:
    """Side-by-side full-range histogram panels: ``{x label: {set: values}}``."""
    fig = Figure(figsize=(6 * len(panels), 4), layout="tight")
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (xlabel, values) in zip(axes[0], panels.items(), strict=True):
        histogram_panel(ax, values, xlabel)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_path)


@styled
def plot_curves(
    x: Sequence[float],
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    out_path: Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Path:
    """A median line with a 25-75% quantile band per set: ``{set: (median, q25, q75)}``."""
    fig = Figure(figsize=(6.5, 4), layout="tight")
    ax = fig.subplots()
    for color, (label, (median, low, high)) in zip(PALETTE, curves.items(), strict=False):
        ax.plot(x, median, marker="o", color=color, label=label)
        ax.fill_between(x, low, high, color=color, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, out_path)
