"""The post's reject rule: accepts the chosen share of validation data, stored and reused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dgmood.cli.main import app
from dgmood.config import replace_path
from dgmood.data.loading import DataSources
from dgmood.evaluation.reject import (
    THRESHOLDS_DIR,
    RejectRule,
    fit_reject_rule,
    make_detector,
    rule_from_scores,
)
from dgmood.presets import run_preset
from dgmood.runs import LoadedRun, load_run
from dgmood.training import train


def test_rule_accepts_the_chosen_share_of_validation_scores() -> None:
    rng = np.random.default_rng(0)
    validation = rng.normal(size=10_000)
    rule = rule_from_scores(validation, "nll", 0.95)
    rejected, percentile = rule.decide(validation)
    assert rejected.sum() == 500  # exactly the 5% highest
    assert np.all(validation[rejected] > validation[~rejected].max())
    # percentile = share of validation scores at or below, so its own are 0.01, 0.02 ... 100
    np.testing.assert_allclose(np.sort(percentile), np.arange(1, 10_001) / 100)
    assert rule.decide([validation.max() + 1])[1][0] == 100.0
    assert rule.decide([validation.min() - 1])[1][0] == 0.0
    assert rule.decide([np.median(validation)])[1][0] == pytest.approx(50.0, abs=0.01)
    # new draws of the same distribution: about 5% rejected (the quantile's s.e. is 0.2%)
    fresh = rule.decide(rng.normal(size=20_000))[0]
    assert 0.04 < fresh.mean() < 0.06
    # far-away inputs (the chicken): all rejected
    assert rule.decide(rng.normal(10, 1, size=100))[0].all()


def test_rule_rounds_the_accepted_share_up_and_refuses_bad_input() -> None:
    assert not rule_from_scores(np.arange(7.0), "nll", 0.95).decide(np.arange(7.0))[0].any()
    rule = rule_from_scores(np.arange(20.0), "nll", 0.5)
    assert rule.threshold == 9.0 and rule.decide(np.arange(20.0))[0].sum() == 10
    with pytest.raises(ValueError, match="fraction"):
        rule_from_scores(np.arange(5.0), "nll", 0.0)
    with pytest.raises(ValueError, match="at least one"):
        rule_from_scores([], "nll")
    with pytest.raises(ValueError, match="NaN"):
        rule_from_scores([0.0, np.nan], "nll")
    with pytest.raises(ValueError, match="NaN"):
        rule.decide([np.inf])


def test_rule_round_trips_through_json() -> None:
    rule = rule_from_scores([3.0, 1.0, 2.0], "nll", 0.5, validation="mnist-test", step=7)
    back = RejectRule.from_dict(json.loads(json.dumps(rule.to_dict())))
    assert (back.threshold, back.n, back.step, back.validation) == (2.0, 3, 7, "mnist-test")
    np.testing.assert_array_equal(back.validation_scores, [1.0, 2.0, 3.0])


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> LoadedRun:
    """A tiny VAE trained a few steps on MNIST."""
    config = run_preset("vae", "tiny", "mnist")
    config = replace_path(config, "train.steps", 4)
    config = replace_path(config, "data.train_limit", 128)
    config = replace_path(config, "data.val_size", 64)
    run_dir = tmp_path_factory.mktemp("detector") / "vae"
    sources = DataSources(data_dir=str(tmp_path_factory.mktemp("data")), mirror=str(mirror))
    train(config, run_dir, sources=sources, progress=False)
    return load_run(run_dir)


@pytest.fixture
def sources(mirror: Path, data_dir: Path) -> DataSources:
    return DataSources(data_dir=str(data_dir), mirror=str(mirror))


def test_stored_threshold_is_reused_and_refitted_after_training(
    detector_run: LoadedRun, sources: DataSources
) -> None:
    data = detector_run.config.data
    validation = sources.load_like("mnist", "test", data).head(64)
    first = fit_reject_rule(detector_run, "nll", validation)
    files = list((detector_run.run_dir / THRESHOLDS_DIR).glob("nll-*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["score"] == "nll" and stored["accept"] == 0.95
    assert stored["n"] == 64 and stored["step"] == detector_run.step == 4
    assert stored["validation"] == "mnist-test" and stored["threshold"] == first.threshold
    assert first.decide(first.validation_scores)[0].sum() == 3  # 64 - ceil(0.95 * 64)

    mtime = files[0].stat().st_mtime_ns
    again = fit_reject_rule(detector_run, "nll", validation)
    assert again.threshold == first.threshold
    assert list((detector_run.run_dir / THRESHOLDS_DIR).glob("*.json")) == files
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rewritten

    # the stored value is what is used: a planted threshold comes back
    files[0].write_text(json.dumps({**stored, "threshold": 123.0}))
    assert fit_reject_rule(detector_run, "nll", validation).threshold == 123.0
    # another step (the run was trained further): refitted and overwritten
    files[0].write_text(json.dumps({**stored, "threshold": 123.0, "step": 3}))
    refit = fit_reject_rule(detector_run, "nll", validation)
    assert refit.threshold == first.threshold
    assert json.loads(files[0].read_text())["step"] == 4
    # another accepted share or validation set: another file
    fit_reject_rule(detector_run, "nll", validation, accept=0.9)
    fit_reject_rule(detector_run, "nll", validation.head(32))
    assert len(list((detector_run.run_dir / THRESHOLDS_DIR).glob("nll-*.json"))) == 3


def test_detector_screens_new_images_consistently_with_validation(
    detector_run: LoadedRun, sources: DataSources
) -> None:
    data = detector_run.config.data
    validation = sources.load_like("mnist", "test", data).head(64)
    detector = make_detector(detector_run, "nll", validation)
    scores, rejected, percentile = detector.screen(validation.images)
    # new-image scoring reproduces the cached validation scores exactly
    np.testing.assert_allclose(np.sort(scores), detector.rule.validation_scores, rtol=1e-6)
    assert rejected.sum() == 3 and percentile.max() == 100.0
    assert detector.path.exists()
    with pytest.raises(ValueError, match="does not apply"):
        make_detector(detector_run, "max-softmax", validation)


@pytest.mark.slow
def test_predict_with_a_detector_prints_the_verdict(
    detector_run: LoadedRun, tmp_path: Path, mirror: Path
) -> None:
    classifier = run_preset("cnn", "tiny", "mnist")
    classifier = dataclasses.replace(
        classifier,
        train=dataclasses.replace(classifier.train, steps=2),
        data=dataclasses.replace(classifier.data, train_limit=64, val_size=32),
    )
    sources = DataSources(mirror=str(mirror))
    train(classifier, tmp_path / "cnn", sources=sources, progress=False)
    noise = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(noise)
    args = ["predict", str(tmp_path / "cnn"), str(noise), "--detector", str(detector_run.run_dir)]
    result = CliRunner().invoke(app, [*args, "--mirror", str(mirror)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "noise.png" in result.output and "percentile" in result.output
    assert "(photo" in result.output  # a 40x40 colour file is a photo, not a dataset image
    assert "rejected" in result.output  # noise is nothing like a digit
    assert "reject rule: nll >" in result.output and THRESHOLDS_DIR in result.output
    result = CliRunner().invoke(app, [*args, "--score", "nope"])
    assert result.exit_code == 2 and "unknown score" in result.output
