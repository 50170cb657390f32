"""Where does each dataset sit in pixel space? Per-dimension means and variances.

For each dataset (uint8 images at their native size, scaled to [0, 1]), compute every
dimension's mean and variance over the set's images, draw their histograms over the full
range of the data, and tabulate summary numbers (mean, median, quantiles of both, and the
overall pixel mean and variance). The paper explains the likelihood failure by the second
moments: a set whose images sit near the training data's mean with *smaller* variance
(SVHN inside CIFAR-10, MNIST inside FashionMNIST) gets higher likelihood. No model is
trained.

Colour (``channels=3``, e.g. ``datasets=[cifar10, gtsrb, mnist, ...]``): every set is loaded
as a 3-channel 32x32 run sees it (gray sets repeated to RGB and zero-padded 28 -> 32), and
the study adds, per channel and set, the mean of the per-pixel means and variances and the
sum over pixels of ``sigma^2_set - sigma^2_reference``: the second moments the paper's
CV-Glow formula weighs by ``alpha_c^2`` (:mod:`dgmood.studies.cv_glow`). Its talk gives 12.3,
6.5 and 14.5 for CIFAR-10 and SVHN without units or sign convention; the formula's
``>= 0`` makes them CIFAR-10 minus SVHN. Here the sums are OOD minus reference, on pixels
scaled to [0, 1] as k/255 (a flow's input (k + 1/2)/256 - 1/2 gives (255/256)^2 of them,
0.8% less), and on [0, 255]
(times 255^2). A figure shows the per-pixel mean and variance maps of every channel.

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019 (Section 5, Figure 5: histograms of per-dimension means and variances; the
CV-Glow analysis and its CIFAR-10/SVHN numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dgmood.config import DataConfig
from dgmood.data.datasets import DATASETS, load_dataset
from dgmood.data.imageset import ImageSet
from dgmood.reporting.analysis_plots import plot_histogram_panels
from dgmood.reporting.pictures import plot_pixel_maps
from dgmood.reporting.result import Cell, Figure, StudyResult, Table
from dgmood.studies.base import Study, StudyContext, register_study
from dgmood.studies.likelihood import QUANTILES, distribution_cells

CHUNK = 4096  # images per float64 pass: the moments of 50,000 colour images in ~100 MB
CHANNEL_NAMES = {1: ("gray",), 3: ("R", "G", "B")}
# the talk's sum_{h,w} (sigma^2_CIFAR-10 - sigma^2_SVHN) per channel (R, G, B), no units given
PUBLISHED_SVHN_VARIANCE_SUMS = (12.3, 6.5, 14.5)


@dataclass(frozen=True)
class MomentsOptions:
    datasets: tuple[str, ...] = ("fashion-mnist", "mnist")  # the first is the reference
    split: str = "test"
    # 0: each set at its native size and channels; 1 or 3: every set as a run with that many
    # channels at image_size sees it (3 = colour: gray sets repeated, 28x28 zero-padded)
    channels: int = 0
    image_size: int = 32  # side of every set when channels is 1 or 3
    reference_split: str = ""  # split of the reference set ("" = split; e.g. train)


def pixel_moments(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and (population) variance over images, pixels scaled to [0, 1].

    ``images`` is uint8 ``[N, C, H, W]``; returns two float64 arrays of ``C * H * W`` values,
    in that order (channel-major). Accumulated in float64 chunks of :data:`CHUNK` images,
    about the mean of the first chunk, so that a large set never needs one float64 copy.
    """
    n = images.shape[0]
    if n == 0:
        raise ValueError("pixel_moments needs at least one image")
    flat = images.reshape(n, -1)
    shift = flat[:CHUNK].to(torch.float64).mean(dim=0) / 255.0
    total = torch.zeros_like(shift)
    squares = torch.zeros_like(shift)
    for start in range(0, n, CHUNK):
        x = flat[start : start + CHUNK].to(torch.float64) / 255.0 - shift
        total += x.sum(dim=0)
        squares += (x * x).sum(dim=0)
    mean = total / n
    variance = (squares / n - mean * mean).clamp_min(0.0)
    return (mean + shift).numpy(), variance.numpy()


def channel_variance_sums(
    variance: np.ndarray, reference: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Per channel: ``sum_{h,w} (sigma^2 - sigma^2_reference)``, in the variances' units."""
    difference = (np.asarray(variance) - np.asarray(reference)).reshape(shape)
    result: np.ndarray = difference.sum(axis=(1, 2))
    return result


@register_study
class Moments(Study[MomentsOptions]):
    """Histograms of the per-dimension means and variances of each dataset."""

    name = "moments"
    title = "Do the OOD images sit inside the training data's mass (means and variances)?"
    Options = MomentsOptions

    def run(self, ctx: StudyContext) -> StudyResult:
        o = self.options
        if not o.datasets:
            raise ValueError("moments needs at least one dataset")
        if o.channels not in (0, 1, 3):
            raise ValueError(f"channels is 0 (native), 1 or 3, got {o.channels}")
        means: dict[str, np.ndarray] = {}
        variances: dict[str, np.ndarray] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        rows: list[list[Cell]] = []
        with ctx.timed("moments"):
            for index, name in enumerate(o.datasets):
                split = o.reference_split if index == 0 and o.reference_split else o.split
                imageset = self._load(ctx, name, split)
                mean, var = pixel_moments(imageset.images)
                shapes[imageset.label] = tuple(imageset.images.shape[1:])
                means[imageset.label], variances[imageset.label] = mean, var
                rows.append(
                    [
                        imageset.label,
                        len(imageset),
                        mean.size,
                        *distribution_cells(mean, std=False),
                        *distribution_cells(var, std=False),
                    ]
                )
        quantiles = [f"q{int(q * 100):02d}" for q in QUANTILES]
        table = Table(
            name="pixel_moments",
            title="Per-dimension means and variances (pixels in [0, 1])",
            columns=[
                "set",
                "images",
                "dimensions",
                "mean of means",
                "median of means",
                *[f"means {q}" for q in quantiles],
                "mean of variances",
                "median of variances",
                *[f"variances {q}" for q in quantiles],
            ],
            rows=rows,
            caption="For each dimension d: its mean and variance over the set's images; the "
            "columns summarise those D numbers. "
            + (
                f"Every set as a {o.channels}-channel {o.image_size}x{o.image_size} run sees it "
                "(gray repeated to RGB, 28x28 zero-padded)."
                if o.channels
                else "Native image size, no padding."
            ),
            digits=4,
        )
        path = plot_histogram_panels(
            {"per-dimension mean": means, "per-dimension variance": variances},
            ctx.out_dir / "pixel_moments.png",
            title=f"{o.split} split, pixels scaled to [0, 1]",
        )
        figures = [
            Figure(
                "pixel_moments",
                "Histograms of per-dimension means and variances",
                path.name,
                "Full data range on both x axes; dashed lines are medians.",
            )
        ]
        tables = [table]
        data: dict[str, object] = {
            "mean_of_means": {r[0]: r[3] for r in rows},
            "mean_of_variances": {r[0]: r[9] for r in rows},
        }
        if len(set(shapes.values())) == 1:  # one format: per-channel, per-pixel comparisons
            channel_table, sums = channel_moments_table(means, variances, shapes)
            tables.append(channel_table)
            data["variance_sums_per_channel"] = sums
            maps = {
                label: (
                    means[label].reshape(shapes[label]),
                    variances[label].reshape(shapes[label]),
                )
                for label in means
            }
            path = plot_pixel_maps(maps, ctx.out_dir / "pixel_maps.png")
            figures.append(
                Figure(
                    "pixel_maps",
                    "Per-pixel means and variances of every channel, per set",
                    path.name,
                    "Pixels scaled to [0, 1]; one colour scale per column (means 0-1, "
                    "variances 0 to the largest variance of any set).",
                )
            )
        return self.result(
            ctx,
            moments_finding(rows),
            tables=tables,
            figures=figures,
            data=data,
        )

    def _load(self, ctx: StudyContext, name: str, split: str) -> ImageSet:
        """``name``/``split`` at its native format, or as a ``channels``-channel run sees it."""
        o = self.options
        if o.channels:
            like = DataConfig(dataset=o.datasets[0], channels=o.channels, image_size=o.image_size)
            return ctx.load_set(name, split, like)
        return load_dataset(
            name,
            split,
            data_dir=ctx.sources.data_dir,
            download=ctx.sources.download,
            mirror=ctx.sources.mirror,
            channels=DATASETS[name].channels if name in DATASETS else 3,
        ).head(ctx.limit)


def channel_moments_table(
    means: dict[str, np.ndarray],
    variances: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
) -> tuple[Table, dict[str, list[float]]]:
    """Per set and channel: mean of the per-pixel means and variances, and the sum over
    pixels of ``sigma^2_set - sigma^2_reference`` on the [0, 1] and [0, 255] scales."""
    labels = list(means)
    reference = labels[0]
    shape = shapes[reference]
    names = CHANNEL_NAMES.get(shape[0], tuple(str(c) for c in range(shape[0])))
    rows: list[list[Cell]] = []
    sums: dict[str, list[float]] = {}
    for label in labels:
        mean = means[label].reshape(shape)
        var = variances[label].reshape(shape)
        difference = channel_variance_sums(variances[label], variances[reference], shape)
        sums[label] = [float(v) for v in difference]
        for c, channel in enumerate(names):
            rows.append(
                [
                    label,
                    channel,
                    float(mean[c].mean()),
                    float(var[c].mean()),
                    float(difference[c]),
                    float(difference[c] * 255.0**2),
                ]
            )
    table = Table(
        name="channel_moments",
        title=f"Per-channel moments and variance sums relative to {reference}",
        columns=[
            "set",
            "channel",
            "mean of per-pixel means [0, 1]",
            "mean of per-pixel variances [0, 1]",
            f"sum over pixels of var(set) - var({reference}), pixels in [0, 1]",
            "the same, pixels in [0, 255]",
        ],
        rows=rows,
        caption="The sums are the second-moment factors of the paper's CV-Glow formula, "
        "sum_c alpha_c^2 sum_{h,w}(sigma^2_q - sigma^2_p*), with q = the set and p* = "
        f"{reference}: negative = the set varies less than {reference} (the paper's case for "
        "a set that gets higher likelihood). Pixels k/255 in [0, 1]; a flow's input scale "
        "(k + 1/2)/256 - 1/2 gives (255/256)^2 of these (0.8% less, as the cv-glow study "
        "reports them); the [0, 255] column is 255^2 times larger. For "
        "comparison, the paper's talk gives 12.3, 6.5, 14.5 (R, G, B; no units stated) for "
        "CIFAR-10 minus SVHN, i.e. -12.3, -6.5, -14.5 in this table's direction (SVHN minus "
        "CIFAR-10).",
        digits=4,
    )
    return table, sums


def moments_finding(rows: list[list[Cell]]) -> str:
    """Each set's mean pixel and mean variance against the first (reference) set."""
    ref = rows[0]
    parts = [f"{ref[0]}: mean {ref[3]:.3f}, mean variance {ref[9]:.4f}"]
    for row in rows[1:]:
        assert isinstance(row[9], float) and isinstance(ref[9], float)
        relation = "smaller" if row[9] < ref[9] else "larger"
        parts.append(
            f"{row[0]}: mean {row[3]:.3f}, mean variance {row[9]:.4f} ({relation} than "
            f"{ref[0]}, ratio {row[9] / ref[9]:.2f})"
        )
    return "Per-dimension moments: " + "; ".join(parts) + "."
