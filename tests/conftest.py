"""Shared fixtures: the real MNIST / Fashion-MNIST files through the project's mirror logic."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from dgmood.data.sources import MIRROR_ENV


def pytest_configure(config: pytest.Config) -> None:
    # The suite runs many small ops; one intra-op thread avoids OpenMP spin-waiting, which
    # slows small ops 10-20x whenever the 2 cores are shared with anything else.
    torch.set_num_threads(1)
    # Ctrl-C as at a terminal: a shell starts background jobs (`cmd &`, nohup, some CI
    # runners) with SIGINT ignored, which Python and every process it starts inherit; the
    # tests that press Ctrl-C, in this process or in a child, need it delivered. A handler
    # installed here is reset to the default on exec, so children get Python's default too.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The local mirror of raw dataset files ($DGMOOD_MIRROR; `./dev test` sets it)."""
    value = os.environ.get(MIRROR_ENV)
    if not value:
        pytest.fail(
            f"${MIRROR_ENV} is not set: run the suite with `./dev test`, or point it at "
            "a folder holding mnist/ and fashion-mnist/ raw files"
        )
    return Path(value)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory shared by the whole session (datasets extracted once)."""
    return tmp_path_factory.mktemp("dgmood-data")


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("DGMOOD_DATA", str(data_dir))
    torch.manual_seed(0)
