"""`dgmood benchmark` end to end on tiny models: a grid with a folder of PNGs as an OOD set."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from dgmood.cli.main import app
from dgmood.config import DataConfig, RunConfig
from dgmood.data.loading import DataSources
from dgmood.scores import base as scores_base
from dgmood.scores.base import Score, ScoreInput
from dgmood.studies import StudyContext, run_study, study_class
from dgmood.studies.benchmark import BenchmarkOptions
from tests.run_dirs import find_run

runner = CliRunner()


class NegatedTwinLikelihood(Score):
    """log p(x) of an auxiliary run identical to the main run (a known answer: 1 - AUROC of nll).

    References: none (a test score).
    """

    name = "test-negated-twin"
    needs_stats = ("bits_per_dim",)

    def aux_runs(self, config: RunConfig) -> dict[str, RunConfig]:
        return {"twin": config}

    def score(self, data: ScoreInput) -> np.ndarray:
        return -data.stat("bits_per_dim", run="twin")


@pytest.fixture
def twin_score(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(scores_base._SCORES, NegatedTwinLikelihood.name, NegatedTwinLikelihood)
    return NegatedTwinLikelihood.name


def png_bytes(image: torch.Tensor) -> int:
    """PNG length of one uint8 [1 or 3, H, W] image, as Pillow writes it (level 9, optimize)."""
    array = image.numpy()
    array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", optimize=True, compress_level=9)
    return len(buffer.getvalue())


def write_pngs(folder: Path, count: int = 6) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        noise = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / f"photo{i}.png")
    return folder


def test_default_grid_is_both_mnist_directions_with_three_families() -> None:
    options = BenchmarkOptions()
    pairs = {(i, o) for i in options.in_datasets for o in options.ood if o != i}
    assert pairs == {("fashion-mnist", "mnist"), ("mnist", "fashion-mnist")}
    assert options.models == ("glow", "pixelcnnpp", "vae")
    assert study_class("benchmark").Options is BenchmarkOptions


def test_unknown_score_or_inapplicable_score_fails_before_training(tmp_path: Path) -> None:
    ctx = StudyContext(out_dir=tmp_path, preset="tiny", progress=False)
    with pytest.raises(ValueError, match="unknown score"):
        run_study("benchmark", ctx, scores=("nope",))
    with pytest.raises(ValueError, match="no OOD set"):
        run_study("benchmark", ctx, in_datasets=("mnist",), ood=("mnist",))
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_benchmark_cli_tiny_grid_with_a_folder_and_an_aux_score(
    tmp_path: Path, mirror: Path, twin_score: str
) -> None:
    photos = write_pngs(tmp_path / "photos")
    out = tmp_path / "bench"
    args = [
        "benchmark",
        "--in",
        "fashion-mnist",
        "--ood",
        "mnist",
        "--ood",
        f"folder:{photos}",
        "--model",
        "glow",
        "--model",
        "vae",
        "--score",
        "nll",
        "--score",
        twin_score,
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--limit",
        "48",
        "--train-limit",
        "32",
        "--typicality-batch",
        "1",
        "--typicality-batch",
        "5",
        "--out-dir",
        str(out),
        "--mirror",
        str(mirror),
        "--no-progress",
    ]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # the typicality test on batches of M images, reachable from the command line
    with open(out / "typicality_batch.csv") as handle:
        batch_rows = list(csv.DictReader(handle))
    assert {(r["OOD"], r["model"], r["M"]) for r in batch_rows} == {
        (o, m, size)
        for o in ("mnist", f"folder:{photos}")
        for m in ("glow", "vae")
        for size in "15"
    }
    for r in batch_rows:
        assert 0 <= float(r["in-distribution batches flagged"]) <= 1
        assert 0 <= float(r["AUROC"]) <= 1

    with open(out / "benchmark.csv") as handle:
        rows = list(csv.DictReader(handle))
    model_rows = [r for r in rows if r["model"] != "none"]
    grid = {(r["OOD"], r["model"], r["score"]) for r in model_rows}
    oods = {"mnist", f"folder:{photos}"}
    assert grid == {(o, m, s) for o in oods for m in ("glow", "vae") for s in ("nll", twin_score)}
    assert len(model_rows) == 8 and {r["in-distribution"] for r in rows} == {"fashion-mnist"}
    # the model-free baseline: once per pair, equal to PNG lengths computed here with PIL
    baseline = {r["OOD"]: r for r in rows if r["model"] == "none"}
    assert set(baseline) == oods and {r["score"] for r in baseline.values()} == {"compressor-png"}
    like = DataConfig(dataset="fashion-mnist", channels=1)
    sources = DataSources(mirror=str(mirror))
    fashion = sources.load_like("fashion-mnist", "test", like).head(48)
    mnist = sources.load_like("mnist", "test", like).head(48)
    expected = roc_auc_score(
        [0] * 48 + [1] * 48, [-png_bytes(x) for x in torch.cat([fashion.images, mnist.images])]
    )
    assert float(baseline["mnist"]["AUROC"]) == pytest.approx(expected, abs=1e-9)
    assert baseline["mnist"]["n in"] == "48" and baseline["mnist"]["n OOD"] == "48"
    by_key = {(r["OOD"], r["model"], r["score"]): r for r in model_rows}
    for (ood, model, score), row in by_key.items():
        assert row["n in"] == "48" and row["n OOD"] == ("48" if ood == "mnist" else "6")
        assert 0 <= float(row["AUROC"]) <= 1 and 0 <= float(row["FPR@95TPR"]) <= 1
        assert float(row["ms per image"]) >= 0
        # the twin run is the same config trained the same way: its score is -nll exactly
        if score == twin_score:
            nll_auroc = float(by_key[(ood, model, "nll")]["AUROC"])
            assert float(row["AUROC"]) == pytest.approx(1 - nll_auroc, abs=1e-9)
            assert float(row["aux training (s)"]) > 0
        else:
            assert float(row["aux training (s)"]) == 0
    # sorted by AUROC within each pair
    for ood in oods:
        aurocs = [float(r["AUROC"]) for r in rows if r["OOD"] == ood]
        assert aurocs == sorted(aurocs, reverse=True)

    # the twin asks for the main run's own config: found by identity, it is the same run
    assert len(list((out / "runs").iterdir())) == 2
    for name in ("glow-tiny-fashion-mnist", "vae-tiny-fashion-mnist"):
        assert (find_run(out / "runs", name) / "model.safetensors").exists(), name
    assert (out / "benchmark.md").read_text().startswith("| in-distribution | OOD | model |")
    for model in ("glow", "vae"):  # each model's samples and training curve in the report
        for kind in ("samples", "training"):
            assert (out / f"{kind}_fashion-mnist-{model}.png").stat().st_size > 5_000
    saved = json.loads((out / "result.json").read_text())
    best = {b["ood"]: b for b in saved["data"]["best"]}
    assert set(best) == oods
    for ood, b in best.items():
        assert b["auroc"] == max(float(r["AUROC"]) for r in rows if r["OOD"] == ood)
        assert (
            f"fashion-mnist -> {ood}: {b['score']} under {b['model']}, AUROC" in (saved["finding"])
        )

    # a second run reuses every run and cached statistic: same numbers, nothing retrained
    vae_dir = find_run(out / "runs", "vae-tiny-fashion-mnist")
    weights = vae_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    caches = sorted((vae_dir / "scores").iterdir())
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert weights.stat().st_mtime_ns == stamp
    assert sorted((vae_dir / "scores").iterdir()) == caches
    with open(out / "benchmark.csv") as handle:
        assert [r["AUROC"] for r in csv.DictReader(handle)] == [r["AUROC"] for r in rows]


@pytest.mark.slow
def test_a_score_applying_to_no_model_is_an_error(tmp_path: Path, mirror: Path) -> None:
    result = runner.invoke(
        app,
        [
            "benchmark",
            "--in",
            "mnist",
            "--ood",
            "fashion-mnist",
            "--model",
            "vae",
            "--score",
            "max-softmax",
            "--preset",
            "tiny",
            "--steps",
            "2",
            "--limit",
            "16",
            "--train-limit",
            "16",
            "--out-dir",
            str(tmp_path),
            "--mirror",
            str(mirror),
            "--no-progress",
        ],
    )
    assert result.exit_code == 2 and "apply to none of the models" in result.output


@pytest.mark.slow
def test_diffusion_scores_in_the_grid_with_their_network_evaluations(
    tiny_ctx: StudyContext,
) -> None:
    """The diffusion family and its scores take part in the benchmark through their
    capabilities, and the cost column counts each score's network passes per image."""
    from dgmood.models.registry import model_preset

    result = run_study(
        "benchmark",
        tiny_ctx,
        in_datasets=("fashion-mnist",),
        ood=("mnist",),
        models=("glow", "vae", "diffusion"),
        scores=("nll", "noise-level-ratio", "diffpath-1d"),
        baselines=(),
        samples=0,
        train_limit=32,
    )
    table = result.table("benchmark")
    column = table.columns.index("network evaluations per image")
    passes = {(row[2], row[3]): row[column] for row in table.rows}
    diffusion = model_preset("diffusion", "tiny")
    vae = model_preset("vae", "tiny")
    assert passes == {
        ("glow", "nll"): 1.0,
        ("vae", "nll"): 1.0 + vae.n_samples,  # the encoder, then the decoder per latent
        ("diffusion", "nll"): float(diffusion.eval_timesteps),  # one pass per timestep
        ("diffusion", "noise-level-ratio"): 16.0,  # its default timesteps
        ("diffusion", "diffpath-1d"): 10.0,  # its default DDIM steps
    }
