"""Training in N processes through torch's own launcher, from the library or the CLI.

``dgmood train ... --nproc N`` and a study's run-obtaining step (``StudyContext.nproc``) call
:func:`train_processes`, which writes the config beside nothing else, starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m
dgmood.training.distributed CONFIG RUN_DIR`` and waits for it: the same data-parallel path a
user with a multi-GPU box or a cluster allocation starts with ``torchrun`` themselves (one
process per GPU with NCCL, or gloo on CPUs). ``nproc=1`` trains in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dgmood.config import RunConfig
from dgmood.data.loading import DataSources
from dgmood.runs import (
    CONFIG_FILE,
    MODEL_FILE,
    check_run_dir,
    is_finished,
    load_run,
    read_model_metadata,
)
from dgmood.training.loop import TrainResult, train


class LaunchError(RuntimeError):
    """The launched training processes failed; their output was printed above."""


def launch_command(
    config_path: Path,
    run_dir: Path,
    nproc: int,
    *,
    resume: bool,
    sources: DataSources,
    progress: bool,
) -> list[str]:
    """The torch launcher command line for ``nproc`` processes training ``config_path``."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "dgmood.training.distributed",
        str(config_path),
        str(run_dir),
    ]
    if resume:
        command.append("--resume")
    if sources.data_dir:
        command += ["--data-dir", sources.data_dir]
    if sources.mirror:
        command += ["--mirror", sources.mirror]
    if sources.download:
        command.append("--download")
    if not progress:
        command.append("--no-progress")
    return command


def train_processes(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    nproc: int = 1,
    sources: DataSources | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``config`` into ``run_dir`` with ``nproc`` data-parallel processes.

    ``nproc=1`` is :func:`dgmood.training.train` in this process. With more, the global batch
    (``train.batch_size``) is split evenly over the processes, so it must divide by
    ``nproc``; the run directory is checked here first, so a refused run starts nothing.
    """
    run_dir = Path(run_dir)
    sources = sources or DataSources()
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return train(config, run_dir, sources=sources, resume=resume, progress=progress)
    if config.train.batch_size % nproc:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} does not split evenly over {nproc} "
            "processes; choose a multiple of --nproc"
        )
    check_run_dir(run_dir, resume)
    with tempfile.TemporaryDirectory(prefix="dgmood-launch-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config.save(config_path)
        command = launch_command(
            config_path, run_dir, nproc, resume=resume, sources=sources, progress=progress
        )
        env = dict(os.environ)
        # one intra-op thread per process unless the config asks otherwise: N processes of
        # all-core thread pools would oversubscribe the CPU
        if config.execution.num_threads == 0 and not _has_cuda():
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        completed = subprocess.run(command, env=env, check=False)
    if completed.returncode != 0:
        raise LaunchError(
            f"the {nproc} training processes exited with status {completed.returncode} (their "
            f"output is above); the run directory is {run_dir}"
        )
    run = load_run(run_dir)
    model = run.model
    return TrainResult(run_dir, model, run.step)


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def train_or_reuse(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    sources: DataSources | None = None,
    resume: bool = False,
    progress: bool = True,
    nproc: int = 1,
) -> bool:
    """Train ``config`` into ``run_dir`` unless a finished run of the same identity is there.

    Returns True when it trained. Only what is trained counts (:meth:`RunConfig.same_run`):
    a finished run is reused whatever the execution settings it was or is now asked with. A
    run stopped by its ``execution.budget_minutes`` is finished. An unfinished run is
    continued only with ``resume=True``; a finished run of a different identity is an error
    (it is never overwritten).
    """
    run_dir = Path(run_dir)
    if (run_dir / MODEL_FILE).exists() and (run_dir / CONFIG_FILE).exists() and not resume:
        stored = RunConfig.load(run_dir / CONFIG_FILE)
        metadata = read_model_metadata(run_dir / MODEL_FILE)
        if stored.same_run(config) and is_finished(metadata, config.train.steps):
            return False
    train_processes(config, run_dir, nproc=nproc, sources=sources, resume=resume, progress=progress)
    return True
