"""Long multi-model jobs: one extreme image does not throw away a grid, a failing cell costs
one cell, and no step of more than a few seconds is silent.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

import dgmood.io
import dgmood.scores.base
from dgmood.cli.main import app
from dgmood.config import DataConfig, RunConfig
from dgmood.data.loading import DataSources
from dgmood.evaluation.compare import compare_scores
from dgmood.evaluation.metrics import ood_metrics
from dgmood.inference import score_images
from dgmood.io import Progress
from dgmood.models.latent.likelihoods import DiscretizedLogisticLikelihood
from dgmood.models.latent.vae import VAE
from dgmood.models.registry import build_model, resolve_model
from dgmood.presets import run_preset
from dgmood.reporting.result import StudyResult
from dgmood.runs import LoadedRun
from dgmood.scores.base import Score, ScoreInput, make_score
from dgmood.scores.complexity import compressed_bits_per_dim
from dgmood.studies import StudyContext, run_study
from dgmood.studies.base import StudyContext as BaseContext

runner = CliRunner()
DATA = DataConfig(dataset="fashion-mnist")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 32, 32), generator=generator, dtype=torch.uint8)


def _vae() -> VAE:
    torch.manual_seed(0)
    model = build_model(resolve_model("vae", "tiny"), DATA)
    assert isinstance(model, VAE)
    return model.eval()


# --- 14. a VAE's log p stays finite ---------------------------------------------------------


def test_a_very_wide_decoder_logistic_gives_a_finite_exact_log_mass() -> None:
    """log_scale = 200: the bin width in scale units, exp(-200) / 255, underflows float32."""
    likelihood = DiscretizedLogisticLikelihood()
    x = torch.tensor([[[[0.0, 0.5, 1.0, 0.3]]]])  # the two edge bins and two interior ones
    location = torch.tensor([[[[0.2, 0.9, -3.0, 0.3]]]])
    log_scale = torch.full_like(location, 200.0)
    params = torch.stack([location, log_scale], dim=2)  # [N, C, P, H, W]
    log_mass = likelihood.log_mass(params, x)
    assert bool(torch.isfinite(log_mass).all())
    # independent: a logistic this wide is flat over one bin, so the interior mass is the
    # density at the centre times the bin width; the edge bins hold about half the mass
    width = math.log(1 / 255) - 200.0
    centre = (x - location).double() * math.exp(-200.0)
    interior = (
        width + torch.nn.functional.logsigmoid(centre) + torch.nn.functional.logsigmoid(-centre)
    )
    np.testing.assert_allclose(log_mass[0, 0, 0, 1].item(), interior[0, 0, 0, 1].item(), rtol=1e-6)
    np.testing.assert_allclose(log_mass[0, 0, 0, 3].item(), interior[0, 0, 0, 3].item(), rtol=1e-6)
    np.testing.assert_allclose(log_mass[0, 0, 0, [0, 2]].numpy(), math.log(0.5), atol=1e-6)


def test_a_vae_gives_finite_log_p_to_inputs_that_push_it_to_extremes() -> None:
    images = _images(8)
    normal = score_images(_vae(), images)["log_prob"]
    wide_decoder = _vae()
    with torch.no_grad():
        wide_decoder.decoder.output_layer.bias[1] = 200.0  # log_scale of every pixel
    wide_posterior = _vae()
    with torch.no_grad():  # log sigma = 60: exp(2 log sigma) overflows float32
        posterior = wide_posterior.posterior
        posterior.to_mean_and_log_std.bias[posterior.latent_dim :] = 60.0  # type: ignore[index, union-attr]
    for model in (wide_decoder, wide_posterior):
        stats = score_images(model, images, iwae_k=4)
        for key in ("log_prob", "kl", "reconstruction", "bits_per_dim", "iwae_log_prob"):
            assert np.isfinite(stats[key]).all(), (key, stats[key])
        assert (stats["log_prob"] < normal - 1000).all()  # extreme, and ranked as such


# --- 14. metrics rank +-inf as extreme; NaN names what it is --------------------------------


def test_metrics_rank_infinite_scores_as_the_most_extreme() -> None:
    rng = np.random.default_rng(0)
    scores_in = rng.normal(size=200)
    scores_out = rng.normal(1.0, size=150)
    scores_out[[3, 7, 50]] = np.inf
    scores_in[[5]] = -np.inf
    scores_in[[9]] = np.inf
    metrics = ood_metrics(scores_in, scores_out, n_resamples=50)
    # independent: the same order with the infinities replaced by far finite values
    finite_in = np.where(np.isinf(scores_in), np.sign(scores_in) * 1e9, scores_in)
    finite_out = np.where(np.isinf(scores_out), 1e9, scores_out)
    labels = np.r_[np.zeros(200), np.ones(150)]
    pooled = np.r_[finite_in, finite_out]
    assert metrics.auroc == pytest.approx(roc_auc_score(labels, pooled), abs=1e-12)
    assert metrics.aupr_out == pytest.approx(average_precision_score(labels, pooled), abs=1e-12)
    assert metrics.fpr95_in == ood_metrics(finite_in, finite_out, confidence=None).fpr95_in
    assert all(math.isfinite(low) and math.isfinite(high) for low, high in metrics.ci.values())


class _NaNScore(Score):
    """NaN for OOD images 2 and 5, as a score that divides by zero would give."""

    name = "nan-for-tests"
    needs_stats = ("bits_per_dim",)

    def score(self, data: ScoreInput) -> np.ndarray:
        values = data.stat("bits_per_dim").copy()
        if data.label.startswith("mnist"):
            values[[2, 5]] = np.nan
        return values


def test_nan_scores_name_the_model_the_sets_the_score_and_the_images() -> None:
    model = _vae()
    run = LoadedRun(RunConfig(model=resolve_model("vae", "tiny"), data=DATA), model, 0, Path("r"))
    images, labels = _images(8), torch.full((8,), -1)
    stats = score_images(model, images)
    in_test = ScoreInput(stats, images, labels, run, label="fashion-mnist-test")
    ood = ScoreInput(stats, images, labels, run, label="mnist-test")
    with pytest.raises(ValueError) as caught:
        compare_scores([_NaNScore()], in_test, {"mnist-test": ood})
    message = str(caught.value)
    for part in ("nan-for-tests", "vae", "fashion-mnist-test", "mnist-test", "[2, 5]"):
        assert part in message, (part, message)


# --- 14. every finished cell is written as it completes; a failing cell is one cell ----------


@pytest.fixture
def nan_score_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dgmood.scores.base._SCORES, _NaNScore.name, _NaNScore)


def _context(out_dir: Path, mirror: Path, data_dir: Path) -> StudyContext:
    return StudyContext(
        out_dir=out_dir,
        sources=DataSources(data_dir=str(data_dir), mirror=str(mirror)),
        preset="tiny",
        steps=2,
        limit=16,
        progress=False,
    )


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(
    tmp_path: Path, mirror: Path, data_dir: Path, nan_score_registered: None
) -> None:
    out = tmp_path / "bench"
    result = run_study(
        "benchmark",
        _context(out, mirror, data_dir),
        in_datasets=("fashion-mnist",),
        ood=("mnist",),
        models=("vae",),
        scores=(_NaNScore.name, "nll"),
        train_limit=16,
    )
    # the VAE's nll cell and the model-free baseline row (model "none") survive the failure
    kept = sorted((row[2], row[3]) for row in result.table("benchmark").rows)
    assert kept == [("none", "compressor-png"), ("vae", "nll")]
    (failed,) = result.table("failed_cells").rows
    assert failed[:3] == ["fashion-mnist", "vae", _NaNScore.name] and "NaN" in str(failed[3])
    assert "1 cell(s) failed" in result.finding
    stored = StudyResult.load(out)
    assert stored.table("failed_cells").rows == result.table("failed_cells").rows


def test_finished_cells_are_on_disk_before_the_grid_ends(
    tmp_path: Path, mirror: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bench"
    original = BaseContext.obtain

    def killed_at_the_second_model(self: BaseContext, config: RunConfig) -> Any:
        if type(config.model).family == "glow":
            raise KeyboardInterrupt  # Ctrl-C, or the machine going away, mid-grid
        return original(self, config)

    monkeypatch.setattr(BaseContext, "obtain", killed_at_the_second_model)
    with pytest.raises(KeyboardInterrupt):
        run_study(
            "benchmark",
            _context(out, mirror, data_dir),
            in_datasets=("fashion-mnist",),
            ood=("mnist",),
            models=("vae", "glow"),
            scores=("nll", "typicality"),
            train_limit=16,
        )
    lines = (out / "benchmark.csv").read_text().splitlines()
    assert lines[0].startswith("in-distribution,OOD,model,score,AUROC")
    assert sorted(line.split(",")[3] for line in lines[1:]) == ["nll", "typicality"]
    assert all(line.split(",")[2] == "vae" for line in lines[1:])
    assert not (out / "result.json").exists()  # the grid did not finish


# --- 15. progress: a bar on a terminal, a few lines in a log, nothing silent ---------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_writes_a_few_lines_to_a_log_and_a_bar_to_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(dgmood.io.time, "monotonic", clock)
    log = io.StringIO()
    with Progress(100, "score mnist-test", "images", stream=log) as bar:
        for _ in range(100):
            clock.now += 1.0  # one second per image: 100 s in all
            bar.update()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0] == "score mnist-test: 2/100 images (2%) after 2 s"
    assert lines[-1] == "score mnist-test: done, 100 images in 100 s"
    assert 4 <= len(lines) <= 6  # at 2 s, then every 30 s, and the end
    quick = io.StringIO()
    with Progress(100, "quick", stream=quick) as bar:
        bar.update(100)
    assert quick.getvalue() == ""  # a step of under 2 s says nothing in a log
    terminal = _Terminal()
    with Progress(10, "score mnist-test", "images", stream=terminal) as bar:
        bar.update(10)
    assert "score mnist-test" in terminal.getvalue() and "\r" in terminal.getvalue()
    silent = io.StringIO()
    with dgmood.io.progress_enabled(False), Progress(10, "x", stream=silent) as bar:
        clock.now += 100
        bar.update(10)
    assert silent.getvalue() == ""


@pytest.fixture
def every_update_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Progress, "FIRST_LINE_AFTER", -1.0)
    monkeypatch.setattr(Progress, "LINE_EVERY", -1.0)


def test_each_slow_step_reports_progress(
    every_update_shown: None, capsys: pytest.CaptureFixture[str]
) -> None:
    images, labels = _images(6), torch.full((6,), -1)
    compressed_bits_per_dim(images, "png")
    assert "compress png: 1/6 images" in capsys.readouterr().err
    pixelcnn = build_model(resolve_model("pixelcnnpp", "tiny"), DATA)
    score_images(pixelcnn, images, batch_size=2, progress=True, desc="score mnist-test")
    err = capsys.readouterr().err
    assert "score mnist-test: 2/6 images" in err and "\r" not in err
    classifier_config = run_preset("cnn", "tiny", "mnist")
    cnn = build_model(classifier_config.model, classifier_config.data).eval()
    cnn_run = LoadedRun(classifier_config, cnn, 0, Path("cnn"))  # type: ignore[arg-type]
    cnn_stats = score_images(cnn, images)
    make_score("odin").score(ScoreInput(cnn_stats, images, labels, cnn_run, label="photos"))
    assert "odin photos: 6/6 images" in capsys.readouterr().err
    vae = _vae()
    vae_run = LoadedRun(RunConfig(model=resolve_model("vae", "tiny"), data=DATA), vae, 0, Path("v"))
    regret = make_score("likelihood-regret")
    regret.steps = 1  # type: ignore[attr-defined]
    regret.score(ScoreInput(score_images(vae, images), images, labels, vae_run, label="photos"))
    assert "likelihood regret photos: 6/6 images" in capsys.readouterr().err
    compare_scores([make_score("mahalanobis")], *_classifier_inputs(cnn_run, cnn_stats))
    assert "mahalanobis on" in capsys.readouterr().err


def _classifier_inputs(run: LoadedRun, stats: dict[str, np.ndarray]) -> tuple[Any, ...]:
    images = _images(6)
    labelled = ScoreInput(stats, images, torch.tensor([0, 1, 2, 0, 1, 2]), run, label="mnist-train")
    in_test = ScoreInput(stats, images, torch.full((6,), -1), run, label="mnist-test")
    return in_test, {"photos": in_test}, labelled


def test_benchmark_states_its_plan_before_it_starts(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: BaseContext, config: RunConfig) -> Any:
        raise KeyboardInterrupt  # stop at the first run: the plan must be out by then

    monkeypatch.setattr(BaseContext, "obtain", interrupted)
    result = runner.invoke(
        app,
        [
            "benchmark", "--in", "fashion-mnist", "--ood", "mnist", "--model", "vae",
            "--score", "nll", "--score", "waic", "--score", "likelihood-regret",
            "--preset", "tiny", "--steps", "3", "--limit", "16", "--train-limit", "16",
            "--out-dir", str(tmp_path / "b"), "--mirror", str(mirror),
        ],
    )  # fmt: skip
    assert result.exit_code == 130, result.output
    plan = next(line for line in result.output.splitlines() if line.startswith("plan:"))
    assert "5 runs (4 auxiliary, for waic), 5 to train (15 steps)" in plan, plan
    assert "vae-tiny-fashion-mnist-" in plan and "about 240 images" in plan
    assert "likelihood-regret run the model on every image" in plan
