"""``dgmood predict``: a classifier's answer for image files; with a detector, the reject rule.

Each file is prepared in the run's format (:func:`dgmood.data.loading.load_files_like`): an
image already in the dataset's format (a 28x28 gray PNG for an MNIST run zero-padded to
32x32) takes exactly the dataset's geometry; a photo takes the MNIST-ify route, which says
when it inverted the image.

A density run's reject rule (the post's "simple algorithm") is **one rule per run, score and
accepted share, stored once** in the run directory (``thresholds/``,
:mod:`dgmood.evaluation.reject`): the ``accept`` quantile of the score on the run's own
validation images, the first ``val_size`` images of its ``val_split`` (it was validated on
them while training and never trained on them). ``dgmood predict --detector`` applies it and
the chicken study reports it (:func:`run_detector`). A score fitted on training images sees
up to ``fit_limit`` of them; a score fitted on held-out images (typicality) sees the
``val_split`` images after the validation ones.

References: "Passing a chicken through an MNIST model" (2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgmood.data.images import PreparedImage, stack_pixels
from dgmood.data.imageset import ImageSet
from dgmood.data.loading import DataSources, load_files_like
from dgmood.evaluation.reject import Detector, RejectRule, make_detector
from dgmood.inference import PhotoPrediction, classify_images
from dgmood.runs import LoadedRun, load_run
from dgmood.scores.base import make_score

DETECTOR_FIT_LIMIT = 10_000  # in-distribution images a fitted score of a detector sees


@dataclass(frozen=True)
class FilePredictions:
    """A classifier's answers for image files (``dgmood predict``)."""

    predictions: list[PhotoPrediction]
    prepared: list[PreparedImage]  # per file: the pixels scored and the route they took
    figures: list[Path]  # the post's figure per file, when asked for


def predict_files(
    run_dir: Path,
    paths: Sequence[Path],
    *,
    invert: bool | None = None,
    plot_dir: Path | None = None,
) -> FilePredictions:
    """Class probabilities of image files under a classifier run (``dgmood predict``).

    Each file is prepared as :func:`dgmood.data.loading.load_files_like` says, as the
    chicken study's photos are; with ``plot_dir``, the post's figure per image is written.
    """
    from dgmood.reporting.classifier_plots import plot_class_probabilities

    run = load_run(run_dir)
    model = run.classifier()
    prepared = load_files_like(paths, run.config.data, invert)
    images = stack_pixels(prepared)
    predictions = classify_images(model, images, [p.name for p in paths])
    figures = []
    if plot_dir is not None:
        for path, image, p in zip(paths, images, predictions, strict=True):
            figures.append(
                plot_class_probabilities(
                    np.asarray(p.probabilities),
                    plot_dir / f"{path.stem}_probabilities.png",
                    image=image.numpy(),
                    title=path.name,
                )
            )
    return FilePredictions(predictions, prepared, figures)


def run_detector(
    run: LoadedRun,
    score: str = "nll",
    accept: float = 0.95,
    sources: DataSources | None = None,
    fit_limit: int = DETECTOR_FIT_LIMIT,
) -> Detector:
    """The reject rule of a density run, fitted on its own validation images (or reused).

    Validation images: the first ``val_size`` of the run's ``val_split``. A score fitted on
    training images sees up to ``fit_limit`` of the run's ``train_split``; one fitted on
    held-out images the next ``fit_limit`` images of ``val_split`` after the validation ones.
    """
    sources = sources or DataSources()
    data = run.config.data
    chosen = make_score(score)
    split = sources.load_like(data.dataset, data.val_split, data)
    validation = split.head(data.val_size)
    fit_data: ImageSet | None = None
    if chosen.needs_fit and chosen.fits_on == "held_out":
        start = len(validation)
        fit_data = split.with_images(
            split.images[start : start + fit_limit], split.labels[start : start + fit_limit]
        )
        if len(fit_data) == 0:
            raise ValueError(
                f"score {chosen.name!r} is fitted on held-out images, but {split.label} has "
                f"none beyond the run's {len(validation)} validation images (data.val_size)"
            )
    elif chosen.needs_fit:
        fit_data = sources.load_like(data.dataset, data.train_split, data).head(fit_limit)
    return make_detector(run, chosen, validation, accept, fit_data=fit_data)


@dataclass(frozen=True)
class Screening:
    """A detector's verdict on some image files (``dgmood predict --detector``)."""

    rule: RejectRule
    path: Path  # where the rule is stored in the detector's run
    scores: np.ndarray
    rejected: np.ndarray  # bool per input
    percentile: np.ndarray  # % of in-distribution validation images scoring at most as high
    prepared: list[PreparedImage]  # per file: the pixels scored and the route they took


def screen_files(
    detector_dir: Path,
    paths: Sequence[Path],
    score: str = "nll",
    accept: float = 0.95,
    *,
    invert: bool | None = None,
    sources: DataSources | None = None,
) -> Screening:
    """Whether the density run in ``detector_dir`` rejects each image file as OOD, by the
    run's one stored rule (:func:`run_detector`)."""
    run = load_run(detector_dir)
    run.density_model()
    detector = run_detector(run, score, accept, sources)
    prepared = load_files_like(paths, run.config.data, invert)
    values, rejected, percentile = detector.screen(stack_pixels(prepared))
    return Screening(detector.rule, detector.path, values, rejected, percentile, prepared)
