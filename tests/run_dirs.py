"""Finding a study's runs on disk, as a user would: by the readable part of their name."""

from __future__ import annotations

import re
from pathlib import Path


def find_run(runs_dir: Path, name: str) -> Path:
    """The one run directory ``runs_dir/<name>-<12 hex digits>`` (``name``: preset-dataset,
    e.g. ``glow-tiny-fashion-mnist``)."""
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{12}(-staged)?")
    found = [p for p in Path(runs_dir).iterdir() if pattern.fullmatch(p.name)]
    assert len(found) == 1, f"{name}: {sorted(p.name for p in Path(runs_dir).iterdir())}"
    return found[0]
