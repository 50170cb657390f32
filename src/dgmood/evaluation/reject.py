"""The post's "simple algorithm": model p(x) too, and only predict when x is probable.

A :class:`RejectRule` is a threshold on one OOD score (higher = more OOD) fitted on
in-distribution *validation* images so that a chosen fraction of them (default 95%) is
accepted; a new input scoring above it is rejected as OOD, and its percentile among the
validation scores says how unusual it is. The rule is fitted once per detector run and stored
in the run as ``thresholds/<score>-<hash>.json`` (the hash covers the score, the accepted
fraction, the validation and fit images and the scoring options); it is reused while the
run's step is unchanged and refitted when the run was trained further.

References: "Passing a chicken through an MNIST model" (2018), section "Modeling the data
p(x)"; Nalisnick et al., ICLR 2019 (why the score matters: -log p(x) alone can fail).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from dgmood.data.imageset import ImageSet
from dgmood.evaluation.compare import ScoringOptions, prepare_input
from dgmood.inference import images_fingerprint, score_images
from dgmood.io import atomic_write_text
from dgmood.pretrained import writable_run_dir
from dgmood.runs import LoadedRun, run_subdir
from dgmood.scores.base import Score, ScoreInput, make_score

THRESHOLDS_DIR = "thresholds"  # inside the detector's run directory


@dataclass(frozen=True)
class RejectRule:
    """Reject an input when its score exceeds the ``accept`` quantile of validation scores."""

    score: str  # registry name of the score
    accept: float  # fraction of in-distribution validation images accepted
    threshold: float  # reject when score > threshold
    validation: str  # label of the validation set, e.g. "mnist-test"
    n: int  # validation images
    step: int  # training step of the detector run the rule was fitted at
    validation_scores: np.ndarray = field(repr=False)  # sorted, for percentiles

    def decide(self, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """``(rejected, percentile)`` per input: above the threshold, and the percentage of
        validation images scoring at most as high (100 = more OOD than every one of them)."""
        values = np.asarray(scores, dtype=np.float64).ravel()
        if not np.isfinite(values).all():
            raise ValueError(f"score {self.score!r} returned NaN or inf for some inputs")
        rank = np.searchsorted(self.validation_scores, values, side="right")
        return values > self.threshold, 100.0 * rank / self.n

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["validation_scores"] = [float(v) for v in self.validation_scores]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RejectRule:
        data = dict(values)
        data["validation_scores"] = np.asarray(data["validation_scores"], dtype=np.float64)
        return cls(**data)


def rule_from_scores(
    validation_scores: ArrayLike,
    score: str,
    accept: float = 0.95,
    *,
    validation: str = "",
    step: int = 0,
) -> RejectRule:
    """The rule that accepts ``ceil(accept * n)`` of the ``n`` validation scores (all distinct)."""
    if not 0 < accept <= 1:
        raise ValueError(f"the accepted fraction must be in (0, 1], got {accept}")
    values = np.sort(np.asarray(validation_scores, dtype=np.float64).ravel())
    if values.size == 0:
        raise ValueError("a reject rule needs at least one validation image")
    if not np.isfinite(values).all():
        raise ValueError(f"score {score!r} returned NaN or inf on validation images")
    # the k-th smallest score as threshold: exactly k images are at or below it (without ties)
    k = max(1, math.ceil(accept * values.size - 1e-9))
    return RejectRule(score, accept, float(values[k - 1]), validation, values.size, step, values)


def _rule_key(
    score: Score,
    accept: float,
    validation: ImageSet,
    fit_data: ImageSet | None,
    options: ScoringOptions,
) -> str:
    parts = {
        "score": score.name,
        "accept": accept,
        "validation": [validation.label, images_fingerprint(validation.images)],
        "fit": [fit_data.label, images_fingerprint(fit_data.images)]
        if fit_data is not None and score.needs_fit
        else None,
        "scoring": [options.dequantization, options.seed, options.iwae_k],
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def check_detector_data(classifier_dir: Path, detector_dir: Path) -> None:
    """Refuse a detector trained on other data than the classifier it guards: its
    likelihoods describe other images, so its rule would accept or reject at random."""
    from dgmood.config import RunConfig
    from dgmood.runs import MODEL_FILE, read_model_metadata

    def dataset(run_dir: Path) -> str | None:  # None: loading the run says what is wrong
        if not (run_dir / MODEL_FILE).is_file():
            return None
        return RunConfig.from_yaml(read_model_metadata(run_dir / MODEL_FILE)["config"]).data.dataset

    classifier, detector = dataset(classifier_dir), dataset(detector_dir)
    if classifier is not None and detector is not None and classifier != detector:
        raise ValueError(
            f"the detector {detector_dir} was trained on {detector}, the classifier "
            f"{classifier_dir} on {classifier}: the detector knows nothing of the classifier's "
            f"data; use a density run trained on {classifier} (e.g. `dgmood train vae --dataset "
            f"{classifier}`), or pass --force-detector to use it anyway"
        )


def rule_path(
    detector_run: LoadedRun,
    score: Score,
    accept: float,
    validation: ImageSet,
    fit_data: ImageSet | None = None,
    options: ScoringOptions | None = None,
) -> Path:
    """Where the rule of these settings is stored in the detector's run directory."""
    key = _rule_key(score, accept, validation, fit_data, options or ScoringOptions())
    folder = writable_run_dir(detector_run.run_dir)  # a pretrained run's is in the data dir
    return run_subdir(folder, THRESHOLDS_DIR) / f"{score.name}-{key}.json"


def _stored_rule(path: Path, step: int) -> RejectRule | None:
    if not path.exists():
        return None
    try:
        rule = RejectRule.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError, ValueError):
        return None  # unreadable: refitted and overwritten
    return rule if rule.step == step else None


def _checked_score(detector_run: LoadedRun, score: str | Score) -> Score:
    chosen = make_score(score) if isinstance(score, str) else score
    if not chosen.applies_to(detector_run):
        raise ValueError(
            f"score {chosen.name!r} does not apply to {detector_run.name} ({detector_run.run_dir})"
        )
    if chosen.aux_runs(detector_run.config):
        raise ValueError(
            f"score {chosen.name!r} needs auxiliary runs; a reject rule uses a score of the "
            "detector alone (e.g. nll)"
        )
    return chosen


def fit_reject_rule(
    detector_run: LoadedRun,
    score: str | Score,
    validation: ImageSet,
    accept: float = 0.95,
    *,
    fit_data: ImageSet | None = None,
    options: ScoringOptions | None = None,
) -> RejectRule:
    """The rule of ``score`` under ``detector_run``, fitted on ``validation`` or reused.

    A score that must be fitted (``needs_fit``) is fitted on ``fit_data``: in-distribution
    training images, or held-out ones (not ``validation``) for a score with ``fits_on ==
    "held_out"``; pass the same :class:`Score` object to :class:`Detector` to score new
    inputs with it.
    """
    options = options or ScoringOptions(progress=False)
    chosen = _checked_score(detector_run, score)
    if chosen.needs_fit:
        if fit_data is None:
            raise ValueError(f"score {chosen.name!r} must be fitted: pass fit_data")
        chosen.fit(prepare_input(detector_run, fit_data, options=options))
    path = rule_path(detector_run, chosen, accept, validation, fit_data, options)
    stored = _stored_rule(path, detector_run.step)
    if stored is not None:
        return stored
    values = chosen.score(prepare_input(detector_run, validation, options=options))
    rule = rule_from_scores(
        values, chosen.name, accept, validation=validation.label, step=detector_run.step
    )
    atomic_write_text(path, json.dumps(rule.to_dict(), indent=1))
    return rule


@dataclass
class Detector:
    """A density run, a (fitted) score and its reject rule: screens new images."""

    run: LoadedRun
    score: Score
    rule: RejectRule
    path: Path  # where the rule is stored
    options: ScoringOptions = field(default_factory=lambda: ScoringOptions(progress=False))

    def scores(self, images: Tensor, label: str = "inputs") -> np.ndarray:
        """The score of uint8 ``images`` in the detector's format (not cached)."""
        stats = score_images(
            self.run.density_model(),
            images,
            batch_size=self.options.batch_size,
            dequantization=self.options.dequantization,
            seed=self.options.seed,
            progress=False,
            iwae_k=self.options.iwae_k,
        )
        labels = torch.full((len(images),), -1, dtype=torch.long)
        return self.score.score(ScoreInput(stats, images, labels, self.run, label=label))

    def screen(self, images: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores, rejected, percentile)`` of uint8 ``images``."""
        values = self.scores(images)
        rejected, percentile = self.rule.decide(values)
        return values, rejected, percentile


def make_detector(
    detector_run: LoadedRun,
    score: str | Score,
    validation: ImageSet,
    accept: float = 0.95,
    *,
    fit_data: ImageSet | None = None,
    options: ScoringOptions | None = None,
) -> Detector:
    """:func:`fit_reject_rule` plus what it takes to score new inputs."""
    options = options or ScoringOptions(progress=False)
    chosen = _checked_score(detector_run, score)
    rule = fit_reject_rule(
        detector_run, chosen, validation, accept, fit_data=fit_data, options=options
    )
    path = rule_path(detector_run, chosen, accept, validation, fit_data, options)
    return Detector(detector_run, chosen, rule, path, options)
