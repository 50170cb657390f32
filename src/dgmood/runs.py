"""Run directories: file names, loading a trained run, checkpoints, metrics.

A run directory holds ``config.yaml``, ``model.safetensors`` (weights and buffers, with the
config and step in its metadata), ``training_state.pt`` (optimizer, scheduler, RNG and step,
for exact resume) and ``metrics.jsonl``. It is never silently overwritten.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dgmood.config import RunConfig
from dgmood.io import atomic_path, atomic_write_bytes
from dgmood.models.base import Classifier, DensityModel
from dgmood.models.registry import build_model

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SCORES_DIR = "scores"  # cached per-sample statistics (dgmood.inference)


class RunDirError(RuntimeError):
    """A run directory is missing, incomplete, corrupt, or would be overwritten."""


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to reuse a non-empty ``run_dir`` unless resuming (changes nothing)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {run_dir} is a file, not a directory")
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise RunDirError(
            f"run directory {run_dir} already exists and is not empty; pass --resume to "
            "continue that run, or choose another --run-dir (nothing was changed)"
        )
    if resume and not run_dir.exists():
        raise RunDirError(f"cannot resume: run directory {run_dir} does not exist")
    if resume and not (run_dir / CONFIG_FILE).exists():
        raise RunDirError(f"cannot resume: {run_dir / CONFIG_FILE} does not exist")


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Check ``run_dir`` (see :func:`check_run_dir`) and create it."""
    check_run_dir(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)


def _state_dict_for_safetensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous tensors; clone to be safe
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: nn.Module, path: Path, config: RunConfig, step: int) -> None:
    """Weights + buffers to safetensors, with the run config and step as metadata."""
    metadata = {"config": config.to_yaml(), "step": str(step), "format": "dgmood-1"}
    tensors = _state_dict_for_safetensors(model)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_model_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_training_state(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


@dataclass
class LoadedRun:
    """A trained run: its config, its model in eval mode, the step it was saved at."""

    config: RunConfig
    model: DensityModel | Classifier
    step: int
    run_dir: Path

    @property
    def name(self) -> str:
        """What the run is, for tables: its preset (``glow/cpu``) or its model family."""
        return self.config.preset or type(self.config.model).family

    def density_model(self) -> DensityModel:
        """The model as a :class:`DensityModel`, or one clear error naming the run."""
        if not isinstance(self.model, DensityModel):
            raise ValueError(
                f"{self.run_dir} holds a {type(self.model).__name__}, not a density model "
                "(glow, cv-glow, realnvp, pixelcnnpp or a vae)"
            )
        return self.model

    def classifier(self) -> Classifier:
        """The model as a :class:`Classifier`, or one clear error naming the run."""
        if not isinstance(self.model, Classifier):
            raise ValueError(
                f"{self.run_dir} holds a {type(self.model).__name__}, not a classifier "
                "(e.g. `dgmood train cnn --dataset mnist`)"
            )
        return self.model


def load_run(run_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of a run from its config and load its weights (eval mode)."""
    run_dir = Path(run_dir)
    weights = run_dir / MODEL_FILE
    if not weights.exists():
        raise RunDirError(
            f"{weights} not found: is {run_dir} a run directory made by `dgmood train`?"
        )
    metadata = read_model_metadata(weights)
    config = RunConfig.from_yaml(metadata["config"])
    model = build_model(config.model, config.data)
    if not isinstance(model, DensityModel | Classifier):
        raise RunDirError(
            f"{run_dir}: {type(model).__name__} is neither a density model nor a classifier"
        )
    model.load_state_dict(load_file(str(weights)))
    model.to(device)
    model.eval()
    return LoadedRun(config, model, int(metadata.get("step", 0)), run_dir)


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
