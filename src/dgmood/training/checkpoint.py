"""Run directories and checkpoints: safetensors weights, config inside, atomic writes.

A run directory holds ``config.yaml``, ``model.safetensors`` (weights and buffers, with the
config and step in its metadata), ``training_state.pt`` (optimizer, scheduler, RNG and step,
for exact resume) and ``metrics.jsonl``. It is never silently overwritten.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dgmood.config import RunConfig

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


class RunDirError(RuntimeError):
    """A run directory is missing, incomplete, or would be overwritten."""


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, so a checkpoint is never half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[object] = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file ordinary permissions (mkstemp makes it 0600) and rename it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _publish(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to reuse a non-empty ``run_dir`` unless resuming (changes nothing)."""
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise RunDirError(
            f"run directory {run_dir} already exists and is not empty; pass --resume to "
            "continue that run, or choose another --run-dir (nothing was changed)"
        )
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        _publish(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_model_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_training_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


@dataclass
class LoadedRun:
    config: RunConfig
    model: nn.Module
    step: int
    run_dir: Path


def load_run(run_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of a run from its config and load its weights (eval mode)."""
    from dgmood.models.registry import build_model

    run_dir = Path(run_dir)
    weights = run_dir / MODEL_FILE
    if not weights.exists():
        raise RunDirError(
            f"{weights} not found: is {run_dir} a run directory made by `dgmood train`?"
        )
    metadata = read_model_metadata(weights)
    config = RunConfig.from_yaml(metadata["config"])
    model = build_model(config.model, config.data)
    state = load_file(str(weights))
    model.load_state_dict(state)
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
