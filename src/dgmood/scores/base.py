"""The one contract every OOD score follows, and the registry that lists them.

A score turns what is known about a set of images into one number per image, **higher =
more likely OOD**, as a numpy array. What it may look at is a :class:`ScoreInput`: the
cached per-sample statistics of the main run (``stats``: ``bits_per_dim``, ``log_pz``,
``logits``, ...), the statistics of auxiliary runs it asked for (``aux_stats``: a
background model, ensemble members), the raw uint8 images, their labels, and the main run
itself for scores that must run the model (ODIN's input perturbation, likelihood regret).

A score may ``fit`` on in-distribution data (class means, a one-class model: training
images; the typical set's entropy and thresholds: held-out images the model never trained
on, ``fits_on = "held_out"``); it never sees an OOD set before ``score``. Auxiliary runs
are declared as configs derived from the main run's config (:meth:`Score.aux_runs`);
studies train or reuse them, so a score never trains anything itself.

Adding a score is one module in ``dgmood/scores/`` with a ``@register_score`` class and one
import line in ``dgmood/scores/__init__.py``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor

from dgmood.config import RunConfig
from dgmood.models.base import Capability, ModelKind
from dgmood.runs import LoadedRun

FitData = Literal["train", "held_out"]
Stats = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ScoreInput:
    """Everything a score may look at for one set of images (all aligned by index)."""

    stats: Stats  # per-sample statistics of the main run (dgmood.inference)
    images: Tensor  # uint8 [N, C, H, W] in the main run's format
    labels: Tensor  # int64 [N]; -1 where unlabeled
    run: LoadedRun | None = None  # the main run, for scores that run the model
    aux_stats: Mapping[str, Stats] = field(default_factory=dict)  # aux run name -> statistics
    label: str = ""  # e.g. "mnist-test", for messages

    def __post_init__(self) -> None:
        n = int(self.images.shape[0])
        for key, value in self.stats.items():
            if len(value) != n:
                raise ValueError(f"{self.label}: statistic {key!r} has {len(value)} rows, not {n}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def stat(self, key: str, run: str | None = None) -> np.ndarray:
        """One per-sample statistic as float64 (``run`` names an auxiliary run)."""
        source = self.stats if run is None else self.aux_stats.get(run)
        if source is None:
            raise ValueError(f"no statistics of auxiliary run {run!r} were given")
        if key not in source:
            raise ValueError(
                f"{self.label}: the score needs statistic {key!r}, which this model does not "
                f"produce (it has {sorted(source)})"
            )
        return np.asarray(source[key], dtype=np.float64)

    def subset(self, index: np.ndarray) -> ScoreInput:
        """The images at ``index`` (integer positions) with their statistics."""
        rows = np.asarray(index, dtype=np.int64)
        picked = torch.from_numpy(rows)
        return ScoreInput(
            stats={key: np.asarray(value)[rows] for key, value in self.stats.items()},
            images=self.images[picked],
            labels=self.labels[picked],
            run=self.run,
            aux_stats={
                name: {key: np.asarray(value)[rows] for key, value in stats.items()}
                for name, stats in self.aux_stats.items()
            },
            label=self.label,
        )

    def require_run(self, score: str) -> LoadedRun:
        if self.run is None:
            raise ValueError(f"score {score!r} runs the model: pass the run in ScoreInput.run")
        return self.run


class Score(ABC):
    """An OOD score: optional :meth:`fit` on in-distribution training data, then :meth:`score`.

    Class attributes declare what it needs, so that studies and the CLI can tell whether it
    applies to a run and what to prepare for it.
    """

    name: ClassVar[str]  # registry name, e.g. "nll"
    model_kind: ClassVar[ModelKind] = "density"  # the kind of main run it scores with
    needs_stats: ClassVar[tuple[str, ...]] = ()  # statistics the main run must provide
    uses_model: ClassVar[bool] = False  # runs the model itself (slower, not cached)
    needs_fit: ClassVar[bool] = False  # must see in-distribution data first
    # which in-distribution data `fit` sees: "train" (images the model trained on) or
    # "held_out" (images it never saw: what a typical-set estimate must come from)
    fits_on: ClassVar[FitData] = "train"
    # what the main run's model family must be able to do (its FamilySpec's capabilities)
    requires: ClassVar[frozenset[Capability]] = frozenset()
    # looks at the images alone, never at a model: it applies to every run, and a grid of
    # models shows it once, as a model-free baseline row (dgmood.scores.compressor)
    model_free: ClassVar[bool] = False

    def aux_runs(self, config: RunConfig) -> dict[str, RunConfig]:
        """Auxiliary runs this score needs, as configs derived from the main run's config."""
        return {}

    def fit(self, train: ScoreInput) -> Score:
        """Fit on in-distribution data (training images, or held-out ones when ``fits_on`` is
        ``"held_out"``; default: nothing to fit). Returns self."""
        return self

    @abstractmethod
    def score(self, data: ScoreInput) -> np.ndarray:
        """One float64 score per image, higher = more likely OOD."""

    def network_evaluations(
        self, run: LoadedRun, aux_runs: Mapping[str, LoadedRun] | None = None
    ) -> float | None:
        """Forward passes of model networks per scored image (the benchmark's cost column):
        by default the main run's and each auxiliary run's passes for their cached
        statistics (0 for a model-free score). A score that runs the model itself
        (:attr:`uses_model`) says its own count, or None when it has none to state."""
        if self.model_free:
            return 0.0
        if self.uses_model:
            return None
        runs = [run, *(aux_runs or {}).values()]
        return float(sum(r.model.network_evaluations() for r in runs))

    def applies_to(self, run: LoadedRun) -> bool:
        """Whether this score can be computed with ``run`` as the main run: a model of its
        kind whose family has every capability it :attr:`requires` (a :attr:`model_free`
        score applies to every run)."""
        if self.model_free:
            return True
        return run.spec.kind == self.model_kind and self.requires <= run.capabilities

    @classmethod
    def summary(cls) -> str:
        """First line of the docstring."""
        return (inspect.getdoc(cls) or "").strip().splitlines()[0]

    @classmethod
    def references(cls) -> str:
        """The ``References:`` paragraph of the docstring (one line)."""
        doc = inspect.getdoc(cls) or ""
        _, _, refs = doc.partition("References:")
        return " ".join(refs.split())


_SCORES: dict[str, type[Score]] = {}
S = TypeVar("S", bound=type[Score])


def register_score(cls: S) -> S:
    """Class decorator: make a score available by ``cls.name`` (``dgmood scores``)."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} needs a `name`")
    if "References:" not in (cls.__doc__ or ""):
        raise ValueError(f"score {cls.name!r} needs a `References:` line in its docstring")
    if cls.name in _SCORES and _SCORES[cls.name] is not cls:
        raise ValueError(f"a score named {cls.name!r} is already registered")
    _SCORES[cls.name] = cls
    return cls


def score_names(model_kind: ModelKind | None = None) -> list[str]:
    """Registered score names (of one model kind, if given), in registration order."""
    return [n for n, c in _SCORES.items() if model_kind is None or c.model_kind == model_kind]


def score_class(name: str) -> type[Score]:
    if name not in _SCORES:
        raise ValueError(f"unknown score {name!r}; known: {score_names()}")
    return _SCORES[name]


def make_score(name: str, **params: Any) -> Score:
    """A fresh score object by name, with keyword parameters for its constructor."""
    return score_class(name)(**params)
