"""Run directories: file names, locking, checkpoints, loading a trained run, metrics.

A run directory holds:

- ``config.yaml``: the run's config;
- ``checkpoint.safetensors``: the resumable checkpoint, one file and so one atomic unit
  (weights, optimizer/scheduler/RNG state and step; no pickle, so loading it runs no code);
- ``model.safetensors``: the weights of the latest checkpoint, with config and step in its
  metadata, for :func:`load_run` and anyone else who only needs the model;
- ``metrics.jsonl``, ``scores/`` (cached statistics) and ``.lock`` (held while training).

Every tensor file carries a SHA-256 of its content in its own metadata and is verified on
load, so a corrupt or truncated file is one clear :class:`RunDirError`, never a model that
silently computes garbage; a file without that digest is refused. The digest is unkeyed: it
catches accidents (a bad disk, a cut download), not an attacker, who can recompute it. For a
run someone else sends, compare the SHA-256 of ``model.safetensors`` with the one its sender
publishes (``expect_sha256``, ``--expect-sha256``). A run directory is never silently
overwritten, and two processes never train into one (an OS-level lock that dies with its
process).

A run directory may come from someone else: every file dgmood reads or writes in it must be
a regular file (a sub-folder a real folder), never a symlink, so that nothing outside the
run is read or written through it; and a model file's tensors are checked against the size
its config claims before any model is built.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dgmood.config import RunConfig
from dgmood.io import atomic_path, file_sha256, remove_stale_parts
from dgmood.models.base import Capability, Classifier, DensityModel, FamilySpec
from dgmood.models.registry import build_model, capabilities, family_spec, models_with
from dgmood.pretrained import is_reference, pretrained_name, resolve_run_dir

MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
SCORES_DIR = "scores"  # cached per-sample statistics (dgmood.inference)
LEGACY_STATE_FILE = "training_state.pt"  # pickled state of dgmood < checkpoint.safetensors

FORMAT = "dgmood-2"  # files of this format carry a sha256 of their content
DIGEST_KEY = "sha256"
_MODEL_PREFIX = "model/"
_STATE_PREFIX = "state/"


class RunDirError(RuntimeError):
    """A run directory is missing, incomplete, corrupt, in use, or would be overwritten."""


# --- files of a run: regular files only ---------------------------------------------------

#: every file dgmood reads or writes directly in a run directory
RUN_FILES = (CONFIG_FILE, MODEL_FILE, CHECKPOINT_FILE, METRICS_FILE, LOCK_FILE, LEGACY_STATE_FILE)


def _refuse_special(path: Path, folder: bool = False) -> None:
    """A :class:`RunDirError` if ``path`` exists as a symlink or as the wrong kind of file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise RunDirError(
            f"{path} is a symlink; dgmood reads and writes only the run's own files, never "
            "through a link (a received run may point it anywhere). Replace it with the file "
            "itself, or remove it"
        )
    if folder and not stat.S_ISDIR(mode):
        raise RunDirError(f"{path} is not a directory; remove it (it is recreated)")
    if not folder and not stat.S_ISREG(mode):
        raise RunDirError(f"{path} is not a regular file; remove it")


def check_run_files(run_dir: Path) -> None:
    """Refuse a run directory whose own files are symlinks or not regular files."""
    for name in RUN_FILES:
        _refuse_special(run_dir / name)
    _refuse_special(run_dir / SCORES_DIR, folder=True)


def run_subdir(run_dir: Path, name: str) -> Path:
    """``run_dir/name`` (e.g. ``scores``), created if missing; a symlink there is refused.

    ``run_dir`` itself may be a link: the user named it; what lies inside it may not be.
    """
    path = Path(run_dir) / name
    _refuse_special(path, folder=True)
    path.mkdir(parents=True, exist_ok=True)
    _refuse_special(path, folder=True)  # nobody swapped in a link meanwhile
    return path


# --- opening a run directory for training -------------------------------------------------


def _run_files(run_dir: Path) -> list[Path]:
    """What is in ``run_dir``, less our lock file and temporary files of killed writers."""
    return [p for p in run_dir.iterdir() if p.name != LOCK_FILE and not p.name.endswith(".part")]


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to reuse a non-empty ``run_dir`` unless resuming (changes nothing)."""
    if is_reference(run_dir) or pretrained_name(run_dir):
        raise RunDirError(
            f"{run_dir} is a pretrained run shipped with dgmood and is never written to; "
            "train into another --run-dir (its config: `dgmood pretrained`)"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {run_dir} is a file, not a directory")
    if not resume and run_dir.exists() and _run_files(run_dir):
        raise RunDirError(
            f"run directory {run_dir} already exists and is not empty; pass --resume to "
            "continue that run, or choose another --run-dir (nothing was changed)"
        )
    if resume and not run_dir.exists():
        raise RunDirError(f"cannot resume: run directory {run_dir} does not exist")
    if resume and not (run_dir / CONFIG_FILE).exists():
        raise RunDirError(
            f"cannot resume: {run_dir / CONFIG_FILE} does not exist (is {run_dir} a run "
            "directory made by `dgmood train`?)"
        )
    if run_dir.exists():
        check_run_files(run_dir)


@contextlib.contextmanager
def _exclusive_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``run_dir/.lock``; the OS drops it if we die."""
    path = run_dir / LOCK_FILE
    _refuse_special(path)
    try:
        # no link followed, and no wait on a FIFO: the lock is our own regular file or nothing
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as error:
        raise RunDirError(f"cannot open the lock {path}: {error.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunDirError(f"{path} is not a regular file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunDirError(
                f"{run_dir} is in use: another dgmood process (pid {holder}) is training "
                "into it; wait for it to finish or choose another --run-dir"
            ) from None
        # a lock on a file that was unlinked meanwhile would lock nothing
        if os.fstat(fd).st_ino != os.lstat(path).st_ino:
            raise RunDirError(f"{run_dir} changed while it was being opened; try again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def open_run_dir(run_dir: Path, resume: bool) -> Iterator[None]:
    """Create (or reopen) ``run_dir`` for training, holding its lock for the block.

    Checks it again under the lock (another process may have trained into it meanwhile),
    removes temporary files that a killed writer left, and, if a new run fails before its
    first checkpoint, removes what it wrote so that a retry is not blocked.
    """
    check_run_dir(run_dir, resume)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(run_dir):
        try:
            check_run_dir(run_dir, resume)
            remove_stale_parts(run_dir)
            yield
        except BaseException:
            if not resume and not (run_dir / CHECKPOINT_FILE).exists():
                for name in (CONFIG_FILE, METRICS_FILE, MODEL_FILE):
                    (run_dir / name).unlink(missing_ok=True)
                if created and not _run_files(run_dir):
                    shutil.rmtree(run_dir, ignore_errors=True)
            raise


# --- tensor files that verify themselves --------------------------------------------------


def _content_digest(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 of names, dtypes, shapes and bytes of every tensor, and of the metadata."""
    digest = hashlib.sha256()
    digest.update(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensor_file(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` to safetensors atomically, with a digest of everything in it."""
    metadata = {**metadata, "format": FORMAT}
    metadata[DIGEST_KEY] = _content_digest(tensors, metadata)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as error:  # e.g. "I/O error: No space left on device (os error 28)"
            code = re.search(r"\(os error (\d+)\)", str(error))
            if code is None:
                raise
            number = int(code.group(1))
            raise OSError(number, os.strerror(number), str(path)) from None


def _corrupt(path: Path, why: str) -> RunDirError:
    return RunDirError(
        f"{path} is corrupt ({why}); it cannot be used. Restore it from a copy, or train "
        "the run again"
    )


def load_tensor_file(
    path: Path, expect_sha256: str | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, verified against its stored digest.

    Raises :class:`RunDirError` naming the file if it is missing, a symlink, truncated,
    altered or without a digest; with ``expect_sha256``, also unless the SHA-256 of the
    whole file is that one (the digest its sender published).
    """
    _refuse_special(path)
    if not path.is_file():
        raise RunDirError(f"{path} not found")
    if expect_sha256 is not None:
        check_file_sha256(path, expect_sha256)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises several types for a damaged header
        raise _corrupt(path, f"unreadable: {error}") from None
    stored = metadata.pop(DIGEST_KEY, None)
    if metadata.get("format") != FORMAT or stored is None:
        raise RunDirError(
            f"{path} has no sha256 checksum (format {FORMAT}) in its metadata, so it cannot "
            "be verified and is not loaded; it was not written by this dgmood, or was altered. "
            "Train the run again, or ask its sender for the run as `dgmood train` wrote it"
        )
    if stored != _content_digest(tensors, metadata):
        raise _corrupt(path, "its content does not match its sha256 checksum")
    return tensors, metadata


def check_file_sha256(path: Path, expected: str) -> None:
    """A :class:`RunDirError` unless ``path``'s SHA-256 is ``expected`` (64 hex digits)."""
    wanted = expected.strip().lower()
    if len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise ValueError(
            f"--expect-sha256 must be 64 hexadecimal digits (as `sha256sum` prints), got "
            f"{expected!r}"
        )
    actual = file_sha256(path)
    if actual != wanted:
        raise RunDirError(
            f"{path} does not match the expected sha256 {wanted} (it is {actual}): it is not "
            "the file its sender published; do not use it"
        )


# --- sizes: what a file stores against what its config builds ------------------------------

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_MAX_HEADER = 100_000_000  # bytes; the JSON header of a safetensors file


def stored_tensor_specs(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, safetensors dtype) of every tensor in ``path``, from its header alone
    (no tensor is read); a header that claims more bytes than the file holds is refused."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER:
                raise ValueError(f"implausible header length {length}")
            header = json.loads(handle.read(length))
        data_bytes = path.stat().st_size - 8 - length
        specs = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            shape = tuple(int(n) for n in entry["shape"])
            start, end = (int(n) for n in entry["data_offsets"])
            if not 0 <= start <= end <= data_bytes:
                raise ValueError(f"tensor {name!r} claims bytes beyond the end of the file")
            specs[str(name)] = (shape, str(entry["dtype"]))
    except (OSError, struct.error, ValueError, TypeError, KeyError, AttributeError) as error:
        raise _corrupt(path, f"unreadable header: {error}") from None
    return specs


class _SizeExceeded(Exception):
    pass


@contextlib.contextmanager
def _size_limit(max_tensors: int, max_elements: int) -> Iterator[None]:
    """Abort building a model (on the meta device) once it registers more parameters and
    buffers, or more elements, than allowed: a claimed depth or width never runs to its end."""
    registered = [0, 0]

    def count(module: nn.Module, name: str, tensor: Tensor | None) -> None:
        if tensor is None:
            return
        registered[0] += 1
        registered[1] += tensor.numel()
        if registered[0] > max_tensors or registered[1] > max_elements:
            raise _SizeExceeded

    hooks = [
        nn.modules.module.register_module_parameter_registration_hook(count),
        nn.modules.module.register_module_buffer_registration_hook(count),
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def check_tensors_fit(path: Path, config: RunConfig, prefix: str = "") -> None:
    """Refuse ``path`` unless its tensors (those named ``prefix``...) are exactly the
    parameters and buffers that ``config`` builds, shape for shape.

    The model is built on the meta device (no memory), and abandoned as soon as it grows
    past what the file stores; so a config that claims any size costs nothing to check.
    """
    stored = {
        name.removeprefix(prefix): spec
        for name, spec in stored_tensor_specs(path).items()
        if name.startswith(prefix)
    }
    elements = sum(math.prod(shape) for shape, _ in stored.values())
    # slack for tensors registered and then replaced while building (weight norm), or not
    # stored (non-persistent buffers); the exact comparison follows
    limit = _size_limit(3 * len(stored) + 64, 3 * elements + 1_000_000)
    try:
        with limit, torch.device("meta"):
            meta_model = build_model(config.model, config.data)
    except _SizeExceeded:
        raise RunDirError(
            f"{path}: its tensors do not fit its config: the config builds a larger model "
            f"than the {len(stored)} tensors ({elements:,} numbers) the file stores"
        ) from None
    except Exception as error:  # a config no model can be built from
        raise _corrupt(path, f"its config builds no model: {error}") from None
    expected = {name: tuple(t.shape) for name, t in meta_model.state_dict().items()}
    shapes = {name: shape for name, (shape, _) in stored.items()}
    if expected != shapes:
        differing = sorted(set(expected) ^ set(shapes)) or sorted(
            name for name in expected if expected[name] != shapes[name]
        )
        first = differing[0]
        raise RunDirError(
            f"{path}: its tensors do not fit its config ({len(differing)} differ; first "
            f"{first!r}: stored {shapes.get(first)}, config {expected.get(first)})"
        )


def model_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of ``model``'s weights and buffers, as safetensors stores them."""
    # safetensors refuses shared storage and non-contiguous tensors; clone to be safe
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


#: model-file metadata key marking a run whose ``execution.budget_minutes`` ended it
BUDGET_REACHED = "budget_reached"


def save_model(
    model: nn.Module | dict[str, Tensor],
    path: Path,
    config: RunConfig,
    step: int,
    budget_reached: bool = False,
) -> None:
    """Weights + buffers to safetensors, with the run config and step as metadata.

    ``budget_reached``: training stopped at ``step`` because its time budget ran out; the
    run is then finished although ``step < train.steps`` (see :func:`is_finished`).
    """
    tensors = model if isinstance(model, dict) else model_state_dict(model)
    metadata = {"config": config.to_yaml(), "step": str(step)}
    if budget_reached:
        metadata[BUDGET_REACHED] = "1"
    save_tensor_file(path, tensors, metadata)


def is_finished(metadata: dict[str, str], steps: int) -> bool:
    """Whether a model file's ``metadata`` marks its training of ``steps`` (``train.steps``)
    as done: all steps taken, or stopped by its ``execution.budget_minutes``."""
    return int(metadata.get("step", 0)) >= steps or metadata.get(BUDGET_REACHED) == "1"


def read_model_metadata(path: Path) -> dict[str, str]:
    """The metadata (config YAML, step) of a model file, without loading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:
        raise _corrupt(path, f"unreadable: {error}") from None


# --- checkpoints: one file, one atomic unit -----------------------------------------------


def _encode(value: Any, tensors: dict[str, Tensor], where: str) -> Any:
    """A JSON tree of ``value`` whose tensors are moved to ``tensors`` (keys kept typed)."""
    if isinstance(value, Tensor):
        tensors[where] = value.detach().to("cpu").contiguous().clone()
        return {"tensor": where}
    if isinstance(value, dict):
        return {"dict": [[k, _encode(v, tensors, f"{where}.{k}")] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors, f"{where}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return {"list": [_encode(v, tensors, f"{where}.{i}") for i, v in enumerate(value)]}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"cannot store {type(value).__name__} at {where} in a checkpoint")


def _decode(node: Any, tensors: dict[str, Tensor]) -> Any:
    ((kind, body),) = node.items()
    if kind == "tensor":
        return tensors[body]
    if kind == "dict":
        return {key: _decode(value, tensors) for key, value in body}
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in body)
    if kind == "list":
        return [_decode(v, tensors) for v in body]
    return body


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly: weights, training state and step."""

    step: int
    model_state: dict[str, Tensor]
    training_state: dict[str, Any]  # optimizer, scheduler, RNG: tensors and plain values
    budget_reached: bool = False  # the time budget ended training at ``step`` (model file)


def save_checkpoint(run_dir: Path, config: RunConfig, checkpoint: Checkpoint) -> None:
    """Write the checkpoint in one rename, then export its weights to ``model.safetensors``.

    A kill between the two leaves a complete checkpoint beside the previous model file;
    resuming rewrites the model file, and :func:`load_run` reads a consistent older model.
    """
    tensors = {_MODEL_PREFIX + k: v for k, v in checkpoint.model_state.items()}
    tree = _encode(checkpoint.training_state, tensors, _STATE_PREFIX.rstrip("/"))
    metadata = {
        "config": config.to_yaml(),
        "step": str(checkpoint.step),
        "training_state": json.dumps(tree),
    }
    save_tensor_file(run_dir / CHECKPOINT_FILE, tensors, metadata)
    save_model(
        checkpoint.model_state,
        run_dir / MODEL_FILE,
        config,
        checkpoint.step,
        budget_reached=checkpoint.budget_reached,
    )


def check_checkpoint_fits(run_dir: Path, config: RunConfig) -> None:
    """Before a model is built to resume ``run_dir``: its checkpoint's weights must be the
    ones ``config`` builds (a config.yaml claiming another size is refused, at no cost)."""
    path = run_dir / CHECKPOINT_FILE
    if path.exists():
        check_tensors_fit(path, config, prefix=_MODEL_PREFIX)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The run's checkpoint, verified; one clear :class:`RunDirError` if it cannot be used."""
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        if (run_dir / LEGACY_STATE_FILE).exists():
            raise RunDirError(
                f"cannot resume {run_dir}: its {LEGACY_STATE_FILE} is a pickle written by an "
                "older dgmood, which is not loaded because unpickling can run arbitrary code; "
                "train the run again into a new --run-dir"
            )
        raise RunDirError(
            f"cannot resume {run_dir}: it holds no {CHECKPOINT_FILE} (the run stopped before "
            "its first checkpoint, or the file was removed); train again into a new --run-dir"
        )
    tensors, metadata = load_tensor_file(path)
    try:
        tree = json.loads(metadata["training_state"])
        training_state = _decode(tree, tensors)
        step = int(metadata["step"])
    except RecursionError:  # a tree nested deeper than any dgmood writes
        raise _corrupt(path, "malformed training state: nested too deeply") from None
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise _corrupt(path, f"malformed training state: {error}") from None
    model_state = {
        k.removeprefix(_MODEL_PREFIX): v for k, v in tensors.items() if k.startswith(_MODEL_PREFIX)
    }
    return Checkpoint(step, model_state, training_state)


# --- loading a trained run ----------------------------------------------------------------


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

    @property
    def spec(self) -> FamilySpec:
        """The model family's spec (kind, capabilities, presets)."""
        return family_spec(self.config.model)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this run's model can do (its family's spec, for its config)."""
        return capabilities(self.config.model)

    def density_model(self) -> DensityModel:
        """The model as a :class:`DensityModel`, or one clear error naming the run."""
        if self.spec.kind != "density":
            raise ValueError(
                f"{self.run_dir} holds a {self.spec.name} classifier, not a density model "
                f"({', '.join(models_with('density'))})"
            )
        return cast(DensityModel, self.model)

    def classifier(self) -> Classifier:
        """The model as a :class:`Classifier`, or one clear error naming the run."""
        if self.spec.kind != "classifier":
            raise ValueError(
                f"{self.run_dir} holds a {self.spec.name} density model, not a classifier "
                "(e.g. `dgmood train cnn --dataset mnist`)"
            )
        return cast(Classifier, self.model)


def load_run(
    run_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    expect_sha256: str | None = None,
) -> LoadedRun:
    """Rebuild the model of a run from its config and load its verified weights (eval mode).

    ``run_dir`` is a folder or ``pretrained:NAME`` (a run shipped with dgmood, ``dgmood
    pretrained``). The file's tensors are checked against its config before the model is
    built. ``expect_sha256``: the SHA-256 of ``model.safetensors`` its sender published (see
    the module docstring: the embedded digest alone does not stop an attacker).
    """
    run_dir = resolve_run_dir(run_dir)
    weights = run_dir / MODEL_FILE
    _refuse_special(weights)
    if not weights.is_file():
        raise RunDirError(
            f"{weights} not found: is {run_dir} a run directory made by `dgmood train`?"
        )
    if expect_sha256 is not None:
        check_file_sha256(weights, expect_sha256)
    try:
        config = RunConfig.from_yaml(read_model_metadata(weights)["config"])
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as error:
        raise _corrupt(weights, f"malformed metadata: {error}") from None
    check_tensors_fit(weights, config)
    tensors, metadata = load_tensor_file(weights)
    try:
        config = RunConfig.from_yaml(metadata["config"])
        step = int(metadata.get("step", 0))
    except (KeyError, ValueError, TypeError) as error:
        raise _corrupt(weights, f"malformed metadata: {error}") from None
    model = cast(DensityModel | Classifier, build_model(config.model, config.data))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as error:
        raise _corrupt(weights, f"its tensors do not fit its config: {error}") from None
    model.to(device)
    model.eval()
    return LoadedRun(config, model, step, run_dir)


# --- metrics and cached scores ------------------------------------------------------------


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW  # never through a link
    with open(os.open(run_dir / METRICS_FILE, flags, 0o644), "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metric records of a run; a line cut short by a killed writer is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_score_cache(path: Path) -> dict[str, np.ndarray] | None:
    """Cached statistics in ``path``, or None (and the file removed) if absent or unreadable.

    A symlink or special file there is unreadable too: removed (the link, not its target).
    """
    if not os.path.lexists(path):
        return None
    if not stat.S_ISREG(os.lstat(path).st_mode):
        path.unlink()
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except Exception:  # a damaged zip raises zipfile, OS and value errors alike
        path.unlink(missing_ok=True)
        return None
