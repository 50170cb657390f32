"""The fashion-mnist and chicken studies at library level, on tiny real runs.

Every number a study reports is recomputed here from the run by an independent path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape

from dgmood.data.loading import DataSources
from dgmood.evaluation.metrics import ood_metrics
from dgmood.inference import classify_images, score_images
from dgmood.reporting.result import StudyResult
from dgmood.runs import load_run
from dgmood.scores.classifier import confidence_fractions
from dgmood.studies import StudyContext, run_study, study_names
from tests.run_dirs import find_run

pytestmark = pytest.mark.slow


def _ctx(tmp_path: Path, mirror: Path, limit: int = 64) -> StudyContext:
    return StudyContext(
        out_dir=tmp_path / "study",
        sources=DataSources(mirror=str(mirror)),
        preset="tiny",
        steps=4,
        limit=limit,
        progress=False,
    )


def test_the_built_in_studies_are_registered() -> None:
    assert {"fashion-mnist", "chicken"} <= set(study_names())


def test_fashion_mnist_study_numbers_match_an_independent_recomputation(
    tmp_path: Path, mirror: Path
) -> None:
    ctx = _ctx(tmp_path, mirror)
    result = run_study("fashion-mnist", ctx, ["train_limit=64", "scores=[nll]"])
    run = load_run(find_run(ctx.runs_dir, "glow-tiny-fashion-mnist"))
    assert run.step == 4 and run.config.preset == "glow/tiny"

    sources = DataSources(mirror=str(mirror))
    fashion = sources.load_like("fashion-mnist", "test", run.config.data).head(64)
    mnist = sources.load_like("mnist", "test", run.config.data).head(64)
    bpd_fashion = score_images(run.model, fashion.images)["bits_per_dim"]
    bpd_mnist = score_images(run.model, mnist.images)["bits_per_dim"]

    sets = result.table("bits_per_dim")
    rows = {row[0]: row for row in sets.rows}
    assert rows["fashion-mnist-test"][1:3] == ["in-test", 64]
    assert rows["fashion-mnist-test"][3] == pytest.approx(bpd_fashion.mean(), rel=1e-6)
    assert rows["mnist-test"][5] == pytest.approx(np.median(bpd_mnist), rel=1e-6)
    expected = ood_metrics(bpd_fashion, bpd_mnist)
    (metrics_row,) = result.table("ood_metrics").rows
    assert metrics_row[:3] == ["nll", "fashion-mnist-test", "mnist-test"]
    assert metrics_row[3] == pytest.approx(expected.auroc)
    assert metrics_row[8] == pytest.approx(expected.fpr95_in)
    assert metrics_row[4] <= metrics_row[3] <= metrics_row[5]  # the CI holds the estimate
    assert f"{expected.auroc:.3f}" in result.finding

    # the folder holds everything a report needs, and reloads to the same result
    for name in ("result.json", "summary.md", "bits_per_dim.csv", "ood_metrics.md"):
        assert (ctx.out_dir / name).exists(), name
    for figure in result.figures:
        assert (ctx.out_dir / figure.path).stat().st_size > 5_000
    assert StudyResult.load(ctx.out_dir).table("ood_metrics").rows == [metrics_row]

    # a second run reuses the finished run and the score caches: same numbers
    again = run_study("fashion-mnist", ctx, ["train_limit=64", "scores=[nll]"], index_dir=tmp_path)
    (again_row,) = again.table("ood_metrics").rows
    assert again_row[:-1] == metrics_row[:-1]  # all but the time it took
    index = (tmp_path / "index.html").read_text()
    assert 'href="study/report.html"' in index and str(escape(result.finding)) in index


def test_unknown_study_option_is_one_clear_error(tmp_path: Path, mirror: Path) -> None:
    with pytest.raises(ValueError, match="unknown config key 'colour'"):
        run_study("fashion-mnist", _ctx(tmp_path, mirror), ["colour=red"])
    with pytest.raises(ValueError, match="unknown study 'nope'"):
        run_study("nope", _ctx(tmp_path, mirror))
    with pytest.raises(ValueError, match="not a density model"):
        run_study("fashion-mnist", _ctx(tmp_path, mirror), ["model=cnn"])
    assert not (tmp_path / "study").exists()


def test_chicken_study_fractions_and_photos_match_the_classifier(
    tmp_path: Path, mirror: Path
) -> None:
    ctx = _ctx(tmp_path, mirror, limit=128)
    result = run_study("chicken", ctx, ["fit_limit=256"])
    classifier = load_run(find_run(ctx.runs_dir, "cnn-plain-tiny-mnist"))
    fashion = DataSources(mirror=str(mirror)).load_like(
        "fashion-mnist", "test", classifier.config.data
    )
    confidences = np.array(
        [p.confidence for p in classify_images(classifier.classifier(), fashion.images[:128])]
    )
    expected = confidence_fractions(confidences)
    fractions = result.table("confidence_fractions")
    assert fractions.column("FashionMNIST (measured)") == pytest.approx(
        [expected[0.99], expected[0.95], expected[0.75]]
    )
    assert fractions.column("FashionMNIST (post)") == [0.634, 0.743, 0.889]
    photos = result.table("photos")
    assert photos.column("photo") == ["chelsea", "astronaut", "coffee", "rocket", "camera"]
    scores = {row[0] for row in result.table("ood_metrics").rows}
    assert {"max-softmax", "energy", "odin", "mahalanobis", "vae nll"} <= scores
    assert "FashionMNIST above 0.99" in result.finding


def test_a_time_budget_and_overrides_reach_every_run_and_the_run_is_then_reused(
    tmp_path: Path, mirror: Path
) -> None:
    """`reproduce --budget M --set K=V`: runs train until the budget, with the override."""
    ctx = StudyContext(
        out_dir=tmp_path / "study",
        sources=DataSources(mirror=str(mirror)),
        preset="tiny",
        budget_minutes=1e-9,  # spent after the first step
        overrides=("train.lr=0.0005",),
        limit=32,
        progress=False,
    )
    run_study("fashion-mnist", ctx, ["train_limit=64", "scores=[nll]"])
    run_dir = find_run(ctx.runs_dir, "glow-tiny-fashion-mnist")
    run = load_run(run_dir)
    assert run.step == 1
    assert run.config.train.lr == 0.0005 and run.config.execution.budget_minutes == 1e-9
    model_file = run_dir / "model.safetensors"
    written = model_file.stat().st_mtime_ns
    run_study("fashion-mnist", ctx, ["train_limit=64", "scores=[nll]"])  # reused, not refused
    assert model_file.stat().st_mtime_ns == written


def test_an_evaluated_run_is_named_by_its_folder_not_its_absolute_path(
    tmp_path: Path, mirror: Path
) -> None:
    """A report is shared: its title must not carry the machine's directory layout."""
    import dataclasses

    from dgmood.presets import run_preset
    from dgmood.studies import evaluate_run
    from dgmood.training import train

    config = run_preset("glow", "tiny", "fashion-mnist")
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, steps=2, eval_every=-1)
    )
    run_dir = (tmp_path / "runs" / "glow-fm").absolute()
    train(config, run_dir, sources=DataSources(mirror=str(mirror)), progress=False)
    ctx = _ctx(tmp_path, mirror, limit=32)
    result = evaluate_run(run_dir, ["mnist"], ctx, scores=["nll"], train_limit=64)
    assert result.title == "Is glow/tiny (glow-fm) fooled by mnist?"
    assert str(tmp_path) not in (ctx.out_dir / "report.html").read_text().split("</h1>")[0]


def test_studies_find_runs_by_what_they_are_and_train_each_once(
    tmp_path: Path, mirror: Path
) -> None:
    """Two studies asking for the same model, data and training share one run, found by its
    identity (before, each study's role name made its own run directory and retrained it)."""
    ctx = _ctx(tmp_path, mirror, limit=32)
    run_study("fashion-mnist", ctx, ["train_limit=64", "scores=[nll]"])
    run_dir = find_run(ctx.runs_dir, "glow-tiny-fashion-mnist")
    written = (run_dir / "model.safetensors").stat().st_mtime_ns
    run_study("decomposition", ctx, ["train_limit=64"])
    assert [p.name for p in ctx.runs_dir.iterdir()] == [run_dir.name]
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == written
    assert run_dir.name.endswith(load_run(run_dir).config.identity_hash())
