"""``dgmood train --nproc N``: the data-parallel path through torch's own launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dgmood.config import RunConfig, apply_overrides
from dgmood.data.loading import DataSources
from dgmood.presets import run_preset
from dgmood.training import train
from dgmood.training.launch import launch_command, train_processes

SETTINGS = [
    "data.train_limit=64",
    "data.val_size=32",
    "train.steps=4",
    "train.batch_size=16",
    "train.eval_every=2",
    "train.checkpoint_every=2",
    "execution.channels_last=false",
]


@pytest.mark.slow
def test_train_nproc_2_matches_one_process(tmp_path: Path, mirror: Path) -> None:
    """The installed command launches two gloo processes that train the same weights as one
    process on the same global batch (to float summation order)."""
    dgmood = Path(sys.executable).with_name("dgmood")
    args = [str(dgmood), "train", "glow", "--preset", "tiny", "--nproc", "2", "--no-progress"]
    args += ["--run-dir", str(tmp_path / "two"), "--mirror", str(mirror)]
    for setting in SETTINGS:
        args += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trained 4 steps" in done.stdout

    config = apply_overrides(run_preset("glow", "tiny", "fashion-mnist"), SETTINGS)
    assert RunConfig.load(tmp_path / "two" / "config.yaml").same_run(config)
    torch.set_num_threads(1)
    train(config, tmp_path / "one", sources=DataSources(mirror=str(mirror)), progress=False)
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    assert two.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-5, msg=key)


def test_launch_refuses_before_starting_anything(tmp_path: Path) -> None:
    config = run_preset("glow", "tiny")  # batch 16
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        train_processes(config, tmp_path / "run", nproc=3)
    with pytest.raises(ValueError, match="--nproc must be >= 1"):
        train_processes(config, tmp_path / "run", nproc=0)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(RuntimeError, match="not empty"):
        train_processes(config, tmp_path / "taken", nproc=2)
    assert not (tmp_path / "run").exists()


def test_launch_command_is_torchs_own_launcher(tmp_path: Path) -> None:
    command = launch_command(
        tmp_path / "c.yaml",
        tmp_path / "run",
        4,
        resume=True,
        sources=DataSources(data_dir="/d", mirror="/m", download=True),
        progress=False,
    )
    assert command[:5] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
    ]
    assert command[5:9] == [
        "-m",
        "dgmood.training.distributed",
        str(tmp_path / "c.yaml"),
        str(tmp_path / "run"),
    ]
    assert command[9:] == [
        "--resume",
        "--data-dir",
        "/d",
        "--mirror",
        "/m",
        "--download",
        "--no-progress",
    ]
