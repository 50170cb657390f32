"""One figure saver: PNG + SVG, atomic, ordinary permissions, figure closed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from dgmood.reporting.figures import save_figure
from dgmood.reporting.plots import plot_bpd_histograms, plot_flow_decomposition


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _line_figure() -> Figure:
    figure = Figure(figsize=(2, 2))
    figure.subplots().plot([0, 1], [0, 1])
    return figure


def test_save_figure_writes_png_and_svg_with_mode_644(tmp_path: Path, umask_022: None) -> None:
    path = save_figure(_line_figure(), tmp_path / "deep" / "line.png", dpi=50)
    assert path == tmp_path / "deep" / "line.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 50
    svg = path.with_suffix(".svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg
    assert sorted(p.name for p in path.parent.iterdir()) == ["line.png", "line.svg"]
    for written in (path, path.with_suffix(".svg")):
        assert written.stat().st_mode & 0o777 == 0o644


def test_save_figure_closes_pyplot_figures(tmp_path: Path) -> None:
    figure = plt.figure()
    assert plt.fignum_exists(figure.number)
    save_figure(figure, tmp_path / "f.png")
    assert not plt.fignum_exists(figure.number)


def test_save_figure_rejects_other_suffixes_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=".png"):
        save_figure(_line_figure(), tmp_path / "f.pdf")
    assert list(tmp_path.iterdir()) == []


def test_likelihood_plots_write_both_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bpd = {"in": rng.normal(3, 0.2, 200), "ood": rng.normal(2, 0.2, 200)}
    histogram = plot_bpd_histograms(bpd, tmp_path / "hist.png", title="t")
    stats = {k: {"log_pz": v, "log_abs_det_jacobian": -v} for k, v in bpd.items()}
    decomposition = plot_flow_decomposition(stats, tmp_path / "dec.png")
    for path in (histogram, decomposition):
        assert path.stat().st_size > 10_000 and path.with_suffix(".svg").exists()
