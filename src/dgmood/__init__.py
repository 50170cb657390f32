"""dgmood: out-of-distribution detection with deep generative models.

Reproduces Nalisnick et al. 2019, "Do Deep Generative Models Know What They Don't Know?"
and benchmarks the OOD scores that came after it.

The public API is the names below; each is imported on first use, so ``import dgmood`` (and
the ``dgmood`` command) stays light::

    import dgmood

    config = dgmood.run_preset("glow", "tiny", "fashion-mnist")
    result = dgmood.train(config, "runs/example", sources=dgmood.DataSources(download=True))
    run = dgmood.load_run("runs/example")
    mnist = dgmood.DataSources(download=True).load_like("mnist", "test", run.config.data)
    stats = dgmood.score_images(run.model, mnist.images[:256])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dgmood._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    # data
    "DataSources": "dgmood.data.loading",
    "ImageSet": "dgmood.data.imageset",
    "load_dataset": "dgmood.data.datasets",
    "DatasetSpec": "dgmood.data.registry",
    "LoadRequest": "dgmood.data.registry",
    "register_dataset": "dgmood.data.registry",
    # configs and presets
    "RunConfig": "dgmood.config",
    "ModelConfig": "dgmood.config",
    "DataConfig": "dgmood.config",
    "run_preset": "dgmood.presets",
    # models and their families
    "Capability": "dgmood.models.base",
    "DensityModel": "dgmood.models.base",
    "Classifier": "dgmood.models.base",
    "InputSpec": "dgmood.models.base",
    "FamilySpec": "dgmood.models.base",
    "register_family": "dgmood.models.registry",
    "build_model": "dgmood.models.registry",
    # training and runs
    "train": "dgmood.training.loop",
    "train_processes": "dgmood.training.launch",
    "load_run": "dgmood.runs",
    "LoadedRun": "dgmood.runs",
    # scoring
    "score_images": "dgmood.inference",
    "Score": "dgmood.scores.base",
    "ScoreInput": "dgmood.scores.base",
    "make_score": "dgmood.scores.base",
    "register_score": "dgmood.scores.base",
    "ood_metrics": "dgmood.evaluation.metrics",
    # studies and their results
    "Study": "dgmood.studies.base",
    "StudyContext": "dgmood.studies.base",
    "register_study": "dgmood.studies.base",
    "run_study": "dgmood.studies.runner",
    "StudyResult": "dgmood.reporting.result",
    "Table": "dgmood.reporting.result",
}

__all__ = [
    "__version__",
    "Capability",
    "Classifier",
    "DataConfig",
    "DataSources",
    "DatasetSpec",
    "DensityModel",
    "FamilySpec",
    "ImageSet",
    "InputSpec",
    "LoadRequest",
    "LoadedRun",
    "ModelConfig",
    "RunConfig",
    "Score",
    "ScoreInput",
    "Study",
    "StudyContext",
    "StudyResult",
    "Table",
    "build_model",
    "load_dataset",
    "load_run",
    "make_score",
    "ood_metrics",
    "register_dataset",
    "register_family",
    "register_score",
    "register_study",
    "run_preset",
    "run_study",
    "score_images",
    "train",
    "train_processes",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dgmood' has no attribute {name!r}")
    if name in ("register_dataset", "load_dataset", "DatasetSpec", "LoadRequest"):
        importlib.import_module("dgmood.data.datasets")  # the built-in datasets register
    if name in ("make_score", "register_score", "Score", "ScoreInput"):
        importlib.import_module("dgmood.scores")  # the built-in scores register on import
    if name in ("run_study", "Study", "StudyContext", "register_study"):
        importlib.import_module("dgmood.studies")  # the built-in studies register on import
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from dgmood.config import DataConfig, ModelConfig, RunConfig
    from dgmood.data.datasets import load_dataset
    from dgmood.data.imageset import ImageSet
    from dgmood.data.loading import DataSources
    from dgmood.data.registry import DatasetSpec, LoadRequest, register_dataset
    from dgmood.evaluation.metrics import ood_metrics
    from dgmood.inference import score_images
    from dgmood.models.base import Capability, Classifier, DensityModel, FamilySpec, InputSpec
    from dgmood.models.registry import build_model, register_family
    from dgmood.presets import run_preset
    from dgmood.reporting.result import StudyResult, Table
    from dgmood.runs import LoadedRun, load_run
    from dgmood.scores.base import Score, ScoreInput, make_score, register_score
    from dgmood.studies.base import Study, StudyContext, register_study
    from dgmood.studies.runner import run_study
    from dgmood.training.launch import train_processes
    from dgmood.training.loop import train
