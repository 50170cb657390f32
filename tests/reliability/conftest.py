"""Shared pieces of the reliability suite: a tiny, fast glow run and real child processes."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from dgmood.config import DataConfig, RunConfig, TrainConfig
from dgmood.data.datasets import ImageSet
from dgmood.data.loading import DataSources
from dgmood.models.registry import resolve_model
from dgmood.training import train

TINY_DATA = DataConfig(dataset="fashion-mnist", train_limit=64, val_size=16)


def tiny_glow(steps: int = 12, **train_overrides: Any) -> RunConfig:
    """A glow small enough that one step takes ~40 ms on one CPU thread."""
    model = dataclasses.replace(resolve_model("glow", "tiny"), n_steps=2, hidden_channels=8)
    settings: dict[str, Any] = dict(
        steps=steps, batch_size=8, warmup_steps=2, eval_every=6, checkpoint_every=1, log_every=1
    )
    settings.update(train_overrides)
    return RunConfig(model=model, data=TINY_DATA, train=TrainConfig(**settings))


@dataclasses.dataclass(frozen=True)
class TinyData:
    train_set: ImageSet
    val_set: ImageSet


@pytest.fixture(scope="session")
def tiny_data(mirror: Path, data_dir: Path) -> TinyData:
    sources = DataSources(data_dir=str(data_dir), mirror=str(mirror))
    return TinyData(
        sources.load_like("fashion-mnist", "train", TINY_DATA).head(64),
        sources.load_like("fashion-mnist", "test", TINY_DATA).head(16),
    )


def train_tiny(config: RunConfig, run_dir: Path, data: TinyData, resume: bool = False) -> None:
    """Train ``config`` into ``run_dir`` on the tiny data sets, quietly."""
    train(
        config, run_dir, resume=resume, progress=False, train_set=data.train_set,
        val_set=data.val_set,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Path:
    """A finished 3-step tiny Glow run, trained once per test module: copy it to alter it."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train_tiny(tiny_glow(steps=3), run_dir, tiny_data)
    return run_dir


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> Path:
    """A copy of :func:`trained` this test may alter."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_bit_identical(a: Path, b: Path) -> None:
    """Every tensor of safetensors files ``a`` and ``b`` is equal, bit for bit."""
    first, second = tensors_of(a), tensors_of(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _run_child(target: Callable[..., Any], args: tuple[Any, ...], error_file: Path) -> None:
    try:
        target(*args)
    except BaseException as error:  # report any failure to the parent, then exit 3
        error_file.write_text(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        os._exit(3)
    os._exit(0)


class Child:
    """``target(*args)`` in a real forked process (torch and the data already loaded)."""

    def __init__(self, target: Callable[..., Any], *args: Any, error_file: Path) -> None:
        self.error_file = error_file
        error_file.unlink(missing_ok=True)
        context = multiprocessing.get_context("fork")
        self.process = context.Process(target=_run_child, args=(target, args, error_file))
        self.process.start()

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, exactly like the OOM killer or a power cut."""
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)

    def wait(self, timeout: float = 120) -> int:
        self.process.join(timeout)
        assert self.process.exitcode is not None, "child did not finish"
        return self.process.exitcode

    @property
    def error(self) -> str:
        return self.error_file.read_text() if self.error_file.exists() else ""
