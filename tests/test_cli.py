"""The command line, end to end on real data: train -> score -> evaluate, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dgmood.cli.main import app
from dgmood.reporting.runs_table import summarize_run
from tests.run_dirs import find_run

runner = CliRunner()


def invoke(*args: str) -> object:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_train_score_evaluate_reproduce_tiny(tmp_path: Path, mirror: Path) -> None:
    run = tmp_path / "run"
    common = ["--mirror", str(mirror)]
    result = invoke(
        "train",
        "cv-glow",
        "--preset",
        "tiny",
        "--run-dir",
        str(run),
        "--set",
        "train.steps=6",
        "--set",
        "data.train_limit=256",
        "--set",
        "data.val_size=64",
        "--no-progress",
        *common,
    )
    assert result.exit_code == 0, result.output
    assert "trained 6 steps" in result.output

    result = invoke("score", str(run), "--dataset", "mnist", "--limit", "50", *common)
    assert result.exit_code == 0, result.output
    assert "bits_per_dim" in result.output and "log_abs_det_jacobian" in result.output
    assert len(list((run / "scores").glob("*.npz"))) == 1

    out = tmp_path / "eval"
    result = invoke(
        "evaluate",
        str(run),
        "--ood",
        "mnist",
        "--limit",
        "100",
        "--train-limit",
        "100",
        "--out-dir",
        str(out),
        *common,
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "result.json").read_text())
    sets = next(t for t in results["tables"] if t["name"] == "bits_per_dim")
    assert [row[1] for row in sets["rows"]] == ["in-train", "in-test", "ood"]
    assert [row[2] for row in sets["rows"]] == [100, 100, 100]
    metrics = next(m for m in results["data"]["metrics"] if m["score"] == "nll")
    assert (metrics["n_in"], metrics["n_out"]) == (100, 100)
    low, high = metrics["ci"]["auroc"]
    assert low <= metrics["auroc"] <= high and high - low < 0.4  # 100 vs 100: +-0.08 or so
    csv_lines = (out / "ood_metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("score,in-distribution,OOD,AUROC")
    nll_row = next(line.split(",") for line in csv_lines if line.startswith("nll,"))
    assert float(nll_row[3]) == metrics["auroc"] and float(nll_row[8]) == metrics["fpr95_in"]
    assert (out / "bpd_histogram.png").stat().st_size > 10_000
    assert (out / "decomposition.png").exists()

    # the demo command, tiny: trains, scores both test sets, writes the report
    report = tmp_path / "report"
    result = invoke(
        "reproduce",
        "fashion-mnist",
        "--preset",
        "tiny",
        "--steps",
        "4",
        "--budget",
        "60",
        "--set",
        "train.lr=0.0005",
        "--limit",
        "64",
        "--out-dir",
        str(report),
        *common,
    )
    assert result.exit_code == 0, result.output
    assert "AUROC of -log p(x)" in result.output
    run_dir = find_run(report / "runs", "glow-tiny-fashion-mnist")
    assert (run_dir / "model.safetensors").exists()
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (stored["train"]["steps"], stored["train"]["lr"]) == (4, 0.0005)
    assert stored["execution"]["budget_minutes"] == 60.0
    summary = (report / "summary.md").read_text()
    report_results = json.loads((report / "result.json").read_text())
    sets = next(t for t in report_results["tables"] if t["name"] == "bits_per_dim")
    ood_row = sets["rows"][2]
    assert ood_row[:3] == ["mnist-test", "ood", 64]
    assert f"| mnist-test | ood | 64 | {ood_row[3]:.3f} |" in summary


@pytest.mark.slow
def test_train_budget_trains_until_the_budget_unless_steps_cap_it(
    tmp_path: Path, mirror: Path
) -> None:
    common = ["--preset", "tiny", "--set", "data.train_limit=64", "--no-progress"]
    common += ["--mirror", str(mirror)]
    result = invoke("train", "glow", "--run-dir", str(tmp_path / "a"), "--budget", "1e-9", *common)
    assert result.exit_code == 0, result.output
    assert "trained 1 steps" in result.output  # the budget, not the preset's steps, ended it
    config = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert config["train"]["steps"] >= 10**9 and config["execution"]["budget_minutes"] == 1e-9
    assert summarize_run(tmp_path / "a").progress == "1 (budget 1e-09 min)"  # not "1 / 10**9"
    listed = invoke("runs", str(tmp_path))
    assert listed.exit_code == 0 and "budget" in listed.output and "done" in listed.output
    result = invoke(
        "train", "glow", "--run-dir", str(tmp_path / "b"), "--budget", "60",
        "--set", "train.steps=2", *common,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output


@pytest.mark.slow
def test_resuming_with_a_budget_keeps_the_runs_steps(tmp_path: Path, mirror: Path) -> None:
    """``train --resume --budget M`` caps this session's time; it does not turn the stored
    run into an until-the-budget run (that changed its identity, and a study asking for the
    run by identity then refused the folder as someone else's)."""
    common = ["--set", "data.train_limit=64", "--no-progress", "--mirror", str(mirror)]
    run = str(tmp_path / "run")
    first = invoke(
        "train", "glow", "--preset", "tiny", "--run-dir", run, "--budget", "1e-9",
        "--set", "train.steps=40", *common,
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    assert "trained 1 steps" in first.output  # stopped by its budget, 39 steps short
    again = invoke("train", "--resume", "--run-dir", run, "--budget", "1e-9", *common)
    assert again.exit_code == 0, again.output
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["train"]["steps"] == 40
    assert config["execution"]["budget_minutes"] == 1e-9
    from dgmood.runs import load_run

    assert load_run(run).config.train.steps == 40


def test_existing_run_dir_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    result = runner.invoke(
        app, ["train", "glow", "--preset", "tiny", "--run-dir", str(tmp_path / "run")]
    )
    assert result.exit_code == 2
    assert "already exists" in result.output and "Traceback" not in result.output


def test_missing_dataset_is_one_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            "glow",
            "--preset",
            "tiny",
            "--dataset",
            "svhn",
            "--run-dir",
            str(tmp_path / "r"),
            "--data-dir",
            str(tmp_path / "nodata"),
        ],
    )
    assert result.exit_code == 2
    assert "not found" in result.output and "--download" in result.output
    assert not (tmp_path / "r").exists()  # nothing half-made is left behind


def test_bad_override_is_one_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "glow", "--set", "train.lr=fast", "--run-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "expected a number" in result.output


def test_help_explains_commands() -> None:
    result = invoke("--help")
    for command in ("train", "score", "evaluate", "reproduce", "datasets", "models"):
        assert command in result.output


@pytest.mark.slow
def test_vae_scores_with_the_iwae_bound(tmp_path: Path, mirror: Path) -> None:
    run = tmp_path / "vae"
    result = invoke(
        "train",
        "vae",
        "--preset",
        "tiny",
        "--run-dir",
        str(run),
        "--set",
        "train.steps=4",
        "--set",
        "data.train_limit=64",
        "--set",
        "data.val_size=32",
        "--no-progress",
        "--mirror",
        str(mirror),
    )
    assert result.exit_code == 0, result.output
    result = invoke(
        "score",
        str(run),
        "--dataset",
        "mnist",
        "--limit",
        "16",
        "--iwae-k",
        "4",
        "--mirror",
        str(mirror),
    )
    assert result.exit_code == 0, result.output
    assert "iwae_bits_per_dim" in result.output
    out = tmp_path / "eval"
    result = invoke(
        "evaluate",
        str(run),
        "--ood",
        "mnist",
        "--limit",
        "16",
        "--train-limit",
        "16",
        "--iwae-k",
        "4",
        "--out-dir",
        str(out),
        "--mirror",
        str(mirror),
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "result.json").read_text())["settings"]["scoring"]["iwae_k"] == 4


def test_resume_from_the_command_line_and_listings(tmp_path: Path, mirror: Path) -> None:
    run = tmp_path / "run"
    args = ["--run-dir", str(run), "--no-progress", "--mirror", str(mirror)]
    result = invoke(
        "train",
        "glow",
        "--preset",
        "tiny",
        "--set",
        "train.steps=3",
        "--set",
        "data.train_limit=64",
        "--set",
        "data.val_size=16",
        *args,
    )
    assert result.exit_code == 0, result.output
    result = invoke("train", "--resume", "--set", "train.steps=5", *args)
    assert result.exit_code == 0, result.output
    assert "trained 5 steps" in result.output
    listing = invoke("models").output
    assert "cv-glow" in listing and "pixelcnnpp" in listing and "vae-realnvp" in listing
    assert "svhn" in invoke("datasets").output
    config = invoke("config", "glow", "--preset", "paper", "--dataset", "cifar10").output
    assert "hidden_channels: 512" in config and "channels: 3" in config


@pytest.mark.slow
def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tmp_path: Path, mirror: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "dgmood.cli.main",
        "train",
        "glow",
        "--preset",
        "tiny",
        "--set",
        "train.steps=100000",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "data.train_limit=256",
        "--run-dir",
        str(run),
        "--no-progress",
        "--mirror",
        str(mirror),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "dgmood train --resume --run-dir" in output and "Traceback" not in output
    interrupted_at = load_run_step(run)
    assert interrupted_at > 0
    result = invoke(
        "train",
        "--resume",
        "--run-dir",
        str(run),
        "--set",
        "train.steps=40",
        "--no-progress",
        "--mirror",
        str(mirror),
    )
    assert result.exit_code == 0, result.output
    assert load_run_step(run) == max(40, interrupted_at)


def load_run_step(run: Path) -> int:
    from dgmood.runs import read_model_metadata

    return int(read_model_metadata(run / "model.safetensors")["step"])


def test_reproduce_rejects_a_classifier_before_training(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["reproduce", "fashion-mnist", "--model", "cnn", "--out-dir", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "not a density model" in result.output
    assert not (tmp_path / "out").exists()


def test_reproduce_chicken_checks_model_roles(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["reproduce", "chicken", "-o", "classifier=glow", "--out-dir", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "glow is a density model, not a classifier" in result.output
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, ["reproduce", "nalisnick2019", "--scale", "huge"])
    assert result.exit_code == 2 and "unknown preset 'huge'" in result.output
    result = runner.invoke(app, ["reproduce", "chicken", "-o", "colour=red"])
    assert result.exit_code == 2 and "unknown config key 'colour'" in result.output


STUDY_CONTEXT_OPTIONS = (
    "preset", "steps", "limit", "resume", "data_dir", "mirror", "download", "device", "progress",
    "pretrained",
)  # fmt: skip


def test_study_commands_share_one_declaration_of_the_study_context_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reproduce` and `benchmark` take the same options, spelled and explained alike, and
    both turn them into the StudyContext the study runs in."""
    import typer.main

    import dgmood.studies
    from dgmood.reporting.result import StudyResult

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]

    def declarations(command: str) -> dict[str, tuple[object, ...]]:
        return {
            p.name: (tuple(p.opts), tuple(p.secondary_opts), p.help, p.default)
            for p in commands[command].params
            if p.name in STUDY_CONTEXT_OPTIONS
        }

    assert set(declarations("reproduce")) == set(STUDY_CONTEXT_OPTIONS)
    assert declarations("benchmark") == declarations("reproduce")

    contexts = []

    def fake_run_study(name: str, ctx: object, *args: object, **kwargs: object) -> StudyResult:
        contexts.append(ctx)
        return StudyResult(study=name, title="", finding="done")

    monkeypatch.setattr(dgmood.studies, "run_study", fake_run_study)
    shared = [
        "--scale", "tiny", "--steps", "3", "--limit", "7", "--resume", "--data-dir", "d",
        "--mirror", "m", "--download", "--device", "cpu", "--no-progress", "--no-pretrained",
    ]  # fmt: skip
    out = str(tmp_path / "out")
    invoke("reproduce", "fashion-mnist", "--out-dir", out, *shared)
    invoke("benchmark", "--out-dir", out, *shared)
    assert len(contexts) == 2
    for ctx in contexts:
        assert (ctx.out_dir, ctx.preset, ctx.steps, ctx.limit) == (Path(out), "tiny", 3, 7)
        assert (ctx.resume, ctx.device, ctx.progress) == (True, "cpu", False)
        assert ctx.use_pretrained is False
        assert (ctx.sources.data_dir, ctx.sources.mirror, ctx.sources.download) == ("d", "m", True)


@pytest.mark.slow
def test_two_studies_share_one_runs_dir(tmp_path: Path, mirror: Path) -> None:
    """--runs-dir: the second study finds the first one's run by what it is and trains
    nothing (its weights are not written again)."""
    common = ["--preset", "tiny", "--steps", "2", "--limit", "16", "--no-progress"]
    common += ["--mirror", str(mirror), "--runs-dir", str(tmp_path / "shared")]
    first = invoke("reproduce", "fashion-mnist", "--out-dir", str(tmp_path / "a"), *common)
    assert first.exit_code == 0, first.output
    (run_dir,) = (tmp_path / "shared").iterdir()
    written = (run_dir / "model.safetensors").stat().st_mtime_ns
    second = invoke(
        "reproduce", "graying", "--out-dir", str(tmp_path / "b"), *common, "-o", "alphas=[0.5]"
    )
    assert second.exit_code == 0, second.output
    assert [p.name for p in (tmp_path / "shared").iterdir()] == [run_dir.name]
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == written
    assert not (tmp_path / "a" / "runs").exists() and not (tmp_path / "b" / "runs").exists()
