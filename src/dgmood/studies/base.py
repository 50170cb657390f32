"""The study contract: one question of the paper or the post, answered end to end.

A study declares its parameters (a frozen ``Options`` dataclass), obtains the runs it needs
through its :class:`StudyContext` (trained on demand, reused when finished, resumed when
asked), scores the sets it compares, and returns a :class:`StudyResult` (tables as data,
figures as files, a one-line finding). ``dgmood reproduce NAME`` is a loop over registered
studies; it is resumable because runs and score caches are reused.

Adding a study is one module in ``dgmood/studies/`` with a ``@register_study`` class and one
import line in ``dgmood/studies/__init__.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from dgmood.config import DataConfig, RunConfig, apply_overrides, replace_path, with_budget
from dgmood.data.imageset import ImageSet
from dgmood.data.loading import DataSources
from dgmood.evaluation.compare import ScoreComparison
from dgmood.evaluation.metrics import OODMetrics
from dgmood.reporting.result import Cell, StudyResult, Table
from dgmood.runs import LoadedRun, load_run
from dgmood.training.loop import train_or_reuse

RUNS_DIR = "runs"  # a study's runs live in OUT_DIR/runs/<role>


@dataclass
class StudyContext:
    """Where a study writes, where data comes from, and how big its runs are."""

    out_dir: Path
    sources: DataSources = field(default_factory=DataSources)
    preset: str = "cpu"  # size preset of the runs it trains: tiny, cpu or paper
    steps: int | None = None  # override the training steps of every run it trains
    # train every run for this wall time (then, without ``steps``, until it runs out)
    budget_minutes: float = 0.0
    overrides: tuple[str, ...] = ()  # KEY=VALUE config overrides of every run it trains
    limit: int = 0  # cap each evaluated set at N images (0 = all)
    device: str | None = None  # torch device for training (default: cuda if available)
    resume: bool = False  # continue interrupted runs instead of refusing
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"--limit must be >= 0 (0 = all), got {self.limit}")

    def run_dir(self, role: str) -> Path:
        return self.out_dir / RUNS_DIR / role

    def run_config(self, config: RunConfig) -> RunConfig:
        """``config`` as this context trains it: overrides, steps and budget applied."""
        config = apply_overrides(config, self.overrides)
        if self.budget_minutes > 0:
            return with_budget(config, self.budget_minutes, self.steps)
        if self.steps is not None:
            return replace_path(config, "train.steps", self.steps)
        return config

    def obtain_run(self, role: str, config: RunConfig) -> LoadedRun:
        """The finished run ``role`` of ``config``: reused if done, else trained (or resumed)."""
        config = self.run_config(config)
        with self.timed(f"train {role}"):
            train_or_reuse(
                config,
                self.run_dir(role),
                sources=self.sources,
                resume=self.resume,
                device=self.device,
                progress=self.progress,
            )
        return load_run(self.run_dir(role))

    def load_set(
        self, name: str, split: str, like: DataConfig, limit: int | None = None
    ) -> ImageSet:
        """Dataset ``name``/``split`` in the format of a run's data, capped at ``limit``."""
        return self.sources.load_like(name, split, like).head(
            self.limit if limit is None else limit
        )

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - started


OptionsT = TypeVar("OptionsT")


class Study(ABC, Generic[OptionsT]):
    """One question, answered by :meth:`run`; parameters in a frozen ``Options`` dataclass."""

    name: ClassVar[str]  # registry name: `dgmood reproduce NAME`
    title: ClassVar[str]  # the question, as a heading
    Options: ClassVar[type]

    def __init__(self, options: OptionsT | None = None) -> None:
        self.options: OptionsT = options if options is not None else self.Options()

    @abstractmethod
    def run(self, ctx: StudyContext) -> StudyResult:
        """Obtain runs, score sets, compare; return tables, figures and the finding."""

    def result(self, ctx: StudyContext, finding: str, **parts: Any) -> StudyResult:
        """A StudyResult with this study's name, title, options, timings and environment."""
        return StudyResult(
            study=self.name,
            title=self.title,
            finding=finding,
            settings=dataclasses.asdict(self.options),  # type: ignore[call-overload]
            timings=dict(ctx.timings),
            environment=environment(),
            **parts,
        )

    @classmethod
    def with_options(cls, overrides: Sequence[str] = (), **values: Any) -> Study[Any]:
        """A study with ``Options`` overridden by ``key=value`` strings (YAML-parsed) and kwargs."""
        options = cls.Options(**values)
        for assignment in overrides:
            key, sep, value = assignment.partition("=")
            if not sep:
                raise ValueError(f"study options are KEY=VALUE, got {assignment!r}")
            options = replace_path(options, key.strip(), value)
        return cls(options)


def environment() -> dict[str, str]:
    """Package versions and the device, for the record."""
    import numpy

    import dgmood

    info = {
        "dgmood": dgmood.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "torch threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    return info


_STUDIES: dict[str, type[Study[Any]]] = {}
T = TypeVar("T", bound=type[Study[Any]])


def register_study(cls: T) -> T:
    """Class decorator: make a study available as ``dgmood reproduce NAME``."""
    if cls.name in _STUDIES and _STUDIES[cls.name] is not cls:
        raise ValueError(f"a study named {cls.name!r} is already registered")
    _STUDIES[cls.name] = cls
    return cls


def study_names() -> list[str]:
    return list(_STUDIES)


def study_class(name: str) -> type[Study[Any]]:
    if name not in _STUDIES:
        raise ValueError(f"unknown study {name!r}; known: {study_names()}")
    return _STUDIES[name]


# --- helpers shared by studies ---------------------------------------------------------


def metric_cells(m: OODMetrics) -> list[Cell]:
    """AUROC [CI], AUPR-in, AUPR-out, FPR@95 (both conventions) as table cells."""
    low, high = m.ci.get("auroc", (None, None))  # no interval computed: empty cells
    return [m.auroc, low, high, m.aupr_in, m.aupr_out, m.fpr95_in, m.fpr95_out]


METRIC_COLUMNS = [
    "AUROC",
    "AUROC 95% CI low",
    "AUROC 95% CI high",
    "AUPR (in positive)",
    "AUPR (OOD positive)",
    "FPR@95TPR (in positive)",
    "FPR@95TPR (OOD positive)",
]
METRICS_CAPTION = (
    "Higher score = more OOD. AUROC with a bootstrap 95% confidence interval. FPR@95TPR "
    "(in positive): fraction of OOD accepted when 95% of in-distribution is accepted (the "
    "convention of Hendrycks & Gimpel, ODIN, energy, OpenOOD). FPR@95TPR (OOD positive): "
    "fraction of in-distribution flagged when 95% of OOD is flagged (pytorch-ood)."
)


def metrics_table(comparisons: Sequence[ScoreComparison], name: str = "ood_metrics") -> Table:
    """One row per (score, OOD set): metrics with CIs and the scoring cost per image."""
    rows: list[list[Cell]] = [
        [c.score, c.in_label, c.ood_label, *metric_cells(c.metrics), c.seconds_per_image * 1e3]
        for c in comparisons
    ]
    return Table(
        name=name,
        title="OOD detection metrics",
        columns=["score", "in-distribution", "OOD", *METRIC_COLUMNS, "ms per image"],
        rows=rows,
        caption=METRICS_CAPTION,
    )


def require_kind(config: RunConfig, kind: str) -> None:
    """Refuse, before any training, a config whose model is not a ``kind`` model."""
    from dgmood.models.base import Classifier, DensityModel
    from dgmood.models.registry import build_model

    wanted = {"density": DensityModel, "classifier": Classifier}[kind]
    model = build_model(config.model, config.data)
    if not isinstance(model, wanted):
        examples = {
            "density": "glow, cv-glow, realnvp, pixelcnnpp or a vae",
            "classifier": "cnn or cnn-plain",
        }[kind]
        raise ValueError(
            f"{config.preset or type(config.model).family} is not a {kind} model; choose {examples}"
        )
