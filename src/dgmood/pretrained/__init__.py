"""Pretrained runs shipped inside the package, named ``pretrained:NAME`` wherever a run
directory is accepted.

Each is an ordinary run directory (``config.yaml``, ``model.safetensors``, ``metrics.jsonl``)
under ``dgmood/pretrained/runs/NAME``, made by ``dgmood train`` with our own presets;
``MANIFEST.json`` beside it records, per run, the exact command and git commit that made
it, the CPU it ran on, its measured numbers (test bits/dim or accuracy, and a small check
set the test suite measures again) and the sha256 of its weights, which is verified every
time the run is resolved. A pretrained run is never written to: what dgmood would cache in
a run directory (score statistics, reject thresholds) goes to
``<data dir>/pretrained/NAME-<sha256 prefix>`` instead (:func:`writable_run_dir`).

Adding a run: train it, then ``python scripts/make_pretrained.py NAME RUN_DIR --command
"..."`` copies its three files here and writes its manifest entry (see that script).
"""

from __future__ import annotations

import functools
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dgmood.data.sources import resolve_data_dir
from dgmood.io import file_sha256

PREFIX = "pretrained:"  # pretrained:NAME names a shipped run wherever a run directory goes
PACKAGE_DIR = Path(__file__).resolve().parent
RUNS_DIR = PACKAGE_DIR / "runs"  # one run directory per name
MANIFEST_FILE = PACKAGE_DIR / "MANIFEST.json"
CACHE_DIR = "pretrained"  # inside the data directory: what a pretrained run would cache
SHIPPED_FILES = ("config.yaml", "model.safetensors", "metrics.jsonl")


class PretrainedError(ValueError):
    """An unknown pretrained name, or shipped weights that fail their checksum."""


@dataclass(frozen=True)
class Measurement:
    """One number of a pretrained run, on stated data: what it is and how it was measured."""

    dataset: str  # registry name, loaded in the run's own data format
    split: str  # "test", "train", ...
    limit: int  # the first N images of the split (0 = all)
    n: int  # images actually measured (a partial split can hold fewer than limit)
    metric: Literal["bits_per_dim", "accuracy"]  # mean bits/dim, or top-1 accuracy
    value: float
    label: str = ""  # how tables name the set, e.g. "CIFAR-10 test (first 1,000)"
    dequantization: Literal["uniform", "center", "none"] = "uniform"  # as `dgmood score`
    seed: int = 0  # dequantization (and VAE sampling) seed, as `dgmood score --seed`


@dataclass(frozen=True)
class PretrainedRun:
    """A manifest entry: what a shipped run is, how it was made, what it measures."""

    name: str
    model: str  # the model name it was trained as (glow, vae-bernoulli, cnn-plain, ...)
    dataset: str  # trained on
    description: str  # one line: architecture and training length
    argv: tuple[str, ...]  # `dgmood` arguments that trained it, less --run-dir
    commit: str  # git commit of dgmood that trained it
    steps: int  # optimiser steps taken
    train_seconds: float  # wall time of training on ``machine``
    machine: dict[str, Any]  # cpu model, flags, cores, load average, torch version
    sha256: str  # of model.safetensors, verified on every load
    size_bytes: int  # of the three shipped files together
    test: Measurement  # the headline number (test bits/dim, or test accuracy)
    train: Measurement | None = None  # the same on a slice of the training split
    check: Measurement | None = None  # a few hundred test images: measured again by the tests
    extra: tuple[Measurement, ...] = field(default_factory=tuple)  # e.g. OOD sets

    @property
    def path(self) -> Path:
        return RUNS_DIR / self.name

    @property
    def command(self) -> str:
        """The shell command that made the run (``--run-dir`` as ``runs/NAME``)."""
        return shlex.join(["dgmood", *self.argv, "--run-dir", f"runs/{self.name}"])


def _measurement(data: Any) -> Measurement | None:
    return None if data is None else Measurement(**data)


@functools.cache
def manifest() -> dict[str, PretrainedRun]:
    """Every shipped pretrained run by name (empty if none are shipped)."""
    if not MANIFEST_FILE.is_file():
        return {}
    try:
        raw = json.loads(MANIFEST_FILE.read_text())
        runs = {}
        for name, entry in raw["runs"].items():
            entry = dict(entry)
            entry["argv"] = tuple(entry["argv"])
            for key in ("test", "train", "check"):
                entry[key] = _measurement(entry.get(key))
            entry["extra"] = tuple(Measurement(**m) for m in entry.get("extra", []))
            runs[name] = PretrainedRun(name=name, **entry)
        return runs
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PretrainedError(f"{MANIFEST_FILE} is malformed: {error}") from None


def names() -> list[str]:
    return sorted(manifest())


def is_reference(ref: str | os.PathLike[str]) -> bool:
    """Whether ``ref`` names a pretrained run (``pretrained:NAME``) rather than a folder."""
    return str(ref).startswith(PREFIX)


def get(name: str) -> PretrainedRun:
    """The manifest entry of ``name`` (with or without the ``pretrained:`` prefix)."""
    name = name.removeprefix(PREFIX)
    runs = manifest()
    if name not in runs:
        known = ", ".join(sorted(runs)) or "none are shipped with this copy of dgmood"
        raise PretrainedError(f"no pretrained run named {name!r}; known: {known}")
    return runs[name]


def verified_path(name: str) -> Path:
    """The run directory of pretrained run ``name``, after checking its weights' sha256."""
    entry = get(name)
    weights = entry.path / "model.safetensors"
    if not weights.is_file():
        raise PretrainedError(
            f"pretrained run {entry.name!r} is listed but {weights} is missing; reinstall dgmood"
        )
    actual = file_sha256(weights)
    if actual != entry.sha256:
        raise PretrainedError(
            f"pretrained run {entry.name!r}: {weights} has sha256 {actual[:16]}..., the "
            f"manifest says {entry.sha256[:16]}...; the file was altered: reinstall dgmood"
        )
    return entry.path


def resolve_run_dir(ref: str | os.PathLike[str]) -> Path:
    """A run directory from what a user typed: ``pretrained:NAME`` or a path; a pretrained
    run's weights are verified against the manifest either way."""
    if is_reference(ref):
        return verified_path(str(ref))
    name = pretrained_name(ref)
    return Path(ref) if name is None else verified_path(name)


def pretrained_name(run_dir: str | os.PathLike[str]) -> str | None:
    """The name of the pretrained run whose directory ``run_dir`` is, else None."""
    try:
        resolved = Path(run_dir).resolve()
    except OSError:
        return None
    if resolved.parent != RUNS_DIR:
        return None
    return resolved.name if resolved.name in manifest() else None


def writable_run_dir(run_dir: str | os.PathLike[str], data_dir: Path | None = None) -> Path:
    """Where to cache what belongs to a run (scores, thresholds): the run directory itself,
    or, for a pretrained run (never written to), ``<data dir>/pretrained/NAME-<sha[:12]>``."""
    name = pretrained_name(run_dir)
    if name is None:
        return Path(run_dir)
    return resolve_data_dir(data_dir) / CACHE_DIR / f"{name}-{manifest()[name].sha256[:12]}"


# --- the table `dgmood pretrained` prints and docs/RESULTS.md holds -----------------------

TABLE_COLUMNS = (
    "name",
    "model",
    "trained on",
    "test",
    "train slice",
    "steps",
    "train time",
    "size",
    "weights sha256",
)


def format_measurement(m: Measurement | None) -> str:
    """``3.312 bits/dim (FashionMNIST test, n=10,000)`` or ``99.1% accuracy (...)``."""
    if m is None:
        return "-"
    where = f"{m.label or f'{m.dataset}-{m.split}'}, n={m.n:,}"
    if m.metric == "accuracy":
        return f"{100 * m.value:.2f}% accuracy ({where})"
    return f"{m.value:.3f} bits/dim ({where})"


def table_rows(runs: dict[str, PretrainedRun] | None = None) -> list[list[str]]:
    """One row of :data:`TABLE_COLUMNS` per pretrained run."""
    rows = []
    for entry in (runs if runs is not None else manifest()).values():
        minutes = entry.train_seconds / 60
        rows.append(
            [
                entry.name,
                entry.model,
                entry.dataset,
                format_measurement(entry.test),
                format_measurement(entry.train),
                f"{entry.steps:,}",
                f"{minutes:.1f} min" if minutes >= 1 else f"{entry.train_seconds:.0f} s",
                f"{entry.size_bytes / 1e6:.2f} MB",
                entry.sha256[:16],
            ]
        )
    return rows


def provenance_lines(runs: dict[str, PretrainedRun] | None = None) -> list[str]:
    """Per run: the command and commit that made it, and the CPU it ran on."""
    lines = []
    for entry in (runs if runs is not None else manifest()).values():
        m = entry.machine
        cpu = (
            f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, flags "
            f"{' '.join(m.get('flags', [])) or '?'}, load {m.get('load_average', '?')}"
        )
        lines.append(f"{entry.name}: `{entry.command}` at commit {entry.commit[:12]} ({cpu})")
    return lines


def markdown_table(runs: dict[str, PretrainedRun] | None = None) -> str:
    """The table and provenance lines as Markdown (docs/RESULTS.md)."""
    runs = runs if runs is not None else manifest()
    head = "| " + " | ".join(TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"
    body = ["| " + " | ".join(row) + " |" for row in table_rows(runs)]
    total = sum(e.size_bytes for e in runs.values()) / 1e6
    lines = [head, rule, *body, "", f"Total: {len(runs)} runs, {total:.1f} MB.", ""]
    return "\n".join(lines + [f"- {line}" for line in provenance_lines(runs)]) + "\n"
