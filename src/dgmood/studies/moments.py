"""Where does each dataset sit in pixel space? Per-dimension means and variances.

For each dataset (uint8 images at their native size, scaled to [0, 1]), compute every
dimension's mean and variance over the set's images, draw their histograms over the full
range of the data, and tabulate summary numbers (mean, median, quantiles of both, and the
overall pixel mean and variance). The paper explains the likelihood failure by the second
moments: a set whose images sit near the training data's mean with *smaller* variance
(SVHN inside CIFAR-10, MNIST inside FashionMNIST) gets higher likelihood. No model is
trained.

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019 (Section 5, Figure 5: histograms of per-dimension means and variances).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dgmood.data.datasets import DATASETS, load_dataset
from dgmood.reporting.analysis_plots import plot_histogram_panels
from dgmood.reporting.result import Cell, Figure, StudyResult, Table
from dgmood.studies.base import Study, StudyContext, register_study
from dgmood.studies.likelihood import QUANTILES, distribution_cells


@dataclass(frozen=True)
class MomentsOptions:
    datasets: tuple[str, ...] = ("fashion-mnist", "mnist")  # the first is the reference
    split: str = "test"


def pixel_moments(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and (population) variance over images, pixels scaled to [0, 1].

    ``images`` is uint8 ``[N, C, H, W]``; returns two float64 arrays of ``C * H * W`` values.
    """
    x = images.reshape(images.shape[0], -1).to(torch.float64) / 255.0
    return x.mean(dim=0).numpy(), x.var(dim=0, unbiased=False).numpy()


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
        means: dict[str, np.ndarray] = {}
        variances: dict[str, np.ndarray] = {}
        rows: list[list[Cell]] = []
        with ctx.timed("moments"):
            for name in o.datasets:
                imageset = load_dataset(
                    name,
                    o.split,
                    data_dir=ctx.sources.data_dir,
                    download=ctx.sources.download,
                    mirror=ctx.sources.mirror,
                    channels=DATASETS[name].channels if name in DATASETS else 3,
                ).head(ctx.limit)
                mean, var = pixel_moments(imageset.images)
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
            "columns summarise those D numbers. Native image size, no padding.",
            digits=4,
        )
        path = plot_histogram_panels(
            {"per-dimension mean": means, "per-dimension variance": variances},
            ctx.out_dir / "pixel_moments.png",
            title=f"{o.split} split, pixels scaled to [0, 1]",
        )
        figure = Figure(
            "pixel_moments",
            "Histograms of per-dimension means and variances",
            path.name,
            "Full data range on both x axes; dashed lines are medians.",
        )
        return self.result(
            ctx,
            moments_finding(rows),
            tables=[table],
            figures=[figure],
            data={
                "mean_of_means": {r[0]: r[3] for r in rows},
                "mean_of_variances": {r[0]: r[9] for r in rows},
            },
        )


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
