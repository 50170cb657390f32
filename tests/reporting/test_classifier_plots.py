"""Chicken-post figures: files are real PNGs, and the barcode's ordering is right."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgmood.reporting.classifier_plots import (
    IN_DISTRIBUTION_COLOUR,
    OUT_OF_DISTRIBUTION_COLOUR,
    barcode_colours,
    plot_class_probabilities,
    plot_confidence_barcode,
    plot_reconstructions,
    plot_sorted_scores,
)

BLUE, PINK = IN_DISTRIBUTION_COLOUR, OUT_OF_DISTRIBUTION_COLOUR
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, returned: Path) -> tuple[int, int]:
    assert returned == path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert np.asarray(image.convert("L")).std() > 5  # something was drawn
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".part")]
    assert leftovers == []
    assert path.with_suffix(".svg").read_bytes().lstrip().startswith(b"<?xml")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user writes
    return width, height


def test_barcode_colours_follow_increasing_score() -> None:
    colours = barcode_colours(in_scores=[0.9, 0.95], out_scores=[0.5, 0.99])
    assert colours == [PINK, BLUE, BLUE, PINK]


def test_barcode_colours_perfect_separation_is_pink_then_blue() -> None:
    rng = np.random.default_rng(0)
    in_confidence = rng.uniform(0.9, 1.0, 50)
    out_confidence = rng.uniform(0.1, 0.5, 30)
    assert barcode_colours(in_confidence, out_confidence) == [PINK] * 30 + [BLUE] * 50
    # an OOD score (higher = more OOD) flips the ideal picture
    assert barcode_colours(-in_confidence, -out_confidence) == [BLUE] * 50 + [PINK] * 30


def test_barcode_colours_break_ties_stably_and_accept_custom_colours() -> None:
    assert barcode_colours([1.0, 1.0], [1.0], colours=("a", "b")) == ["a", "a", "b"]
    with pytest.raises(ValueError):
        barcode_colours([], [1.0])
    with pytest.raises(ValueError):
        barcode_colours([np.nan], [1.0])


def test_plot_class_probabilities_writes_png_with_optional_image(tmp_path: Path) -> None:
    probs = np.full(10, 0.001 / 9)
    probs[5] = 0.999
    bars_only = tmp_path / "bars.png"
    width_bars, _ = _assert_png(bars_only, plot_class_probabilities(probs, bars_only))
    chicken = np.random.default_rng(0).integers(0, 256, (1, 32, 32), dtype=np.uint8)
    with_image = tmp_path / "nested" / "chicken.png"
    width_image, _ = _assert_png(with_image, plot_class_probabilities(probs, with_image, chicken))
    assert width_image > width_bars * 1.3  # a third panel for the input


def test_plot_class_probabilities_rejects_non_probabilities(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="probability"):
        plot_class_probabilities(np.array([2.0, -1.0, 3.0]), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_confidence_barcode_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "barcode.png"
    returned = plot_confidence_barcode(rng.beta(20, 1, 1000), rng.beta(5, 2, 1000), path)
    _assert_png(path, returned)


def test_plot_sorted_scores_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "elbo.png"
    returned = plot_sorted_scores(rng.normal(-100, 10, 500), rng.normal(-250, 40, 500), path)
    _assert_png(path, returned)


def test_plot_reconstructions_writes_png_and_checks_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    originals = rng.random((2, 1, 32, 32))
    path = tmp_path / "recon.png"
    returned = plot_reconstructions(originals, originals * 0.5, path, titles=["digit", "chicken"])
    _assert_png(path, returned)
    with pytest.raises(ValueError, match="same shape"):
        plot_reconstructions(originals, originals[:1], tmp_path / "bad.png")
