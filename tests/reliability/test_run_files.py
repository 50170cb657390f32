"""Damaged run files, invalid configs and user mistakes: one clear error, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TinyData, tiny_glow, train_tiny
from typer.testing import CliRunner

from dgmood.cli.main import app
from dgmood.config import DataConfig, TrainConfig, replace_path
from dgmood.inference import SCORES_DIR, score_cached
from dgmood.runs import CHECKPOINT_FILE, MODEL_FILE, RunDirError, load_run

runner = CliRunner()


def _flip_bytes(path: Path, at: float) -> None:
    data = bytearray(path.read_bytes())
    position = int(len(data) * at)
    data[position : position + 4] = bytes(b ^ 0xFF for b in data[position : position + 4])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [_flip_bytes, _truncate], ids=["flipped", "truncated"])
def test_a_damaged_model_file_is_one_clear_error_naming_it(run_copy: Path, damage: object) -> None:
    path = run_copy / MODEL_FILE
    if damage is _flip_bytes:
        _flip_bytes(path, 0.8)  # inside the tensor data: it still parses
    else:
        _truncate(path)
    with pytest.raises(RunDirError, match=MODEL_FILE.replace(".", r"\.") + ".*corrupt"):
        load_run(run_copy)
    result = runner.invoke(app, ["score", str(run_copy), "--limit", "8"])
    assert result.exit_code == 2 and "corrupt" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("damage", ["flipped", "truncated", "garbage"])
def test_a_damaged_checkpoint_refuses_to_resume(
    run_copy: Path, tiny_data: TinyData, damage: str
) -> None:
    path = run_copy / CHECKPOINT_FILE
    if damage == "flipped":
        _flip_bytes(path, 0.6)
    elif damage == "truncated":
        _truncate(path)
    else:
        path.write_bytes(os.urandom(5000))
    with pytest.raises(RunDirError, match=CHECKPOINT_FILE.replace(".", r"\.")):
        train_tiny(tiny_glow(steps=6), run_copy, tiny_data, resume=True)
    assert load_run(run_copy).step == 3  # nothing was overwritten


def test_a_damaged_score_cache_is_recomputed(run_copy: Path, tiny_data: TinyData) -> None:
    run = load_run(run_copy)
    fresh = score_cached(run.model, tiny_data.val_set, run_copy, step=run.step, progress=False)
    (cache,) = (run_copy / SCORES_DIR).iterdir()
    _truncate(cache)
    again = score_cached(run.model, tiny_data.val_set, run_copy, step=run.step, progress=False)
    assert fresh.keys() == again.keys()
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], again[key])
    with np.load(cache) as stored:  # and the cache file was rewritten whole
        np.testing.assert_array_equal(stored["bits_per_dim"], fresh["bits_per_dim"])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.batch_size", "0", "train.batch_size must be >= 1"),
        ("train.log_every", "0", "train.log_every must be >= 1"),
        ("train.steps", "0", "train.steps must be >= 1"),
        ("train.steps", "-3", "train.steps must be >= 1"),
        ("train.lr", "-1", "train.lr must be > 0"),
        ("train.lr", "0", "train.lr must be > 0"),
        ("train.lr", ".nan", "train.lr must be finite"),
        ("model.hidden_channels", "0", "model.hidden_channels must be >= 1"),
        ("train.batch_size", "eight", "batch_size"),
        ("train.optimizer", "adamw", "optimizer"),
        ("data.channels", "2", "data.channels must be 1 or 3"),
    ],
)
def test_invalid_values_are_rejected_naming_the_field(key: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        replace_path(tiny_glow(), key, value)


def test_configs_built_in_python_are_checked_too() -> None:
    with pytest.raises(ValueError, match="train.batch_size"):
        TrainConfig(batch_size="8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data.image_size must be >= 1"):
        DataConfig(image_size=0)


def test_a_config_the_model_cannot_be_built_from_leaves_no_run_dir(
    tmp_path: Path, tiny_data: TinyData
) -> None:
    config = replace_path(tiny_glow(), "model.n_levels", "10")  # 32 px cannot squeeze 10 times
    with pytest.raises(ValueError, match="cannot build a glow model"):
        train_tiny(config, tmp_path / "run", tiny_data)
    assert not (tmp_path / "run").exists()
    train_tiny(tiny_glow(steps=2), tmp_path / "run", tiny_data)  # the retry is not blocked


def test_cli_mistakes_are_one_line_each(tmp_path: Path, trained: Path, mirror: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [family: glow\n  oops")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {
        ("train", "--config", str(tmp_path)): "is a directory",
        ("train", "--config", str(bad_yaml)): "not valid YAML",
        ("train", "glow", "--preset", "tiny", "--run-dir", str(a_file)): "is a file",
        ("train", "--resume", "--run-dir", str(tmp_path / "missing")): "does not exist",
        ("train", "glow", "--set", "train.lr=-1", "--run-dir", str(tmp_path / "r")): "train.lr",
    }
    for args, message in cases.items():
        result = runner.invoke(app, [*args, "--no-progress", "--mirror", str(mirror)])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, args
    assert not (tmp_path / "r").exists()


def test_the_config_mismatch_hint_is_a_command_that_works(run_copy: Path, mirror: Path) -> None:
    parts = run_copy / ".model.safetensors.x1y2.part"
    parts.write_bytes(b"")  # left by a SIGKILLed writer
    args = ["--no-progress", "--mirror", str(mirror)]
    other = run_copy.parent / "other.yaml"
    other.write_text(runner.invoke(app, ["config", "glow", "--preset", "tiny"]).output)
    mismatched = runner.invoke(
        app, ["train", "--config", str(other), "--resume", "--run-dir", str(run_copy), *args]
    )
    assert mismatched.exit_code == 2 and "differs" in mismatched.output
    hint = mismatched.output.split("resume with its stored config: ")[1].split(" (")[0].split()
    assert hint[:2] == ["dgmood", "train"]
    result = runner.invoke(app, [*hint[1:], "--set", "train.steps=4", *args])
    assert result.exit_code == 0, result.output
    assert load_run(run_copy).step == 4
    assert not parts.exists()  # opening the run for training cleaned it up


def test_ctrl_c_while_scoring_exits_130_and_leaves_no_partial_file(
    trained: Path, mirror: Path
) -> None:
    command = [
        sys.executable, "-m", "dgmood.cli.main", "score", str(trained), "--dataset", "mnist",
        "--limit", "4000", "--batch-size", "2", "--mirror", str(mirror),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = bytearray()
    scoring = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        while chunk := os.read(process.stdout.fileno(), 256):
            output.extend(chunk)
            if b"score mnist" in output:
                scoring.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert scoring.wait(60), bytes(output).decode()
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
    reader.join(10)
    text = bytes(output).decode()
    assert "interrupted" in text and "Traceback" not in text
    scores = trained / SCORES_DIR
    assert not scores.exists() or not [p for p in scores.iterdir() if p.name.endswith(".part")]
