"""Everyday paths end in a result or one clear line: resume flags that just work, identical
logs after a resume, a full disk, stale caches, mistakes refused before any work is done,
and one broken file that does not take the others down with it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TinyData, tiny_glow, train_tiny
from PIL import Image
from safetensors import SafetensorError
from typer.testing import CliRunner

import dgmood.inference
import dgmood.io
import dgmood.runs
from dgmood.cli.main import app
from dgmood.config import RunConfig
from dgmood.data.loading import DataSources
from dgmood.evaluation.compare import score_dataset
from dgmood.inference import score_cached
from dgmood.reporting.html import rebuild_reports
from dgmood.reporting.result import StudyResult, Table
from dgmood.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOCK_FILE,
    MODEL_FILE,
    SCORES_DIR,
    RunDirError,
    load_checkpoint,
    load_run,
    read_metrics,
    save_tensor_file,
)
from dgmood.training.launch import train_or_reuse

runner = CliRunner()


def _cli(*args: str, mirror: Path | None = None) -> tuple[int, str]:
    extra = ["--mirror", str(mirror)] if mirror is not None else []
    result = runner.invoke(app, [*args, *extra])
    return result.exit_code, result.output


def _one_line_error(output: str) -> bool:
    lines = [line for line in output.splitlines() if line.strip()]
    return "Traceback" not in output and sum(line.startswith("error:") for line in lines) == 1


class _StopAfterCheckpoint(Exception):
    """Stands for a kill right after the checkpoint of a given step was written."""


def _train_until(config: RunConfig, run_dir: Path, data: TinyData, stop_at: int) -> None:
    original = dgmood.runs.save_checkpoint

    def save_then_stop(run_dir: Path, config: RunConfig, checkpoint: Any) -> None:
        original(run_dir, config, checkpoint)
        if checkpoint.step == stop_at:
            raise _StopAfterCheckpoint

    dgmood.runs.save_checkpoint = save_then_stop  # type: ignore[assignment]
    import dgmood.training.loop as loop

    loop.save_checkpoint = save_then_stop  # type: ignore[assignment]
    try:
        with pytest.raises(_StopAfterCheckpoint):
            train_tiny(config, run_dir, data, resume=(run_dir / CONFIG_FILE).exists())
    finally:
        dgmood.runs.save_checkpoint = original  # type: ignore[assignment]
        loop.save_checkpoint = original  # type: ignore[assignment]


# --- 8. --resume continues what exists and starts what does not --------------------------


def _sources(mirror: Path, data_dir: Path) -> DataSources:
    return DataSources(data_dir=str(data_dir), mirror=str(mirror))


def test_resume_starts_a_run_that_does_not_exist_yet(
    tmp_path: Path, mirror: Path, data_dir: Path
) -> None:
    run_dir = tmp_path / "runs" / "new"
    sources = _sources(mirror, data_dir)
    config = tiny_glow(steps=2)
    assert train_or_reuse(config, run_dir, sources=sources, resume=True, progress=False)
    assert load_run(run_dir).step == 2
    # and reuses it, finished, without training again
    before = (run_dir / MODEL_FILE).stat().st_mtime_ns
    assert not train_or_reuse(config, run_dir, sources=sources, resume=True, progress=False)
    assert (run_dir / MODEL_FILE).stat().st_mtime_ns == before


def test_an_interrupted_study_run_needs_resume_and_resume_finishes_it(
    tmp_path: Path, tiny_data: TinyData, mirror: Path, data_dir: Path
) -> None:
    run_dir, config = tmp_path / "run", tiny_glow(steps=6)
    _train_until(config, run_dir, tiny_data, stop_at=3)
    sources = _sources(mirror, data_dir)
    with pytest.raises(RunDirError, match="--resume"):
        train_or_reuse(config, run_dir, sources=sources, resume=False, progress=False)
    assert train_or_reuse(config, run_dir, sources=sources, resume=True, progress=False)
    assert load_run(run_dir).step == 6


def test_benchmark_resume_on_a_new_folder_runs(tmp_path: Path, mirror: Path) -> None:
    out = tmp_path / "bench"
    args = [
        "benchmark", "--in", "fashion-mnist", "--ood", "mnist", "--model", "vae",
        "--score", "nll", "--preset", "tiny", "--steps", "2", "--limit", "16",
        "--train-limit", "16", "--no-progress", "--out-dir", str(out), "--resume",
    ]  # fmt: skip
    code, output = _cli(*args, mirror=mirror)
    assert code == 0, output
    assert (out / "result.json").exists()
    code, output = _cli(*args, mirror=mirror)  # again: everything is finished, and reused
    assert code == 0 and "in use" not in output, output


def _hold_lock(run_dir: Path, ready: Any, release: Any) -> None:
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    release.wait(60)
    os._exit(0)


def test_resume_of_a_finished_run_reuses_it_without_its_lock(
    run_copy: Path, mirror: Path, data_dir: Path
) -> None:
    """A finished run is reused as it is: not even a leftover holder of its lock (a forked
    worker that inherited it) makes a resume say "in use"."""
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(run_copy, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        config = RunConfig.load(run_copy / CONFIG_FILE)
        sources = _sources(mirror, data_dir)
        assert not train_or_reuse(config, run_copy, sources=sources, resume=True, progress=False)
    finally:
        release.set()
        holder.join(30)


# --- 9. the log after a resume is the log of an uninterrupted run --------------------------


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


def test_logged_loss_after_a_resume_equals_an_uninterrupted_runs(
    tmp_path: Path, tiny_data: TinyData
) -> None:
    config = tiny_glow(steps=20, log_every=5, checkpoint_every=3, eval_every=0)
    reference = tmp_path / "reference"
    train_tiny(config, reference, tiny_data)
    interrupted = tmp_path / "interrupted"
    for stop_at in (3, 9, 12, 18):  # mid-window (3, 9, 18) and on a log step (12)... resumed
        _train_until(config, interrupted, tiny_data, stop_at)
    train_tiny(config, interrupted, tiny_data, resume=True)
    assert [step for step, _ in _losses(reference)] == [5, 10, 15, 20]
    assert _losses(interrupted) == _losses(reference)


# --- 10. a full disk: one line, results kept, nothing half-written -------------------------


def _disk_full_on_call(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """safetensors' own error for ENOSPC, as a full disk gives it, on the ``call``-th save."""
    original, calls = dgmood.runs.save_file, [0]

    def save_file(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] >= call:
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        original(*args, **kwargs)

    monkeypatch.setattr(dgmood.runs, "save_file", save_file)


def test_disk_full_while_training_is_one_line_naming_the_resume(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    _disk_full_on_call(monkeypatch, call=5)  # after the first checkpoints were written
    args = [
        "train", "glow", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress",
        "--set", "train.steps=6", "--set", "train.checkpoint_every=1",
        "--set", "data.train_limit=64", "--set", "data.val_size=16",
        "--set", "train.batch_size=8",
    ]  # fmt: skip
    code, output = _cli(*args, mirror=mirror)
    assert code == 2 and _one_line_error(output), output
    assert "No space left on device" in output and "--resume" in output
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".part")]
    step = load_checkpoint(run_dir).step
    monkeypatch.undo()
    code, output = _cli(
        "train", "--resume", "--run-dir", str(run_dir), "--no-progress", mirror=mirror
    )
    assert code == 0, output
    assert step > 0 and load_run(run_dir).step == 6


def test_disk_full_while_scoring_prints_the_results_and_says_the_cache_was_not_saved(
    run_copy: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dgmood.inference, "atomic_write_bytes", full)
    code, output = _cli("score", str(run_copy), "--limit", "8", mirror=mirror)
    assert code == 0, output
    assert "bits_per_dim" in output  # the results
    assert "not saved" in output and "No space left on device" in output
    assert "Traceback" not in output


def _can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root to mount a small tmpfs")
def test_a_really_full_disk_while_training(tmp_path: Path, mirror: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run_dir = small / "run"
        code, output = _cli(
            "train", "glow", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress",
            "--set", "train.steps=30", "--set", "train.checkpoint_every=1",
            "--set", "data.train_limit=64", "--set", "data.val_size=16",
            "--set", "train.batch_size=8", mirror=mirror,
        )  # fmt: skip
        assert code == 2 and _one_line_error(output), output
        assert "No space left on device" in output
        assert not [p for p in run_dir.iterdir() if p.name.endswith(".part")]
        load_checkpoint(run_dir)  # what was kept is whole
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_atomic_writes_fsync_the_file_before_and_the_folder_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"
        events.append(f"fsync {kind}")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    dgmood.io.atomic_write_text(tmp_path / "a.txt", "hello")
    assert events == ["fsync file", "rename", "fsync folder"]
    assert (tmp_path / "a.txt").read_text() == "hello"


# --- 11. stale caches are recomputed; a hostile checkpoint is one RunDirError -------------


def test_a_score_cache_with_the_wrong_number_of_rows_is_recomputed(
    run_copy: Path, tiny_data: TinyData
) -> None:
    run = load_run(run_copy)
    fresh = score_cached(run.model, tiny_data.val_set, run_copy, step=run.step, progress=False)
    (cache,) = (run_copy / SCORES_DIR).iterdir()
    np.savez(cache, **{key: value[:7] for key, value in fresh.items()})  # a stale cache
    again = score_cached(run.model, tiny_data.val_set, run_copy, step=run.step, progress=False)
    assert {k: len(v) for k, v in again.items()} == {k: len(v) for k, v in fresh.items()}
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], again[key])
    with np.load(cache) as stored:
        assert len(stored["bits_per_dim"]) == len(tiny_data.val_set)


@pytest.mark.parametrize("shape", ["brackets", "nodes"])
def test_a_deeply_nested_checkpoint_is_one_run_dir_error(run_copy: Path, shape: str) -> None:
    path = run_copy / CHECKPOINT_FILE
    tensors = dgmood.runs.load_file(str(path))
    with __import__("safetensors").safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    for key in ("sha256", "format"):
        metadata.pop(key)
    depth = 200_000
    if shape == "brackets":
        metadata["training_state"] = "[" * depth + "]" * depth
    else:
        metadata["training_state"] = '{"list": [' * depth + "]}" * depth
    save_tensor_file(path, tensors, metadata)  # with a valid digest
    with pytest.raises(RunDirError, match="corrupt"):
        load_checkpoint(run_copy)


# --- 12. mistakes refused before any work ------------------------------------------------


@pytest.mark.parametrize("command", ["score", "evaluate", "reproduce", "benchmark"])
def test_a_negative_limit_is_refused(run_copy: Path, mirror: Path, command: str) -> None:
    args = {
        "score": ["score", str(run_copy)],
        "evaluate": ["evaluate", str(run_copy), "--ood", "mnist"],
        "reproduce": ["reproduce", "fashion-mnist", "--out-dir", str(run_copy.parent / "o")],
        "benchmark": ["benchmark", "--out-dir", str(run_copy.parent / "o")],
    }[command]
    code, output = _cli(*args, "--limit", "-1", mirror=mirror)
    assert code == 2 and _one_line_error(output) and "--limit" in output, output
    assert not (run_copy / SCORES_DIR).exists() and not (run_copy.parent / "o").exists()


def test_score_dataset_refuses_a_negative_limit(run_copy: Path) -> None:
    with pytest.raises(ValueError, match="limit"):
        score_dataset(run_copy, "mnist", limit=-1)


@pytest.fixture(scope="module")
def mnist_classifier(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("classifier") / "cnn"
    code, output = _cli(
        "train", "cnn", "--preset", "tiny", "--dataset", "mnist", "--run-dir", str(run_dir),
        "--set", "train.steps=2", "--set", "data.train_limit=64", "--set", "data.val_size=16",
        "--set", "train.batch_size=8", "--no-progress", mirror=mirror,
    )  # fmt: skip
    assert code == 0, output
    return run_dir


def _png(path: Path, value: int = 200) -> Path:
    pixels = np.full((28, 28), value, dtype=np.uint8)
    pixels[8:20, 12:16] = 255 - value
    Image.fromarray(pixels).save(path)
    return path


def test_a_detector_trained_on_other_data_is_refused_unless_forced(
    mnist_classifier: Path, run_copy: Path, tmp_path: Path, mirror: Path
) -> None:
    image = _png(tmp_path / "digit.png")
    args = ["predict", str(mnist_classifier), str(image), "--detector", str(run_copy)]
    code, output = _cli(*args, mirror=mirror)
    assert code == 2 and _one_line_error(output), output
    assert "fashion-mnist" in output and "mnist" in output and "--force-detector" in output
    assert not (run_copy / "thresholds").exists()
    code, output = _cli(*args, "--force-detector", mirror=mirror)
    assert code == 0, output
    assert "rejected" in output or "accepted" in output


def test_an_empty_folder_set_is_refused_before_anything_is_scored(
    run_copy: Path, tmp_path: Path, mirror: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = _cli(
        "evaluate", str(run_copy), "--ood", f"folder:{empty}", "--limit", "8",
        "--train-limit", "8", mirror=mirror,
    )  # fmt: skip
    assert code == 2 and _one_line_error(output) and "no images" in output, output
    assert not (run_copy / SCORES_DIR).exists()


@pytest.mark.parametrize("command", ["evaluate", "score"])
def test_iwae_on_a_flow_is_refused_before_anything_is_scored(
    run_copy: Path, mirror: Path, command: str
) -> None:
    extra = ["--ood", "mnist", "--train-limit", "8"] if command == "evaluate" else []
    code, output = _cli(
        command, str(run_copy), *extra, "--limit", "8", "--iwae-k", "4", mirror=mirror
    )
    assert code == 2 and _one_line_error(output) and "importance-weighted" in output, output
    assert not (run_copy / SCORES_DIR).exists()


# --- 13. one broken file does not take the others down --------------------------------------


def test_one_broken_result_does_not_stop_the_other_reports(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    for name in ("first", "second", "broken"):
        folder = reports / name
        folder.mkdir(parents=True)
        table = Table("metrics", "Metrics", ["score", "AUROC"], [["nll", 0.1]])
        StudyResult(name, f"Question {name}?", "F.", [table]).write(folder)
    (reports / "broken" / "result.json").write_text('{"study": "x", "title": ')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pages = rebuild_reports(reports)
    assert {p.parent.name for p in pages[1:]} == {"first", "second"}
    assert any("broken" in str(w.message) for w in caught)
    code, output = _cli("report", str(reports))
    assert code == 0, output
    assert "broken" in output and "not a valid study result" in output and "Traceback" not in output
    assert "first" in output and "second" in output


def test_skip_unreadable_lists_the_files_it_skipped(
    run_copy: Path, tmp_path: Path, mirror: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        _png(photos / f"good{i}.png", value=40 * i)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = [
        "evaluate", str(run_copy), "--ood", f"folder:{photos}", "--limit", "8",
        "--train-limit", "8", "--score", "nll", "--out-dir", str(tmp_path / "eval"),
    ]  # fmt: skip
    code, output = _cli(*args, mirror=mirror)
    assert code == 2 and _one_line_error(output) and "broken.png" in output, output
    assert "--skip-unreadable" in output
    code, output = _cli(*args, "--skip-unreadable", mirror=mirror)
    assert code == 0, output
    assert "skipped 1 unreadable" in output and "broken.png" in output
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    sets = next(t for t in result["tables"] if t["name"] == "bits_per_dim")
    assert [row[2] for row in sets["rows"] if row[1] == "ood"] == [3]
