"""Every run directory below a folder, with its status: what ``dgmood runs`` prints.

Reads only ``config.yaml``, the JSON header of ``model.safetensors`` and ``metrics.jsonl``
(no model is built, no weights are read), so listing hundreds of runs is quick.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dgmood.config import UNTIL_BUDGET
from dgmood.runs import CONFIG_FILE, METRICS_FILE, MODEL_FILE, is_finished

SKIPPED_DIRS = {".venv", "venv", "node_modules", "__pycache__", ".git", "scores"}
DONE, INTERRUPTED, FAILED, UNREADABLE = "done", "interrupted", "failed", "unreadable"


@dataclass(frozen=True)
class RunSummary:
    """One run directory at a glance."""

    run_dir: Path
    status: str  # done, interrupted (checkpoint below train.steps), failed (no model), unreadable
    model: str  # preset (glow/cpu) or model family
    dataset: str
    step: int | None  # step of the saved model, None without one
    steps: int | None  # train.steps of the config
    last_val: dict[str, float]  # the last validation record of metrics.jsonl (val_* keys)
    note: str = ""  # why a run is unreadable
    budget_minutes: float = 0.0  # execution.budget_minutes of the config (0 = none)

    @property
    def progress(self) -> str:
        """``step / steps``, or ``step (budget M min)`` for a run that trains until its budget."""
        shown = "-" if self.step is None else str(self.step)
        if self.steps is not None and self.steps >= UNTIL_BUDGET and self.budget_minutes > 0:
            return f"{shown} (budget {self.budget_minutes:g} min)"
        return shown if self.steps is None else f"{shown} / {self.steps}"


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header alone."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is truncated")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100_000_000:
            raise ValueError(f"{path} has an implausible header length {length}")
        header = json.loads(handle.read(length))
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def last_validation(run_dir: Path) -> dict[str, float]:
    """The val_* values of the last metrics.jsonl record that has any (empty if none)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return {}
    last: dict[str, float] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        values = {
            k: float(v)
            for k, v in record.items()
            if k.startswith("val_") and isinstance(v, int | float)
        }
        if values:
            last = values
    return last


def summarize_run(run_dir: Path) -> RunSummary:
    """Status, model, dataset, step and last validation metrics of one run directory."""
    run_dir = Path(run_dir)
    try:
        config: dict[str, Any] = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
        model = str(config.get("preset") or config.get("model", {}).get("family", "?"))
        dataset = str(config.get("data", {}).get("dataset", "?"))
        steps = config.get("train", {}).get("steps")
        steps = int(steps) if steps is not None else None
        # execution.budget_minutes; configs of older versions kept it in train
        budget = float(
            config.get("execution", {}).get("budget_minutes")
            or config.get("train", {}).get("budget_minutes")
            or 0.0
        )
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as error:
        return RunSummary(run_dir, UNREADABLE, "?", "?", None, None, {}, f"config: {error}")
    weights = run_dir / MODEL_FILE
    if not weights.exists():
        return RunSummary(run_dir, FAILED, model, dataset, None, steps, last_validation(run_dir))
    try:
        metadata = safetensors_metadata(weights)
        step = int(metadata.get("step", 0))
    except (OSError, ValueError) as error:
        return RunSummary(run_dir, UNREADABLE, model, dataset, None, steps, {}, str(error))
    status = DONE if steps is None or is_finished(metadata, steps) else INTERRUPTED
    return RunSummary(
        run_dir, status, model, dataset, step, steps, last_validation(run_dir), "", budget
    )


def list_runs(root: str | os.PathLike[str]) -> list[RunSummary]:
    """Every run directory (a folder with ``config.yaml``) below ``root``, sorted by path.

    A folder with ``config.yaml`` but no ``model.safetensors`` is listed as failed (training
    stopped before its first checkpoint); one whose checkpoint is below ``train.steps`` as
    interrupted (``dgmood train --resume`` continues it).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    found: list[RunSummary] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        if CONFIG_FILE in files:
            found.append(summarize_run(Path(current)))
    return sorted(found, key=lambda s: str(s.run_dir))
