"""The colour studies end to end on the real CIFAR-10 and GTSRB files, at the tiny preset.

Every number a table shows is checked against an independent computation where one exists:
per-channel variance sums against numpy, the compressor baseline against PIL's PNG length,
AUROCs against scikit-learn on the per-image bits/dim, the published column against the
paper's values. Skipped, with the loader's message, where CIFAR-10 or GTSRB is absent.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from dgmood.config import DataConfig
from dgmood.data.errors import DataError
from dgmood.data.loading import DataSources
from dgmood.evaluation.compare import ScoringOptions, prepare_input
from dgmood.reporting.result import StudyResult
from dgmood.runs import load_run
from dgmood.scores.base import ScoreInput
from dgmood.studies import StudyContext, run_study
from dgmood.studies.cifar10 import available_sets
from dgmood.studies.moments import CHANNEL_NAMES, pixel_moments
from dgmood.studies.pictures import extreme_rows
from tests.run_dirs import find_run

COLOUR = DataConfig(dataset="cifar10", channels=3)


@pytest.fixture
def colour_sources(mirror: Path) -> DataSources:
    """The mirror's sources, or a skip naming what is missing (CIFAR-10 test/train, GTSRB)."""
    sources = DataSources(mirror=str(mirror))
    for name, split in (("cifar10", "test"), ("cifar10", "train"), ("gtsrb", "test")):
        try:
            sources.load_like(name, split, COLOUR)
        except DataError as error:
            pytest.skip(f"{name} {split} is not in the data mirror: {error}")
    return sources


def png_lengths(images: torch.Tensor) -> np.ndarray:
    """PNG bytes of each uint8 [N, 3, H, W] image as Pillow writes them (level 9, optimize)."""
    lengths = []
    for image in images.numpy().transpose(0, 2, 3, 1):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(
            buffer, "PNG", optimize=True, compress_level=9
        )
        lengths.append(len(buffer.getvalue()))
    return np.array(lengths, dtype=np.float64)


def test_extreme_rows_are_the_lowest_and_highest_bits_per_dim() -> None:
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 4, 4).clone()
    bpd = np.array([3.0, 1.0, 5.0, 2.0, 4.0, 1.0])
    data = ScoreInput({"bits_per_dim": bpd}, images, torch.full((6,), -1))
    most, least = extreme_rows({"set": data}, k=2)
    # ties (1.0 twice) keep the index order; each image is recognisable by its pixel value
    assert most.images[:, 0, 0, 0].tolist() == [1, 5] and most.captions == ["1.00", "1.00"]
    assert least.images[:, 0, 0, 0].tolist() == [2, 4] and least.captions == ["5.00", "4.00"]
    assert most.label == "set\nmost likely" and least.label == "set\nleast likely"


def test_absent_sets_are_skipped_with_the_loaders_message(
    tmp_path: Path, colour_sources: DataSources
) -> None:
    ctx = StudyContext(tmp_path, sources=colour_sources, preset="tiny", progress=False)
    config = ctx.run_config("glow", "cifar10")
    present, skipped = available_sets(ctx, ["gtsrb", "constant", "svhn"], config)
    assert present[:2] == ["gtsrb", "constant"]
    if "svhn" not in present:  # no SVHN files on this machine: named, with what to do
        ((name, why),) = skipped
        assert name == "svhn" and "test_32x32.mat" in why and str(tmp_path) not in why


@pytest.mark.slow
def test_cifar10_study_tiny_end_to_end(tiny_ctx: StudyContext, colour_sources: DataSources) -> None:
    ctx = StudyContext(
        tiny_ctx.out_dir, colour_sources, preset="tiny", steps=2, limit=32, progress=False
    )
    result = run_study("cifar10", ctx, models=("glow", "vae"), train_limit=32, samples=4)
    findings = result.table("findings")
    ood_sets = {"gtsrb-test", "mnist-test", "fashion-mnist-test", "constant-test", "noise-test"}
    assert ood_sets <= set(findings.column("OOD set"))
    assert len(findings.rows) == 2 * len(set(findings.column("OOD set")))

    # bits/dim: every set named with its size; the paper's Glow numbers in their own column
    sets = result.table("bits_per_dim")
    by_set = {(r[0], r[1]): r for r in sets.rows}
    in_test = "CIFAR-10 test (first 32)"  # the head of the mirror's partial test split
    assert by_set["glow", in_test][3] == 32 and by_set["glow", in_test][-1] == 3.464
    assert by_set["glow", "cifar10-train"][-1] == 3.386
    assert by_set["vae", in_test][-1] is None and by_set["glow", "gtsrb-test"][-1] is None

    # AUROC of -log p: the findings and metrics tables agree with scikit-learn on the
    # per-image bits/dim of the run's cache (and the verdict follows the AUROC)
    run = load_run(find_run(ctx.runs_dir, "glow-tiny-cifar10"))
    scoring = ScoringOptions(progress=False)
    in_bpd = prepare_input(run, ctx.load_set("cifar10", "test", run.config.data), options=scoring)
    ood = ctx.load_set("gtsrb", "test", run.config.data)
    ood_bpd = prepare_input(run, ood, options=scoring).stat("bits_per_dim")
    expected = roc_auc_score(
        [0] * 32 + [1] * 32, np.concatenate([in_bpd.stat("bits_per_dim"), ood_bpd])
    )
    row = next(r for r in findings.rows if r[:2] == ["gtsrb-test", "glow"])
    assert row[7] == pytest.approx(expected, abs=1e-12)
    assert row[11] == ("higher" if expected < 0.5 else "lower")
    assert row[8] <= row[7] <= row[9]  # inside its bootstrap interval
    metrics = result.table("ood_metrics")
    nll = next(r for r in metrics.rows if r[:2] == ["glow", "nll"] and r[3] == "gtsrb-test")
    assert nll[4] == pytest.approx(expected, abs=1e-12)

    # the model-free baseline is the same under both models, and equals PIL's PNG ranking
    pngs = {r[0]: r[4] for r in metrics.rows if r[1] == "compressor-png" and r[3] == "gtsrb-test"}
    in_images = ctx.load_set("cifar10", "test", run.config.data).images
    expected_png = roc_auc_score(
        [0] * 32 + [1] * 32, -np.concatenate([png_lengths(in_images), png_lengths(ood.images)])
    )
    assert pngs == {"glow": pytest.approx(expected_png), "vae": pytest.approx(expected_png)}

    # flows only: the density/volume decomposition
    terms = result.table("flow_terms")
    assert set(terms.column("model")) == {"glow"}
    # sets that are absent here are listed with why, never silently dropped
    skipped = set(result.data["skipped"])
    assert skipped | set(result.data["ood"]) == {
        "gtsrb", "mnist", "fashion-mnist", "constant", "noise", "svhn", "cifar100", "celeba",
        "imagenet32",
    }  # fmt: skip
    assert all(f"{n}" in result.finding for n in skipped)

    out = ctx.out_dir
    pictures = ["decomposition_glow"] + [
        f"{kind}_{model}"
        for kind in ("bpd", "extremes", "samples", "training")
        for model in ("glow", "vae")
    ]
    for name in pictures:
        assert (out / f"{name}.png").stat().st_size > 5_000, name
        assert (out / f"{name}.svg").exists(), name
    assert not (out / "decomposition_vae.png").exists()
    assert StudyResult.load(out).study == "cifar10"


def test_colour_moments_match_numpy(tiny_ctx: StudyContext, colour_sources: DataSources) -> None:
    ctx = StudyContext(tiny_ctx.out_dir, colour_sources, preset="tiny", limit=64, progress=False)
    names = ("cifar10", "gtsrb", "mnist", "constant")
    result = run_study("moments", ctx, datasets=names, channels=3)
    table = result.table("channel_moments")
    assert table.column("channel")[:3] == list(CHANNEL_NAMES[3])
    reference = colour_sources.load_like("cifar10", "test", COLOUR).head(64)
    ref_var = (reference.images.numpy().astype(np.float64) / 255.0).var(axis=0)
    sums = result.data["variance_sums_per_channel"]
    for name in names[1:]:
        images = colour_sources.load_like(name, "test", COLOUR).head(64).images.numpy()
        var = (images.astype(np.float64) / 255.0).var(axis=0)  # [3, 32, 32], population
        label = f"{name}-test"
        expected = (var - ref_var).sum(axis=(1, 2))
        np.testing.assert_allclose(sums[label], expected, rtol=1e-10, atol=1e-10)
        rows = [r for r in table.rows if r[0] == label]
        np.testing.assert_allclose([r[4] for r in rows], expected, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose([r[5] for r in rows], expected * 255**2, rtol=1e-10)
    # MNIST in colour is gray repeated: three equal channels, and a zero-variance border
    mnist = [r for r in table.rows if r[0] == "mnist-test"]
    assert mnist[0][2] == mnist[1][2] == mnist[2][2] and mnist[0][3] == mnist[2][3]
    assert sums["CIFAR-10 test (first 64)"] == [0.0, 0.0, 0.0]
    assert (ctx.out_dir / "pixel_maps.png").stat().st_size > 10_000


def test_pixel_moments_in_chunks_equal_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    import dgmood.studies.moments as moments

    monkeypatch.setattr(moments, "CHUNK", 7)  # several chunks and a ragged last one
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (30, 3, 4, 4), generator=generator, dtype=torch.uint8)
    images[:, 1] = 200  # a constant channel: variance exactly 0, never negative
    means, variances = pixel_moments(images)
    x = images.reshape(30, -1).numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(means, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(variances, x.var(axis=0), rtol=1e-9, atol=1e-15)
    assert (variances[16:32] == 0).all()


@pytest.mark.slow
def test_graying_colour_blends_each_channel(
    tiny_ctx: StudyContext, colour_sources: DataSources
) -> None:
    ctx = StudyContext(
        tiny_ctx.out_dir, colour_sources, preset="tiny", steps=2, limit=16, progress=False
    )
    result = run_study(
        "graying", ctx, in_dataset="cifar10", ood=("gtsrb",), alphas=(0.0, 1.0),
        transforms=("gray", "mean"), samples=0,
    )  # fmt: skip
    rows = {(r[0], r[1], r[2]): r for r in result.table("graying").rows}
    in_label = "CIFAR-10 test (first 16)"
    for transform in ("gray", "mean"):  # at alpha 1 both sets are one and the same image
        assert rows[transform, 1.0, in_label][4] == pytest.approx(
            rows[transform, 1.0, "gtsrb-test"][4], abs=1e-6
        )
    assert rows["gray", 1.0, in_label][4] != pytest.approx(rows["mean", 1.0, in_label][4])
    assert rows["gray", 0.0, in_label][4] == pytest.approx(rows["mean", 0.0, in_label][4])
    from dgmood.studies.graying import transformed

    train = colour_sources.load_like("cifar10", "train", COLOUR)
    mean_image = train.images.to(torch.float64).mean(dim=0, keepdim=True)
    base = colour_sources.load_like("gtsrb", "test", COLOUR).head(4)
    assert transformed(base, "gray", 1.0).images.eq(128).all()
    toward_mean = transformed(base, "mean", 1.0, mean_image).images
    expected = np.rint(train.images.numpy().astype(np.float64).mean(axis=0))
    assert np.array_equal(toward_mean[0].numpy(), expected.astype(np.uint8))
    # the per-channel means differ (CIFAR-10: R > G > B), so the mean image is not gray
    assert len({int(toward_mean[0, c].float().mean()) for c in range(3)}) == 3
    assert (ctx.out_dir / "graying_examples.png").stat().st_size > 10_000


@pytest.mark.slow
def test_cv_glow_on_cifar10_per_ood_set(
    tiny_ctx: StudyContext, colour_sources: DataSources
) -> None:
    from dgmood.studies.cv_glow import CVGlow, CVGlowOptions

    ctx = StudyContext(tiny_ctx.out_dir, colour_sources, preset="tiny", steps=2, progress=False)
    options = CVGlowOptions(
        in_dataset="cifar10", ood=("gtsrb", "constant"), limit=48, hessian_chunk=256, samples=0
    )
    result = CVGlow(options).run(ctx)
    summary = result.table("second_order_summary")
    assert summary.column("OOD set q") == ["gtsrb-test", "constant-test"]
    assert {t.name for t in result.tables} == {
        "second_order_summary", "second_order_gtsrb_test", "second_order_constant_test",
    }  # fmt: skip
    # a 32x32 training set keeps the plain config: the run every other study trains on it
    (run_dir,) = result.runs.values()
    assert load_run(run_dir).config.data.upscale == "pad"
    # the variance sums per channel on the model's input scale, recomputed with numpy
    reference = colour_sources.load_like("cifar10", "test", COLOUR).head(48).images.numpy()
    for name, label in (("gtsrb", "gtsrb-test"), ("constant", "constant-test")):
        images = colour_sources.load_like(name, "test", COLOUR).head(48).images.numpy()
        scale = lambda k: (k.astype(np.float64) + 0.5) / 256 - 0.5  # noqa: E731
        expected = (scale(images).var(axis=0, ddof=1) - scale(reference).var(axis=0, ddof=1)).sum(
            axis=(1, 2)
        )
        got = result.data["per_ood"][label]["variance_difference_per_channel"]
        np.testing.assert_allclose(got, expected, rtol=1e-9)
        assert np.isfinite(result.data["per_ood"][label]["measured_gap"])
