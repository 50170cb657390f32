"""Pictures a reader would rather look at than read: image rows and training curves.

- :func:`plot_image_rows`: rows of images (uint8, gray or RGB), each row a labelled strip
  with a caption under every image: the most and least likely images of each set under a
  model, or samples drawn from it.
- :func:`plot_training_curve`: a run's training loss and validation metric against the
  step, from its ``metrics.jsonl`` records.

Each figure is written as PNG with an SVG beside it (:func:`dgmood.reporting.figures.save_figure`).

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019 (Figure 1 shows the data sets; the appendix shows samples of each model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from dgmood.reporting.figures import save_figure
from dgmood.reporting.style import PALETTE, styled

GAP = 2  # white pixels between two images of a strip


@dataclass(frozen=True)
class ImageRow:
    """One labelled strip of images, ``uint8 [N, C, H, W]`` with ``C`` in (1, 3)."""

    label: str
    images: np.ndarray
    captions: Sequence[str] = field(default_factory=tuple)  # one short line per image, or none

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"row {self.label!r}: expected uint8 images [N, 1 or 3, H, W], got "
                f"{images.dtype} {list(images.shape)}"
            )
        if self.captions and len(self.captions) != len(images):
            raise ValueError(
                f"row {self.label!r}: {len(self.captions)} captions for {len(images)} images"
            )


def montage(images: np.ndarray, columns: int) -> np.ndarray:
    """``uint8 [N, C, H, W]`` -> one ``[rows*H, columns*W, 3]`` image, white gaps between tiles.

    Gray images are repeated to RGB so that gray and colour rows share one figure.
    """
    n, channels, height, width = images.shape
    rows = max(1, -(-n // columns))
    canvas = np.full(
        (rows * (height + GAP) - GAP, columns * (width + GAP) - GAP, 3), 255, dtype=np.uint8
    )
    for index in range(n):
        r, c = divmod(index, columns)
        tile = np.moveaxis(images[index], 0, -1)
        if channels == 1:
            tile = np.repeat(tile, 3, axis=-1)
        top, left = r * (height + GAP), c * (width + GAP)
        canvas[top : top + height, left : left + width] = tile
    return canvas


@styled
def plot_image_rows(
    rows: Sequence[ImageRow], out_path: Path, title: str = "", columns: int = 0
) -> Path:
    """One strip per row (its label on the left, each image's caption under it).

    ``columns``: images per strip (0 = the longest row); a longer row wraps onto more lines
    of the same strip (its captions are then left out).
    """
    if not rows:
        raise ValueError("plot_image_rows needs at least one row of images")
    columns = columns or max(len(r.images) for r in rows)
    lines = [max(1, -(-len(r.images) // columns)) for r in rows]
    tile_inches = 0.75
    height = sum(lines) * tile_inches + 0.25 * len(rows) + (0.4 if title else 0.1)
    figure = Figure(figsize=(1.8 + columns * tile_inches, height), layout="constrained")
    axes = figure.subplots(
        len(rows), 1, squeeze=False, gridspec_kw={"height_ratios": [n + 0.35 for n in lines]}
    )
    for ax, row, n_lines in zip(axes[:, 0], rows, lines, strict=True):
        images = np.asarray(row.images)
        if len(images) == 0:
            ax.set_axis_off()
            ax.set_title(f"{row.label}: no images", fontsize=8, loc="left")
            continue
        strip = montage(images, columns)
        ax.imshow(strip, interpolation="nearest", aspect="equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(row.label, rotation=0, ha="right", va="center", fontsize=8)
        width = images.shape[3]
        if row.captions and n_lines == 1:
            for index, caption in enumerate(row.captions):
                ax.text(
                    index * (width + GAP) + width / 2,
                    images.shape[2] + 1,
                    caption,
                    ha="center",
                    va="top",
                    fontsize=6,
                )
        ax.set_xlim(-0.5, columns * (width + GAP) - GAP - 0.5)
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, out_path)


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [
        (float(r["step"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and isinstance(r.get("step"), int | float)
    ]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = np.array(points).T
    return steps, values


@styled
def plot_training_curve(
    records: Sequence[Mapping[str, Any]],
    out_path: Path,
    title: str = "",
    loss_label: str = "training loss",
) -> Path:
    """Training loss (left) and every validation metric ``val_*`` (right) against the step.

    ``records`` are a run's ``metrics.jsonl`` lines (:func:`dgmood.runs.read_metrics`); a
    resumed run repeats no step, so the curves are drawn as logged.
    """
    steps, loss = _series(records, "loss")
    val_keys = sorted({k for r in records for k in r if k.startswith("val_")})
    if not len(steps) and not val_keys:
        raise ValueError("no training records with a 'loss' or a 'val_*' value to plot")
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2, squeeze=True)
    left.plot(steps, loss, color=PALETTE[0], marker="o" if len(loss) < 20 else None)
    left.set_xlabel("step")
    left.set_ylabel(loss_label)
    if len(loss):
        left.set_title(f"last {loss[-1]:.3f} at step {int(steps[-1])}", fontsize=9)
    for color, key in zip(PALETTE[1:], val_keys, strict=False):
        val_steps, values = _series(records, key)
        right.plot(val_steps, values, marker="o", color=color, label=key)
        if len(values):
            right.annotate(
                f"{values[-1]:.3f}",
                (val_steps[-1], values[-1]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    right.set_xlabel("step")
    right.set_ylabel("validation")
    if val_keys:
        right.legend(fontsize=8)
    else:
        right.set_title("no validation records", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, out_path)


@styled
def plot_pixel_maps(
    maps: Mapping[str, tuple[np.ndarray, np.ndarray]], out_path: Path, title: str = ""
) -> Path:
    """Per set (rows): the per-pixel mean and variance of every channel (columns).

    ``maps`` is ``{set: (mean [C, H, W], variance [C, H, W])}`` on pixels scaled to [0, 1].
    Means share the scale 0-1, variances 0 to the largest variance of any set, so that the
    sets compare at a glance; each column ends in its colour bar.
    """
    if not maps:
        raise ValueError("plot_pixel_maps needs at least one set")
    channels = {m.shape[0] for m, _ in maps.values()}
    if len(channels) != 1:
        raise ValueError(f"every set needs the same channels, got {sorted(channels)}")
    (n_channels,) = channels
    names = ("R", "G", "B") if n_channels == 3 else tuple(str(c) for c in range(n_channels))
    top = max(float(np.max(v)) for _, v in maps.values()) or 1.0
    columns = 2 * n_channels
    figure = Figure(figsize=(1.6 * columns + 1.5, 1.5 * len(maps) + 0.8), layout="constrained")
    axes = figure.subplots(len(maps), columns, squeeze=False)
    images = []
    for r, (label, (mean, variance)) in enumerate(maps.items()):
        for c in range(n_channels):
            for kind, values, vmax, column in (
                ("mean", mean, 1.0, c),
                ("variance", variance, top, n_channels + c),
            ):
                ax = axes[r, column]
                images.append(
                    ax.imshow(
                        values[c], vmin=0.0, vmax=vmax, cmap="viridis", interpolation="nearest"
                    )
                )
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                if r == 0:
                    channel = f" {names[c]}" if n_channels > 1 else ""
                    ax.set_title(f"{kind}{channel}", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=8)
    figure.colorbar(images[0], ax=axes[:, :n_channels].ravel().tolist(), shrink=0.6, label="mean")
    figure.colorbar(
        images[1], ax=axes[:, n_channels:].ravel().tolist(), shrink=0.6, label="variance"
    )
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, out_path)
