"""Data-parallel training (2 CPU processes, gloo) matches one process on the same global batch."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from dgmood.config import DataConfig, ExecutionConfig, RunConfig, TrainConfig
from dgmood.data.imageset import ImageSet
from dgmood.data.loading import DataSources
from dgmood.models.registry import resolve_model
from dgmood.reporting.runs_table import summarize_run
from dgmood.runs import load_checkpoint, read_metrics
from dgmood.training.launch import train_or_reuse
from dgmood.training.loop import TrainResult, train

# float32 throughout; the only difference between the runs is the order of float sums
# (two half-batch gradient means averaged by all-reduce vs one full-batch mean, and
# all-reduced actnorm statistics), ~1e-7 relative per step, amplified a little by Adam
ATOL, RTOL = 2e-5, 1e-4


def images(n: int = 96, seed: int = 0) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 200, 16).view(1, 1, 1, 16)
    noise = torch.randint(0, 56, (n, 1, 16, 16), generator=generator)
    shift = torch.randint(0, 2, (n, 1, 1, 1), generator=generator) * 100
    pixels = ((ramp + noise + shift) % 256).to(torch.uint8)
    return ImageSet("synthetic", "train", pixels, torch.zeros(n, dtype=torch.long))


def run_config(steps: int) -> RunConfig:
    return RunConfig(
        model=resolve_model("glow", "tiny"),
        data=DataConfig(image_size=16, channels=1, val_size=32),
        train=TrainConfig(
            steps=steps,
            batch_size=16,
            warmup_steps=2,
            eval_every=3,
            checkpoint_every=3,
            log_every=1,
        ),
        execution=ExecutionConfig(channels_last=False),
    )


def train_synthetic(config: RunConfig, run_dir: Path | str, **kwargs: Any) -> TrainResult:
    """``train`` on CPU, quietly, on the synthetic train and validation images."""
    return train(
        config,
        run_dir,
        device="cpu",
        progress=False,
        train_set=images(),
        val_set=images(32, seed=1),
        **kwargs,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join_params(rank: int, world_size: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def _train_parallel(parallel: Any, run_dir: Path, steps: int, resume: bool = False) -> None:
    train_synthetic(run_config(steps), run_dir, resume=resume, parallel=parallel)


def _train_loading_by_name(rank: int, parallel: Any, out: Path, mirror: str) -> None:
    """Train on FashionMNIST loaded by name into a data dir that starts empty.

    Each rank logs when it starts and ends loading a split (rank 0 as a slow first download)
    and what it loaded; an error is written down instead of raised, for the test to read.
    """
    from dgmood.data.loading import DataSources

    out.mkdir(parents=True, exist_ok=True)
    read = DataSources.load_like

    def logged_load_like(self: DataSources, name: str, split: str, data: DataConfig) -> ImageSet:
        with open(out / "events.log", "a") as log:
            log.write(f"start {rank} {split}\n")
        images = read(self, name, split, data)
        if rank == 0:
            time.sleep(1.0)  # a slow download: every other rank must wait for it
        digest = hashlib.sha256(images.images.numpy().tobytes()).hexdigest()
        with open(out / "events.log", "a") as log:
            log.write(f"end {rank} {split}\n")
        (out / f"data-{rank}-{split}.sha256").write_text(digest)
        return images

    DataSources.load_like = logged_load_like  # type: ignore[method-assign]
    config = RunConfig(
        model=resolve_model("glow", "tiny"),
        data=DataConfig(train_limit=32, val_size=16),
        train=TrainConfig(steps=1, batch_size=16, eval_every=0),
        execution=ExecutionConfig(channels_last=False),
    )
    try:
        train(
            config,
            out / "run",
            sources=DataSources(data_dir=str(out / "data"), mirror=mirror),
            device="cpu",
            progress=False,
            parallel=parallel,
        )
    except Exception as error:
        (out / f"error-{rank}.txt").write_text(f"{type(error).__name__}: {error}")
    finally:
        DataSources.load_like = read  # type: ignore[method-assign]


def _group_worker(rank: int, world_size: int, port: int, folder: str, mirror: str) -> None:
    """One rank of the module's one 2-process gloo group; it runs every scenario in turn.

    Spawning interpreters and joining a group costs seconds each time, so the scenarios share
    one group: the equivalence run, the interrupted-then-resumed run, and data loading by
    name with a mirror and with an empty one (both ranks stop, the group stays usable).
    """
    from dgmood.training.distributed import setup, teardown

    torch.set_num_threads(1)
    _join_params(rank, world_size, port)
    out = Path(folder)
    parallel = setup("gloo")
    try:
        _train_parallel(parallel, out / "parallel", 6)
        # interrupted after 3 steps, resumed by both ranks from rank 0's checkpoint
        _train_parallel(parallel, out / "resumed", 3)
        if parallel.is_writer:
            (out / "after-3").mkdir()
            shutil.copy(out / "resumed" / "model.safetensors", out / "after-3")
        parallel.barrier()
        _train_parallel(parallel, out / "resumed", 6, resume=True)
        _train_loading_by_name(rank, parallel, out / "loading", mirror)
        empty_mirror = out / "empty-mirror"
        empty_mirror.mkdir(exist_ok=True)
        _train_loading_by_name(rank, parallel, out / "loading-fails", str(empty_mirror))
        (out / f"done-{rank}").touch()
    finally:
        teardown()


@pytest.fixture(scope="module")
def gloo_group(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    """The folder the module's one 2-process group wrote every scenario into.

    A rank left waiting for another fails the tests instead of hanging them.
    """
    folder = tmp_path_factory.mktemp("gloo")
    timeout = 300.0
    context = mp.spawn(
        _group_worker, args=(2, _free_port(), str(folder), str(mirror)), nprocs=2, join=False
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {timeout} s (one waits for the other)")
    assert (folder / "done-0").exists() and (folder / "done-1").exists()
    return folder


def test_rank_0_prepares_the_data_before_the_others_read_it(gloo_group: Path, mirror: Path) -> None:
    out = gloo_group / "loading"
    assert not list(out.glob("error-*.txt"))
    events = (out / "events.log").read_text().split("\n")[:-1]
    ranks = [int(line.split()[1]) for line in events]
    assert ranks == sorted(ranks), events  # rank 1 started loading after rank 0 had finished
    assert ranks.count(0) == ranks.count(1) == 4  # train and test split each
    for split in ("train", "test"):
        digests = {(out / f"data-{r}-{split}.sha256").read_text() for r in (0, 1)}
        assert len(digests) == 1, split  # both ranks hold the same images
    files = [p for p in (out / "data").rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.name.endswith(".part")]
    for packed in (out / "data").rglob("*.gz"):
        expected = (mirror / "fashion-mnist" / packed.name).read_bytes()
        assert packed.read_bytes() == expected, packed


def test_every_rank_stops_when_rank_0_cannot_load_the_data(gloo_group: Path) -> None:
    out = gloo_group / "loading-fails"
    assert "fashion-mnist" in (out / "error-0.txt").read_text()
    assert (out / "events.log").read_text() == "start 0 train\n"  # rank 1 read nothing
    assert "rank 0 could not load the data" in (out / "error-1.txt").read_text()


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], atol=ATOL, rtol=RTOL, msg=key)


@pytest.mark.slow
def test_two_processes_match_one_on_the_same_global_batch(tmp_path: Path, gloo_group: Path) -> None:
    single, parallel = tmp_path / "single", gloo_group / "parallel"
    torch.set_num_threads(1)
    train_synthetic(run_config(6), single)
    assert_same_weights(single, parallel)
    single_log, parallel_log = read_metrics(single), read_metrics(parallel)
    assert [r["step"] for r in parallel_log] == [r["step"] for r in single_log]
    for s, p in zip(single_log, parallel_log, strict=True):
        for key in ("loss", "val_bpd"):
            if key in s:
                assert p[key] == pytest.approx(s[key], rel=1e-5), (key, s["step"])
    # interrupted after 3 steps, resumed by both ranks from rank 0's checkpoint: the
    # tolerance tells 3 steps from 6, so the comparisons above are not vacuous
    with pytest.raises(AssertionError):
        assert_same_weights(single, gloo_group / "after-3")
    assert_same_weights(single, gloo_group / "resumed")


def test_time_budget_stops_with_a_checkpoint_and_resumes(tmp_path: Path) -> None:
    """A budget that is already spent stops after the first step, checkpointed."""
    import dataclasses

    config = run_config(6)
    budgeted = dataclasses.replace(
        config, execution=dataclasses.replace(config.execution, budget_minutes=1e-9)
    )
    result = train_synthetic(budgeted, tmp_path / "run")
    assert result.step == 1
    assert load_checkpoint(tmp_path / "run").step == 1
    # a run its budget ended is finished: validated, listed as done, reused as it is
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "val_bpd" in r] == [1]
    assert summarize_run(tmp_path / "run").status == "done"
    assert (
        train_or_reuse(budgeted, tmp_path / "run", sources=DataSources(str(tmp_path / "none")))
        is False
    )
    resumed = train_synthetic(config, tmp_path / "run", resume=True)
    assert resumed.step == 6
    straight = train_synthetic(config, tmp_path / "straight")
    assert straight.step == 6
    assert_same_weights(tmp_path / "run", tmp_path / "straight")


def test_bf16_training_tracks_fp32(tmp_path: Path) -> None:
    """execution.precision=auto trains (bf16 where native) to nearly the fp32 losses."""
    import dataclasses

    config = run_config(4)
    losses = {}
    for precision in ("fp32", "auto"):
        cfg = dataclasses.replace(
            config, execution=dataclasses.replace(config.execution, precision=precision)
        )
        result = train_synthetic(cfg, tmp_path / precision)
        losses[precision] = [r["loss"] for r in result.history if "loss" in r]
    assert losses["auto"] == pytest.approx(losses["fp32"], rel=2e-2)


def test_bf16_training_is_refused_for_models_not_checked_under_it(tmp_path: Path) -> None:
    import dataclasses

    config = dataclasses.replace(
        run_config(2),
        model=resolve_model("pixelcnnpp", "tiny"),
        execution=dataclasses.replace(run_config(2).execution, precision="bf16"),
    )
    with pytest.raises(ValueError, match="only supported for families checked.*glow"):
        train(config, tmp_path / "run", device="cpu", progress=False, train_set=images())
    assert not (tmp_path / "run").exists()  # nothing half-written is left behind
