"""A tiny study context: tiny preset, 2 training steps, 32 images per set, no progress bars."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgmood.studies import StudyContext


@pytest.fixture
def tiny_ctx(tmp_path: Path, mirror: Path) -> StudyContext:
    return StudyContext(out_dir=tmp_path / "out", preset="tiny", steps=2, limit=32, progress=False)
