"""Model-free rows of a grid: scores that look at the images alone, computed once per pair.

A :attr:`dgmood.scores.base.Score.model_free` score (the compressor alone, ``compressor-png``)
gives the same number whatever the model, so a grid of models shows it once per pair of
sets, as the row of the pseudo-model ``none``: the baseline that every model-based score has
to beat. The images are in the format of the grid's runs (channels, size, padding), so the
compressor sees exactly what the models see.

References: Serra et al., "Input complexity and out-of-distribution detection with
likelihood-based generative models", ICLR 2020 (the compressor as a universal model).
"""

from __future__ import annotations

from collections.abc import Sequence

from dgmood.config import DataConfig
from dgmood.data.datasets import DATASETS
from dgmood.data.imageset import ImageSet
from dgmood.evaluation.compare import ScoreComparison, compare_scores
from dgmood.scores.base import Score, ScoreInput, make_score, score_names
from dgmood.studies.base import StudyContext


def image_input(imageset: ImageSet) -> ScoreInput:
    """A :class:`ScoreInput` of images alone (no model, no statistics)."""
    return ScoreInput({}, imageset.images, imageset.labels, label=imageset.label)


def model_free_scores(names: Sequence[str]) -> list[Score]:
    """The model-free scores among ``names`` (every registered one when ``names`` is empty)."""
    scores = [make_score(n) for n in (names or score_names())]
    return [s for s in scores if s.model_free]


def model_free_format(ctx: StudyContext, in_dataset: str, models: Sequence[str]) -> DataConfig:
    """The image format of a grid's runs on ``in_dataset`` (its first model's data config),
    or, for a grid of model-free scores alone, the format any run on it would have: native
    channels at 32x32 (28x28 sets zero-padded)."""
    if models:
        return ctx.run_config(models[0], in_dataset, kind=None).data
    channels = DATASETS[in_dataset].channels if in_dataset in DATASETS else 3
    return DataConfig(dataset=in_dataset, channels=channels)


def model_free_comparisons(
    ctx: StudyContext,
    in_dataset: str,
    ood: Sequence[str],
    scores: Sequence[Score],
    like: DataConfig,
    train_limit: int = 10_000,
) -> list[ScoreComparison]:
    """``scores`` (model-free) on ``in_dataset`` test vs each OOD set, in ``like``'s format;
    each comparison's OOD label is the set's name, as the grid's other rows have it."""
    if not scores:
        return []
    for score in scores:
        if not score.model_free:
            raise ValueError(f"score {score.name!r} needs a model: it has no model-free row")
    with ctx.timed("model-free scores"):
        in_test = image_input(ctx.load_set(in_dataset, like.val_split, like))
        ood_inputs = {name: image_input(ctx.load_set(name, "test", like)) for name in ood}
        fit = None
        if any(s.needs_fit for s in scores):
            fit = image_input(ctx.load_set(in_dataset, like.train_split, like, train_limit))
        return compare_scores(scores, in_test, ood_inputs, fit)
