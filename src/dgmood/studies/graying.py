"""Does a flat, gray image look *more* likely? Likelihood as images are grayed out.

Each in-distribution and OOD test image is blended toward a constant gray,
``x' = round((1 - alpha) * x + alpha * 128)``; separately, its contrast is scaled
down about its own mean, ``x' = round(m + (1 - alpha) * (x - m))`` (``m``: the image's mean
pixel); and it is blended toward the training set's per-pixel mean image ``mu``,
``x' = round((1 - alpha) * x + alpha * mu)``, for ``alpha`` from 0 (the image itself) to 1
(a constant image, or ``mu``). For CIFAR-10, the paper's case, gray 128 is close to the
data's mean; for black-background digits and clothes it is not (it lifts the background,
which the model has learnt to be 0), and the mean image is the faithful analogue: it lowers
every pixel's deviation from the data's centre, which is what graying does to CIFAR. Blending makes
non-integer pixels; they are **rounded to the nearest uint8** so that the model sees 8-bit
data with the usual dequantization, like any other image. Each variant is scored under the
model (bits/dim) and drawn as a median curve with its 25-75% band per set. The paper and
its talk: lowering contrast raises likelihood, the constant image being the most likely.
At ``alpha = 1`` each transform maps every image to one image, so all sets meet.
Every transform acts on each channel alike, so a colour run (``in_dataset=cifar10``, the
paper's Figure 6b was made on colour images) is blended toward gray (128, 128, 128) and
toward the training set's per-pixel, per-channel mean image. The report also shows the first
images of each set at every alpha, and the model's pictures (most/least likely images,
samples, training curve).

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019 (Section 5 and Appendix, Figure 6b: graying CIFAR-10 images raises log p(x)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dgmood.data.imageset import ImageSet
from dgmood.evaluation.compare import ScoringOptions, prepare_input
from dgmood.reporting.analysis_plots import plot_curves
from dgmood.reporting.pictures import ImageRow, plot_image_rows
from dgmood.reporting.result import Cell, Figure, StudyResult, Table
from dgmood.scores.density import negative_log_likelihood
from dgmood.studies.base import Study, StudyContext, register_study
from dgmood.studies.pictures import run_pictures

GRAY_LEVEL = 128  # the constant gray images are blended toward (uint8)
TRANSFORMS = ("gray", "contrast", "mean")
_LABELS = {
    "gray": "blend toward gray 128",
    "contrast": "contrast scaled down",
    "mean": "blend toward the training mean image",
}


def blend_to_gray(images: torch.Tensor, alpha: float, gray: int = GRAY_LEVEL) -> torch.Tensor:
    """``round((1 - alpha) * x + alpha * gray)`` as uint8 (alpha 1: the constant image)."""
    x = images.to(torch.float64)
    return torch.round((1.0 - alpha) * x + alpha * gray).clamp(0, 255).to(torch.uint8)


def scale_contrast(images: torch.Tensor, alpha: float) -> torch.Tensor:
    """``round(m + (1 - alpha) * (x - m))`` as uint8, ``m`` each image's mean pixel."""
    x = images.to(torch.float64)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return torch.round(mean + (1.0 - alpha) * (x - mean)).clamp(0, 255).to(torch.uint8)


def blend_to_mean(images: torch.Tensor, alpha: float, mean_image: torch.Tensor) -> torch.Tensor:
    """``round((1 - alpha) * x + alpha * mu)`` as uint8, ``mu`` a (float) per-pixel mean image."""
    x = images.to(torch.float64)
    mu = mean_image.to(torch.float64).expand_as(x)
    return torch.round((1.0 - alpha) * x + alpha * mu).clamp(0, 255).to(torch.uint8)


def transformed(
    imageset: ImageSet, transform: str, alpha: float, mean_image: torch.Tensor | None = None
) -> ImageSet:
    """``imageset`` with ``transform`` (gray, contrast or mean) at strength ``alpha``;
    ``mean`` needs the training set's per-pixel ``mean_image``."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform is one of {TRANSFORMS}, got {transform!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if transform == "mean":
        if mean_image is None:
            raise ValueError("the mean transform needs the training set's mean_image")
        images = blend_to_mean(imageset.images, alpha, mean_image)
    else:
        images = (blend_to_gray if transform == "gray" else scale_contrast)(imageset.images, alpha)
    split = f"{imageset.split}+{transform}{alpha:.3f}"
    return ImageSet(imageset.name, split, images, imageset.labels)


@dataclass(frozen=True)
class GrayingOptions:
    model: str = "glow"  # density model
    in_dataset: str = "fashion-mnist"  # trained on
    ood: tuple[str, ...] = ("mnist",)  # OOD test sets
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)  # 0 = the image itself
    # gray: toward 128; contrast: toward the image's own mean; mean: toward the training mean
    transforms: tuple[str, ...] = TRANSFORMS
    samples: int = 16  # samples of the model shown in the report (0 = none)


@register_study
class Graying(Study[GrayingOptions]):
    """Bits/dim of test images blended toward gray (and with contrast scaled down)."""

    name = "graying"
    title = "Does blending images toward a constant gray raise their likelihood?"
    Options = GrayingOptions

    def run(self, ctx: StudyContext) -> StudyResult:
        o = self.options
        unknown = [t for t in o.transforms if t not in TRANSFORMS]
        if unknown:
            raise ValueError(f"transforms are among {TRANSFORMS}, got {unknown}")
        for alpha in o.alphas:
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"alphas must lie in [0, 1], got {alpha}")
        config = ctx.run_config(o.model, o.in_dataset)
        data = config.data
        bases = [ctx.load_set(o.in_dataset, data.val_split, data)]
        bases += [ctx.load_set(name, "test", data) for name in o.ood]
        run = ctx.obtain(config)
        mean_image = None
        if "mean" in o.transforms:
            train = ctx.load_set(o.in_dataset, data.train_split, data, limit=0)
            mean_image = train.images.to(torch.float64).mean(dim=0, keepdim=True)
        scoring = ScoringOptions(progress=ctx.progress)
        rows: list[list[Cell]] = []
        figures: list[Figure] = []
        curves_data: dict[str, dict[str, list[float]]] = {}
        for transform in o.transforms:
            curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
            for base in bases:
                medians, lows, highs = [], [], []
                for alpha in o.alphas:
                    variant = transformed(base, transform, alpha, mean_image)
                    with ctx.timed("score sets"):
                        bpd = negative_log_likelihood(
                            prepare_input(run, variant, options=scoring).stats
                        )
                    q25, median, q75 = np.quantile(bpd, (0.25, 0.5, 0.75))
                    medians.append(median)
                    lows.append(q25)
                    highs.append(q75)
                    rows.append(
                        [
                            transform,
                            alpha,
                            base.label,
                            len(bpd),
                            float(bpd.mean()),
                            float(median),
                            float(q25),
                            float(q75),
                        ]
                    )
                curves[base.label] = (np.array(medians), np.array(lows), np.array(highs))
                curves_data.setdefault(transform, {})[base.label] = [float(m) for m in medians]
            label = _LABELS[transform]
            path = plot_curves(
                list(o.alphas),
                curves,
                ctx.out_dir / f"graying_{transform}.png",
                f"alpha ({label}; 0 = original image)",
                "bits/dim (lower = more likely)",
                title=f"{run.name} trained on {o.in_dataset}",
            )
            figures.append(
                Figure(
                    f"graying_{transform}",
                    f"Bits/dim vs alpha: {label}",
                    path.name,
                    "Median per set with its 25-75% band; pixels rounded to uint8.",
                )
            )
        figures.append(self._examples(ctx, bases, mean_image))
        with ctx.timed("score sets"):
            originals = {b.label: prepare_input(run, b, options=scoring) for b in bases}
        figures += run_pictures(ctx, run, originals, samples=o.samples)
        table = Table(
            name="graying",
            title="Bits/dim of test images as they are grayed out",
            columns=["transform", "alpha", "set", "n", "bits/dim mean", "median", "q25", "q75"],
            rows=rows,
            caption="gray: x' = round((1-alpha) x + alpha 128); contrast: x' = round(m + "
            "(1-alpha)(x - m)), m the image's mean over all its sub-pixels (a colour image ends "
            "gray); mean: x' = round((1-alpha) x + alpha mu), "
            "mu the training set's per-pixel mean image. Pixels are rounded to uint8 before "
            "scoring.",
        )
        return self.result(
            ctx,
            graying_finding(rows),
            tables=[table],
            figures=figures,
            runs={"model": str(run.run_dir)},
            data={"median_bits_per_dim": curves_data, "alphas": list(o.alphas)},
        )

    def _examples(
        self, ctx: StudyContext, bases: list[ImageSet], mean_image: torch.Tensor | None
    ) -> Figure:
        """The first images of each set under every transform and alpha."""
        o = self.options
        count = 3
        rows = []
        for base in bases:
            head = base.head(count)
            for transform in o.transforms:
                tiles = [transformed(head, transform, a, mean_image).images for a in o.alphas]
                # image-major: each image's alphas side by side
                strip = torch.stack(tiles, dim=1).flatten(0, 1).numpy()
                captions = [f"a={a:g}" for a in o.alphas] * len(head)
                rows.append(ImageRow(f"{base.label}\n{_LABELS[transform]}", strip, captions))
        path = plot_image_rows(
            rows, ctx.out_dir / "graying_examples.png", title="What the model scores at each alpha"
        )
        return Figure(
            "graying_examples",
            "Example images at every alpha, per transform",
            path.name,
            f"The first {count} images of each set, alphas {', '.join(f'{a:g}' for a in o.alphas)} "
            "left to right for each image; pixels rounded to uint8 as scored.",
        )


def graying_finding(rows: list[list[Cell]]) -> str:
    """Per transform and set: median bits/dim at the smallest and the largest alpha."""
    ends: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for transform, alpha, label, _, _, median, _, _ in rows:
        assert isinstance(alpha, float) and isinstance(median, float)
        ends.setdefault((str(transform), str(label)), []).append((alpha, median))
    parts = []
    for (transform, label), points in ends.items():
        (a0, first), (a1, last) = min(points), max(points)
        verdict = "raises" if last < first else "lowers"
        parts.append(
            f"{transform} {verdict} the likelihood of {label} (median {first:.3f} bits/dim at "
            f"alpha {a0:g}, {last:.3f} at alpha {a1:g})"
        )
    return "; ".join(parts) + "."
