"""Training survives SIGKILL anywhere, refuses what it cannot trust, never mixes two runs.

Every kill here is a real SIGKILL of a real process; every resume must end bit-identical
(``torch.equal`` on every tensor, and the same logged losses) to an uninterrupted run.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Child, TinyData, assert_bit_identical, tiny_glow

import dgmood.runs
from dgmood.config import RunConfig
from dgmood.inference import score_images
from dgmood.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    RunDirError,
    load_checkpoint,
    load_run,
    read_metrics,
    read_model_metadata,
)
from dgmood.training import TrainingDivergedError, train

STEPS = 40  # of the runs that are killed and resumed; ~40 ms each


def _train(config: RunConfig, run_dir: Path, data: TinyData, resume: bool) -> None:
    torch.set_num_threads(1)
    train(
        config,
        run_dir,
        resume=resume,
        progress=False,
        train_set=data.train_set,
        val_set=data.val_set,
    )


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


def _validations(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["val_bpd"]) for r in read_metrics(run_dir) if "val_bpd" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Path:
    """The uninterrupted run every interrupted one is compared with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    _train(tiny_glow(STEPS), run_dir, tiny_data, resume=False)
    return run_dir


def _files_lost(run_dir: Path) -> int:
    """Run files that exist but cannot be loaded (must always be 0 after a kill)."""
    lost = 0
    if (run_dir / MODEL_FILE).exists():
        try:
            load_run(run_dir)
        except RunDirError:
            lost += 1
    if (run_dir / CHECKPOINT_FILE).exists():
        try:
            load_checkpoint(run_dir)
        except RunDirError:
            lost += 1
    return lost


def _assert_same_as_reference(run_dir: Path, reference: Path) -> None:
    assert_bit_identical(run_dir / MODEL_FILE, reference / MODEL_FILE)
    assert_bit_identical(run_dir / CHECKPOINT_FILE, reference / CHECKPOINT_FILE)
    assert _losses(run_dir) == _losses(reference)  # one record per step, same values
    assert _validations(run_dir) == _validations(reference)
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".part")]


def test_random_sigkills_during_training_then_resume_end_bit_identical(
    tmp_path: Path, tiny_data: TinyData, reference: Path
) -> None:
    config, run_dir = tiny_glow(STEPS), tmp_path / "run"
    rng = random.Random(2019)
    kills, lost, steps_at_kill = 0, 0, [0]
    max_delay = 0.1  # seconds; grows while kills land before any progress (a busy machine)
    while kills < 24:
        resume = (run_dir / CONFIG_FILE).exists()
        child = Child(_train, config, run_dir, tiny_data, resume, error_file=tmp_path / "err")
        time.sleep(rng.uniform(0.0, max_delay))
        child.kill()
        code = child.wait()
        assert code in (-signal.SIGKILL, 0), child.error
        if code == 0:
            break  # finished before the kill landed (then too few kills: the test fails)
        kills += 1
        lost += _files_lost(run_dir)
        step = load_run(run_dir).step if (run_dir / MODEL_FILE).exists() else 0
        max_delay = 0.1 if step > steps_at_kill[-1] else min(2 * max_delay, 2.0)
        steps_at_kill.append(step)
    resume = (run_dir / CONFIG_FILE).exists()
    _train(config, run_dir, tiny_data, resume=resume)
    assert kills >= 20 and lost == 0
    assert len(set(steps_at_kill)) > 3  # the kills landed at many different steps
    _assert_same_as_reference(run_dir, reference)


def _kill_on_call(module: Any, name: str, call: int, before: bool) -> None:
    """Make ``module.name`` SIGKILL this process on its ``call``-th call."""
    original, calls = getattr(module, name), [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == call and before:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, name, wrapper)


def _train_killed_at(
    config: RunConfig, run_dir: Path, data: TinyData, resume: bool, point: str, call: int
) -> None:
    if point == "between checkpoint and model":
        _kill_on_call(dgmood.runs, "save_model", call, before=True)
    elif point == "checkpoint written, not renamed":  # leaves a complete .part file behind
        _kill_on_call(dgmood.runs, "save_file", call, before=False)
    elif point == "mid-write":
        original = dgmood.runs.save_file

        def half_write(tensors: Any, filename: str, metadata: Any = None) -> None:
            original(tensors, filename, metadata=metadata)
            size = os.path.getsize(filename)
            os.truncate(filename, size // 2)  # the page cache had half of it when we died
            os.kill(os.getpid(), signal.SIGKILL)

        calls = [0]

        def maybe_half_write(tensors: Any, filename: str, metadata: Any = None) -> None:
            calls[0] += 1
            if calls[0] == call:
                half_write(tensors, filename, metadata)
            original(tensors, filename, metadata=metadata)

        dgmood.runs.save_file = maybe_half_write  # type: ignore[assignment]
    _train(config, run_dir, data, resume)


@pytest.mark.parametrize(
    "point", ["between checkpoint and model", "checkpoint written, not renamed", "mid-write"]
)
def test_sigkill_inside_checkpoint_writes_then_resume_ends_bit_identical(
    tmp_path: Path, tiny_data: TinyData, reference: Path, point: str
) -> None:
    config, run_dir = tiny_glow(STEPS), tmp_path / "run"
    kills, lost = 0, 0
    for call in (3, 8, 5, 2):  # which tensor-file write dies, counted within each process
        resume = (run_dir / CONFIG_FILE).exists()
        child = Child(
            _train_killed_at, config, run_dir, tiny_data, resume, point, call,
            error_file=tmp_path / "err",
        )  # fmt: skip
        assert child.wait() == -signal.SIGKILL, child.error
        kills += 1
        lost += _files_lost(run_dir)
        if point != "between checkpoint and model":
            assert [p for p in run_dir.iterdir() if p.name.endswith(".part")]  # left behind
    _train(config, run_dir, tiny_data, resume=True)
    assert kills == 4 and lost == 0
    _assert_same_as_reference(run_dir, reference)  # also: no .part file left


def test_two_processes_training_into_one_new_run_dir(tmp_path: Path, tiny_data: TinyData) -> None:
    run_dir = tmp_path / "run"
    children = [
        Child(
            _train,
            tiny_glow(STEPS, seed=s),
            run_dir,
            tiny_data,
            False,
            error_file=tmp_path / f"e{s}",
        )
        for s in (0, 1)
    ]
    codes = [child.wait() for child in children]
    assert sorted(codes) == [0, 3], [c.error for c in children]
    loser = children[codes.index(3)]
    # refused by the lock, or (if the winner had written config.yaml) by the non-empty check
    assert "RunDirError" in loser.error
    assert "in use" in loser.error or "already exists" in loser.error
    assert "Traceback" not in loser.error.splitlines()[0]
    winner_seed = codes.index(0)
    stored = RunConfig.load(run_dir / CONFIG_FILE)
    in_model = RunConfig.from_yaml(read_model_metadata(run_dir / MODEL_FILE)["config"])
    assert stored.train.seed == in_model.train.seed == winner_seed
    steps = [step for step, _ in _losses(run_dir)]
    assert steps == list(range(1, STEPS + 1))  # one record per step


def test_a_second_process_cannot_resume_a_run_being_trained(
    tmp_path: Path, tiny_data: TinyData
) -> None:
    run_dir = tmp_path / "run"
    _train(tiny_glow(steps=2), run_dir, tiny_data, resume=False)
    first = Child(_train, tiny_glow(steps=400), run_dir, tiny_data, True, error_file=tmp_path / "a")
    time.sleep(0.3)
    second = Child(
        _train, tiny_glow(steps=400), run_dir, tiny_data, True, error_file=tmp_path / "b"
    )
    assert second.wait() == 3 and "in use" in second.error
    first.kill()
    first.wait()
    # the lock died with its process: the run continues
    _train(tiny_glow(steps=4), run_dir, tiny_data, resume=True)
    assert load_run(run_dir).step >= 4


class _WritesMarker:
    """A pickle payload that, when unpickled, creates a file (arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["training_state.pt", CHECKPOINT_FILE])
def test_resume_never_unpickles_a_run_file(tmp_path: Path, tiny_data: TinyData, name: str) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    _train(tiny_glow(steps=2), run_dir, tiny_data, resume=False)
    (run_dir / CHECKPOINT_FILE).unlink()
    payload = {"step": 1, "optimizer": _WritesMarker(marker)}
    (run_dir / name).write_bytes(pickle.dumps(payload))
    torch.save(payload, run_dir / "also-a-pickle.pt")
    with pytest.raises(RunDirError, match=name.replace(".", r"\.")):
        _train(tiny_glow(steps=4), run_dir, tiny_data, resume=True)
    assert not marker.exists()
    assert load_run(run_dir).step == 2  # the model was not touched


def test_resume_without_a_checkpoint_refuses_and_changes_nothing(
    tmp_path: Path, tiny_data: TinyData
) -> None:
    run_dir = tmp_path / "run"
    _train(tiny_glow(steps=3), run_dir, tiny_data, resume=False)
    (run_dir / CHECKPOINT_FILE).unlink()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(RunDirError, match="no checkpoint"):
        _train(tiny_glow(steps=6), run_dir, tiny_data, resume=True)
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}


def test_divergence_keeps_only_a_checkpoint_with_finite_weights_and_loss(
    tmp_path: Path, tiny_data: TinyData
) -> None:
    run_dir = tmp_path / "run"
    config = tiny_glow(steps=40, lr=1.0, warmup_steps=0, eval_every=0)
    with pytest.raises(TrainingDivergedError) as caught:
        _train(config, run_dir, tiny_data, resume=False)
    message = str(caught.value)
    assert "Lower train.lr or train.grad_clip" in message and "raise train.warmup_steps" in message
    run = load_run(run_dir)
    kept = load_checkpoint(run_dir)
    assert kept.step == run.step and f"checkpoint (step {run.step})" in message
    stats = score_images(run.model, tiny_data.train_set.images[:32])
    assert bool(torch.isfinite(torch.from_numpy(stats["bits_per_dim"])).all())
    assert all(bool(torch.isfinite(v).all()) for v in kept.model_state.values())


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(
    tmp_path: Path, tiny_data: TinyData, reference: Path
) -> None:
    run_dir = tmp_path / "run"
    child = Child(
        _train_killed_at, tiny_glow(STEPS), run_dir, tiny_data, False, "mid-write", 1,
        error_file=tmp_path / "err",
    )  # fmt: skip
    assert child.wait() == -signal.SIGKILL, child.error
    assert (run_dir / CONFIG_FILE).exists() and not (run_dir / CHECKPOINT_FILE).exists()
    _train(tiny_glow(STEPS), run_dir, tiny_data, resume=True)
    _assert_same_as_reference(run_dir, reference)
