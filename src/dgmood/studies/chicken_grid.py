"""What makes an MNIST CNN as overconfident on FashionMNIST as the chicken post's?

The post's CNN puts 63.4% / 74.3% / 88.9% of FashionMNIST above 0.99 / 0.95 / 0.75
max-softmax and calls a chicken a 5 at 99.9%; the post does not publish its network. This
study trains one MNIST CNN per cell of a grid over training length, regularisation (none,
batch norm, dropout, both), input normalisation, 28 -> 32 upscaling (resize or pad),
optimiser and width, and tabulates per cell the MNIST test accuracy, the three FashionMNIST
fractions, their distance to the post's, and the highest confidence on natural photos.

References: "Passing a chicken through an MNIST model" (2018); Hendrycks & Gimpel, ICLR 2017.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dgmood.config import RunConfig
from dgmood.models.classifiers.cnn import CNNConfig
from dgmood.reporting.result import Cell, StudyResult, Table
from dgmood.scores.classifier import confidence_fractions, max_softmax_probability
from dgmood.studies.base import Study, StudyContext, register_study
from dgmood.studies.chicken import POST_FASHION_FRACTIONS, THRESHOLDS, write_bundled_photos

Regularization = Literal["none", "batch-norm", "dropout", "both"]
SGD_LR = 0.05  # SGD (momentum 0.9) needs a larger step than Adam's preset 1e-3


@dataclass(frozen=True)
class ChickenGridOptions:
    classifier: str = "cnn-plain"  # the CNN every cell starts from
    steps: tuple[int, ...] = (600, 2000)  # training lengths (optimiser steps)
    regularization: tuple[Regularization, ...] = ("none", "batch-norm", "dropout")
    normalization: tuple[Literal["unit", "standardize", "symmetric"], ...] = ("unit",)
    upscale: tuple[Literal["pad", "resize"], ...] = ("resize",)  # 28 -> 32 pixels
    optimizer: tuple[Literal["adam", "adamax", "sgd"], ...] = ("adam",)
    width: tuple[float, ...] = (1.0,)  # multiplier of every conv's channels and the FC width
    dropout: float = 0.3  # dropout probability where a cell uses dropout
    photos: tuple[str, ...] = ()  # image files (default: scikit-image's bundled photos)


@dataclass(frozen=True)
class GridCell:
    """One setting of the grid."""

    steps: int
    regularization: Regularization
    normalization: str
    upscale: str
    optimizer: str
    width: float

    @property
    def role(self) -> str:
        """Run directory name: every setting, readable."""
        return (
            f"steps{self.steps}-{self.regularization}-{self.normalization}-{self.upscale}"
            f"-{self.optimizer}-w{self.width:g}"
        )

    def apply(self, config: RunConfig, dropout: float) -> RunConfig:
        """``config`` with this cell's settings."""
        model = config.model
        if not isinstance(model, CNNConfig):
            raise ValueError(f"the chicken grid needs a cnn classifier, got {config.preset}")
        model = dataclasses.replace(
            model,
            channels=tuple(max(1, round(c * self.width)) for c in model.channels),
            hidden_width=max(1, round(model.hidden_width * self.width)),
            batch_norm=self.regularization in ("batch-norm", "both"),
            dropout=dropout if self.regularization in ("dropout", "both") else 0.0,
            input_normalization=self.normalization,  # type: ignore[arg-type]
        )
        train = dataclasses.replace(
            config.train,
            steps=self.steps,
            optimizer=self.optimizer,  # type: ignore[arg-type]
            lr=SGD_LR if self.optimizer == "sgd" else config.train.lr,
        )
        data = dataclasses.replace(config.data, upscale=self.upscale)  # type: ignore[arg-type]
        return dataclasses.replace(config, model=model, train=train, data=data)


def grid_cells(options: ChickenGridOptions) -> list[GridCell]:
    """The cartesian product of the options' axes, first axis slowest."""
    axes = (
        options.steps,
        options.regularization,
        options.normalization,
        options.upscale,
        options.optimizer,
        options.width,
    )
    for name, axis in zip(GRID_AXES, axes, strict=True):
        if not axis:
            raise ValueError(f"chicken-grid option {name!r} needs at least one value")
    return [GridCell(*values) for values in itertools.product(*axes)]


GRID_AXES = ("steps", "regularization", "normalization", "upscale", "optimizer", "width")


def distance_to_post(fractions: dict[float, float]) -> float:
    """Mean absolute difference of the three FashionMNIST fractions from the post's."""
    return sum(abs(fractions[t] - POST_FASHION_FRACTIONS[t]) for t in THRESHOLDS) / len(THRESHOLDS)


@register_study
class ChickenGrid(Study[ChickenGridOptions]):
    """Grid of MNIST CNNs: which setting reproduces the post's overconfidence?"""

    name = "chicken-grid"
    title = "Which training choices make an MNIST CNN as overconfident as the chicken post's?"
    Options = ChickenGridOptions

    def run(self, ctx: StudyContext) -> StudyResult:
        from dgmood.data.datasets import load_user_images
        from dgmood.inference import classify_images, score_images

        o = self.options
        cells = grid_cells(o)
        base = ctx.run_config(o.classifier, "mnist", kind="classifier")
        configs = [cell.apply(base, o.dropout) for cell in cells]  # refuse bad options first
        photo_files = [Path(p) for p in o.photos] or write_bundled_photos(ctx.out_dir / "photos")
        rows: list[list[Cell]] = []
        records = []
        for cell, config in zip(cells, configs, strict=True):
            run = ctx.obtain(config)
            model = run.classifier()
            data = run.config.data
            mnist = ctx.load_set("mnist", "test", data)
            fashion = ctx.load_set("fashion-mnist", "test", data)
            with ctx.timed("score sets"):
                logits_mnist = score_images(model, mnist.images)["logits"]
                logits_fashion = score_images(model, fashion.images)["logits"]
            accuracy = float((logits_mnist.argmax(1) == mnist.labels.numpy()).mean())
            fractions = confidence_fractions(
                max_softmax_probability(logits_fashion).numpy(), THRESHOLDS
            )
            photos = load_user_images(photo_files, data.channels, data.image_size)
            predictions = classify_images(model, photos, [p.stem for p in photo_files])
            best = max(predictions, key=lambda p: p.confidence)
            distance = distance_to_post(fractions)
            rows.append(
                [
                    cell.steps,
                    cell.regularization,
                    cell.normalization,
                    cell.upscale,
                    cell.optimizer,
                    cell.width,
                    accuracy,
                    *(fractions[t] for t in THRESHOLDS),
                    distance,
                    best.confidence,
                    f"{best.name}: {best.predicted_class}",
                ]
            )
            records.append(
                {
                    "cell": cell.role,
                    "run_dir": str(run.run_dir),
                    **dataclasses.asdict(cell),
                    "mnist_accuracy": accuracy,
                    "fashion_fractions": {str(t): fractions[t] for t in THRESHOLDS},
                    "distance_to_post": distance,
                    "highest_photo_confidence": best.confidence,
                    "most_confident_photo": best.name,
                    "photo_prediction": best.predicted_class,
                }
            )
        table = Table(
            "chicken_grid",
            "MNIST CNNs over the grid: accuracy, FashionMNIST overconfidence, photos",
            [
                *GRID_AXES,
                "MNIST accuracy",
                *(f"FashionMNIST > {t}" for t in THRESHOLDS),
                "mean |fraction - post|",
                "highest photo confidence",
                "photo: digit",
            ],
            rows,
            caption="The post: 63.4% / 74.3% / 88.9% of FashionMNIST above 0.99 / 0.95 / "
            "0.75, a chicken called a 5 at 99.9%, about 98% MNIST accuracy.",
        )
        return self.result(
            ctx,
            grid_finding(records),
            tables=[table],
            runs={r["cell"]: r["run_dir"] for r in records},
            data={"cells": records, "post_fashion_fractions": dict(POST_FASHION_FRACTIONS)},
        )


def grid_finding(records: list[dict[str, object]], min_accuracy: float = 0.98) -> str:
    """Which cell with at least ``min_accuracy`` on MNIST comes closest to the post."""
    eligible = [r for r in records if float(r["mnist_accuracy"]) >= min_accuracy]  # type: ignore[arg-type]
    if not eligible:
        return f"No cell reaches {min_accuracy:.0%} MNIST accuracy; train longer."
    best = min(eligible, key=lambda r: float(r["distance_to_post"]))  # type: ignore[arg-type]
    fractions = best["fashion_fractions"]
    assert isinstance(fractions, dict)
    return (
        f"Closest to the post among cells with >= {min_accuracy:.0%} MNIST accuracy: "
        f"{best['cell']} ({float(best['mnist_accuracy']):.2%} accurate; FashionMNIST above "  # type: ignore[arg-type]
        f"0.99 / 0.95 / 0.75: "
        + " / ".join(f"{float(fractions[str(t)]):.1%}" for t in THRESHOLDS)
        + " vs the post's 63.4% / 74.3% / 88.9%; highest photo confidence "
        f"{float(best['highest_photo_confidence']):.1%})."  # type: ignore[arg-type]
    )
