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
import functools
import platform
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from dgmood import pretrained
from dgmood.config import DataConfig, RunConfig, apply_overrides, replace_path, with_budget
from dgmood.data.imageset import ImageSet
from dgmood.data.loading import DataSources
from dgmood.evaluation.compare import ScoreComparison, ScoringOptions, prepare_input
from dgmood.evaluation.metrics import OODMetrics
from dgmood.models.base import Capability, ModelKind
from dgmood.models.registry import require
from dgmood.presets import run_preset
from dgmood.reporting.result import Cell, StudyResult, Table
from dgmood.runs import CONFIG_FILE, LoadedRun, load_run
from dgmood.scores.base import ScoreInput
from dgmood.training.launch import train_or_reuse

RUNS_DIR = "runs"  # a study's runs live in OUT_DIR/runs/<name>-<dataset>-<identity hash>


def run_dir_name(config: RunConfig) -> str:
    """``<preset or family>-<dataset>-<identity hash>``: readable, and unique per identity."""
    what = (config.preset or type(config.model).family).replace("/", "-")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{what}-{config.data.dataset}").strip("_.")
    return f"{readable[:60]}-{config.identity_hash()}"


def shipped_identities() -> dict[str, str]:
    """Identity hash -> ``pretrained:NAME`` of every run shipped with dgmood (read from
    their ``config.yaml`` files alone; the weights are verified when a run is loaded)."""
    return _identities(pretrained.MANIFEST_FILE, tuple(pretrained.names()))


@functools.cache
def _identities(manifest: Path, names: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in names:
        config = RunConfig.load(pretrained.get(name).path / CONFIG_FILE)
        found.setdefault(config.identity_hash(), f"{pretrained.PREFIX}{name}")
    return found


@dataclass
class StudyContext:
    """Where a study writes, where data come from, how big its runs are and how they run.

    Runs are found by what they are: :meth:`obtain` trains a config into
    ``runs_dir/<name>-<dataset>-<identity hash>`` or reuses the finished run there, so two
    studies (or two steps of one) that ask for the same model, data and training share it.
    """

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
    runs_root: Path | None = None  # where runs live (default OUT_DIR/runs); shared by studies
    nproc: int = 1  # data-parallel training processes per run (torch's launcher when > 1)
    # identity hash -> ``pretrained:NAME`` of each shipped run a step asked for
    shipped: dict[str, str] = field(default_factory=dict)
    # reuse a shipped run whose identity (model + data + training) equals a config a step
    # asks for, instead of training it again (``--no-pretrained``: always train)
    use_pretrained: bool = True
    announced: set[str] = field(default_factory=set)  # shipped runs found by identity, said

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"--limit must be >= 0 (0 = all), got {self.limit}")

    @property
    def runs_dir(self) -> Path:
        return self.runs_root or self.out_dir / RUNS_DIR

    def run_config(
        self,
        model: str,
        dataset: str,
        *,
        kind: ModelKind | None = "density",
        needs: Sequence[Capability] = (),
        what: str = "",
        preset: str | None = None,
    ) -> RunConfig:
        """The config of ``model`` (a family or alias) on ``dataset`` at this context's preset,
        with its overrides, steps and budget applied; a model that is not a ``kind`` model
        with every capability in ``needs`` is refused here, before anything is trained
        (``kind=None``: a model of any kind).

        ``model`` may also name a shipped run, ``pretrained:NAME`` (``dgmood pretrained``):
        its own config, checked for kind, capabilities and training set; :meth:`obtain` then
        uses the shipped run as it is (it is never trained or written to), unless this
        context's overrides change what it is (e.g. ``--steps``): then that run is trained.

        With :attr:`use_pretrained` (the default), any config whose run has the identity of
        a shipped run (same model, data and training: e.g. ``glow`` on ``cifar10`` at the
        ``cpu`` preset and ``pretrained:glow-cifar10``) is that shipped run, as if it had
        been named (:meth:`shipped_run`); the report's runs section names it.
        """
        if pretrained.is_reference(model):
            folder = pretrained.resolve_run_dir(model)
            config = RunConfig.load(folder / CONFIG_FILE)
            if kind is not None:
                require(config.model, kind, *needs, what=what)
            if config.data.dataset != dataset:
                raise ValueError(
                    f"{model} was trained on {config.data.dataset}, not {dataset}; choose "
                    f"a pretrained run of {dataset} (`dgmood pretrained`) or a model name"
                )
            self.shipped[config.identity_hash()] = model
            return self.configure(config)
        config = run_preset(model, preset or self.preset, dataset)
        if kind is not None:
            require(config.model, kind, *needs, what=what)
        return self.configure(config)

    def configure(self, config: RunConfig) -> RunConfig:
        """``config`` with this context's overrides, steps, budget and device (idempotent)."""
        config = apply_overrides(config, self.overrides)
        if self.budget_minutes > 0:
            config = with_budget(config, self.budget_minutes, self.steps)
        elif self.steps is not None:
            config = replace_path(config, "train.steps", self.steps)
        if self.device:
            config = replace_path(config, "execution.device", self.device)
        return config

    def shipped_run(self, config: RunConfig) -> str | None:
        """``pretrained:NAME`` of the shipped run that ``config`` (configured) is: one named
        by :meth:`run_config`, or, with :attr:`use_pretrained`, any of the same identity."""
        identity = config.identity_hash()
        named = self.shipped.get(identity)
        if named is not None or not self.use_pretrained:
            return named
        return shipped_identities().get(identity)

    def run_dir(self, config: RunConfig) -> Path:
        """Where the run of ``config`` (configured by :meth:`configure`) lives: a shipped
        run's own folder when it is one (:meth:`shipped_run`)."""
        shipped = self.shipped_run(config)
        if shipped is not None:
            return pretrained.resolve_run_dir(shipped)
        return self.runs_dir / run_dir_name(config)

    def obtain(self, config: RunConfig) -> LoadedRun:
        """The finished run of ``config``: reused if done, else trained (or resumed)."""
        config = self.configure(config)
        shipped = self.shipped_run(config)
        if shipped is not None:
            if shipped not in self.shipped.values() and shipped not in self.announced:
                # found by identity, not named: say so once, before the step's work
                self.announced.add(shipped)
                print(
                    f"using {shipped}: the {run_dir_name(config)} run this study asks for "
                    "(same model, data and training; --no-pretrained trains it instead)",
                    file=sys.stderr,
                    flush=True,
                )
            return load_run(shipped)  # finished, verified against its sha256, never written to
        run_dir = self.run_dir(config)
        with self.timed(f"train {run_dir.name}"):
            train_or_reuse(
                config,
                run_dir,
                sources=self.sources,
                resume=self.resume,
                progress=self.progress,
                nproc=self.nproc,
            )
        return load_run(run_dir)

    def obtain_model(
        self,
        model: str,
        dataset: str,
        *,
        kind: ModelKind = "density",
        needs: Sequence[Capability] = (),
        what: str = "",
    ) -> LoadedRun:
        """:meth:`run_config` then :meth:`obtain`: the usual first step of a study
        (``model`` may name a shipped run, ``pretrained:NAME``)."""
        return self.obtain(self.run_config(model, dataset, kind=kind, needs=needs, what=what))

    def model_run_dir(self, model: str, dataset: str) -> Path:
        """Where the run :meth:`obtain_model` gives for ``model`` on ``dataset`` lives."""
        return self.run_dir(self.run_config(model, dataset))

    def score_input(
        self,
        run: LoadedRun,
        imageset: ImageSet,
        aux_runs: Mapping[str, LoadedRun] | None = None,
        options: ScoringOptions | None = None,
    ) -> ScoreInput:
        """The (cached) statistics of ``imageset`` under ``run`` and its auxiliary runs: what
        every score takes (:meth:`dgmood.scores.base.Score.score`)."""
        options = options or ScoringOptions(progress=self.progress)
        with self.timed("score sets"):
            return prepare_input(run, imageset, aux_runs, options)

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

    from dgmood._version import __version__

    info = {
        "dgmood": __version__,
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
