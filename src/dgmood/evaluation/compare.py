"""Compare OOD scores on the same sets: prepare what each score needs, fit, score, measure.

One in-distribution test set against one or more OOD sets, under one main run (and any
auxiliary runs the scores asked for). A score is fitted on in-distribution data only, then
scored on every set; metrics treat OOD as the positive class. Scores that fit on training
images see the training set; scores that fit on held-out images (``fits_on = "held_out"``,
the typicality test) are *cross-fitted* on the in-distribution test set: fitted on one half
they score the other half and the OOD sets, then fitted on the second half they score the
first. No image is scored by a fit that saw it, and every score is measured on the same sets.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgmood.data.dequantize import DequantMode
from dgmood.data.imageset import ImageSet
from dgmood.data.loading import DataSources
from dgmood.evaluation.metrics import NaNScoresError, OODMetrics, ood_metrics
from dgmood.inference import check_iwae, score_cached
from dgmood.io import Progress
from dgmood.runs import LoadedRun, load_run
from dgmood.scores.base import Score, ScoreInput


@dataclass(frozen=True)
class ScoringOptions:
    """How per-sample statistics are computed (part of every cache key)."""

    dequantization: DequantMode = "uniform"
    seed: int = 0
    batch_size: int = 256
    iwae_k: int = 0
    progress: bool = True


def check_scoring(run: LoadedRun, options: ScoringOptions) -> None:
    """Refuse, before anything is scored, options the run's model cannot score with."""
    check_iwae(run.model, options.iwae_k)


def prepare_input(
    run: LoadedRun,
    imageset: ImageSet,
    aux_runs: Mapping[str, LoadedRun] | None = None,
    options: ScoringOptions | None = None,
) -> ScoreInput:
    """Cached statistics of ``imageset`` under ``run`` (and each auxiliary run) as a ScoreInput."""
    options = options or ScoringOptions()

    def stats_of(which: LoadedRun) -> dict[str, np.ndarray]:
        return score_cached(
            which.model,
            imageset,
            which.run_dir,
            step=which.step,
            batch_size=options.batch_size,
            dequantization=options.dequantization,
            seed=options.seed,
            progress=options.progress,
            iwae_k=options.iwae_k if which is run else 0,
        )

    return ScoreInput(
        stats=stats_of(run),
        images=imageset.images,
        labels=imageset.labels,
        run=run,
        aux_stats={name: stats_of(aux) for name, aux in (aux_runs or {}).items()},
        label=imageset.label,
    )


@dataclass(frozen=True)
class ScoreComparison:
    """One score's metrics for in-distribution test vs one OOD set."""

    score: str
    in_label: str
    ood_label: str
    metrics: OODMetrics
    seconds_per_image: float  # scoring both sets, per image; fit excluded (cross-fits: included)
    in_scores: np.ndarray
    ood_scores: np.ndarray


def compare_scores(
    scores: Sequence[Score],
    in_test: ScoreInput,
    ood_sets: Mapping[str, ScoreInput],
    fit_data: ScoreInput | None = None,
    *,
    confidence: float | None = 0.95,
) -> list[ScoreComparison]:
    """Fit every score (on ``fit_data``, or cross-fitted on ``in_test`` for scores fitted on
    held-out images), score all sets, and measure in-test vs each OOD set."""
    results = []
    for score in scores:
        if score.needs_fit and score.fits_on == "held_out":
            started = time.perf_counter()
            in_values, ood_values_of = cross_fitted_scores(score, in_test, ood_sets)
            # the two fits are included: they are part of scoring here
            seconds_per_image = (time.perf_counter() - started) / (
                len(in_test) + sum(len(d) for d in ood_sets.values())
            )
            for label in ood_sets:
                results.append(
                    ScoreComparison(
                        score=score.name,
                        in_label=in_test.label,
                        ood_label=label,
                        metrics=ood_metrics(in_values, ood_values_of[label], confidence=confidence),
                        seconds_per_image=seconds_per_image,
                        in_scores=in_values,
                        ood_scores=ood_values_of[label],
                    )
                )
            continue
        if score.needs_fit and fit_data is None:
            raise ValueError(f"score {score.name!r} must be fitted: pass fit_data")
        bar = Progress(2 + len(ood_sets), f"{score.name} on {in_test.label} and OOD", "steps")
        if fit_data is not None:
            score.fit(fit_data)
        bar.update()
        started = time.perf_counter()
        in_values = score.score(in_test)
        in_seconds = time.perf_counter() - started
        bar.update()
        for label, data in ood_sets.items():
            started = time.perf_counter()
            ood_values = score.score(data)
            seconds = in_seconds + time.perf_counter() - started
            bar.update()
            try:
                metrics = ood_metrics(in_values, ood_values, confidence=confidence)
            except NaNScoresError as error:
                model = f"{in_test.run.name} ({in_test.run.run_dir})" if in_test.run else "?"
                raise ValueError(
                    f"score {score.name!r} of model {model}, {in_test.label} vs {label}: "
                    f"{error}; no metric can be computed for it"
                ) from None
            results.append(
                ScoreComparison(
                    score=score.name,
                    in_label=in_test.label,
                    ood_label=label,
                    metrics=metrics,
                    seconds_per_image=seconds / (len(in_test) + len(data)),
                    in_scores=in_values,
                    ood_scores=ood_values,
                )
            )
        bar.close()
    return results


def cross_fitted_scores(
    score: Score, in_test: ScoreInput, ood_sets: Mapping[str, ScoreInput]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Scores of a score fitted on held-out in-distribution images, cross-fitted on
    ``in_test``: fitted on its second half, it scores the first half and every OOD set;
    fitted on the first half, the second. The score is left fitted on the first half."""
    half = len(in_test) // 2
    if half < 1:
        raise ValueError(f"score {score.name!r} needs at least 2 in-distribution test images")
    first = in_test.subset(np.arange(half))
    second = in_test.subset(np.arange(half, len(in_test)))
    score.fit(second)
    first_values = score.score(first)
    ood_values = {label: score.score(data) for label, data in ood_sets.items()}
    score.fit(first)
    second_values = score.score(second)
    return np.concatenate([first_values, second_values]), ood_values


def score_dataset(
    run_dir: Path,
    dataset: str,
    split: str = "test",
    *,
    sources: DataSources | None = None,
    limit: int = 0,
    options: ScoringOptions | None = None,
    device: str = "cpu",
    expect_sha256: str | None = None,
) -> tuple[dict[str, np.ndarray], str]:
    """Cached per-sample statistics of ``dataset``/``split`` under the run in ``run_dir``
    (``expect_sha256``: the published SHA-256 of its model file, see :func:`load_run`)."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0 = all), got {limit}")
    run = load_run(run_dir, device, expect_sha256=expect_sha256)
    check_scoring(run, options or ScoringOptions())
    imageset = (sources or DataSources()).load_like(dataset, split, run.config.data).head(limit)
    return dict(prepare_input(run, imageset, options=options).stats), (
        f"{imageset.label} ({len(imageset)} images)"
    )
