from __future__ import annotations

import numpy as np
import pytest
import torch

from dgmood.studies import StudyContext, run_study
from dgmood.studies.graying import blend_to_gray, blend_to_mean, scale_contrast


def test_blend_and_contrast_round_to_uint8() -> None:
    images = torch.tensor([0, 255, 100, 101], dtype=torch.uint8).view(1, 1, 2, 2)
    assert blend_to_gray(images, 0.0).equal(images)
    assert blend_to_gray(images, 1.0).eq(128).all()
    # 0.5 * x + 64: 64, 191.5 -> 192 (round half to even), 114, 114.5 -> 114
    assert blend_to_gray(images, 0.5).flatten().tolist() == [64, 192, 114, 114]
    assert blend_to_gray(images, 0.5).dtype == torch.uint8
    # the image mean is 114: alpha 1 gives the constant mean image
    assert scale_contrast(images, 1.0).eq(114).all()
    assert scale_contrast(images, 0.0).equal(images)
    mean = torch.tensor([10.0, 20.0, 30.4, 40.6]).view(1, 1, 2, 2)
    assert blend_to_mean(images, 0.0, mean).equal(images)
    assert blend_to_mean(images, 1.0, mean).flatten().tolist() == [10, 20, 30, 41]
    # 0.5 x + 0.5 mu: 5, 137.5 -> 138, 65.2 -> 65, 70.8 -> 71
    assert blend_to_mean(images, 0.5, mean).flatten().tolist() == [5, 138, 65, 71]


def test_graying_study_sets_meet_at_the_constant_image(tiny_ctx: StudyContext) -> None:
    result = run_study("graying", tiny_ctx, alphas=(0.0, 0.5, 1.0))
    rows = result.table("graying").rows
    assert len(rows) == 3 * 2 * 3  # transforms x sets x alphas
    gray = {(r[1], r[2]): r for r in rows if r[0] == "gray"}
    # at alpha 1 every image is the same constant image with the same per-index noise:
    # both sets get exactly the same bits/dim
    assert gray[1.0, "fashion-mnist-test"][4] == pytest.approx(gray[1.0, "mnist-test"][4], abs=1e-6)
    assert gray[0.0, "fashion-mnist-test"][4] != pytest.approx(gray[0.0, "mnist-test"][4])
    # toward the training mean image: at alpha 1 both sets are that image
    mean = {(r[1], r[2]): r for r in rows if r[0] == "mean"}
    assert mean[1.0, "fashion-mnist-test"][4] == pytest.approx(mean[1.0, "mnist-test"][4], abs=1e-6)
    assert mean[1.0, "mnist-test"][4] != pytest.approx(gray[1.0, "mnist-test"][4])
    assert np.isfinite([r[4] for r in rows]).all()
    assert "alpha 0" in result.finding and "alpha 1" in result.finding
    for name in ("graying_gray", "graying_contrast", "graying_mean"):
        assert (tiny_ctx.out_dir / f"{name}.png").exists()
        assert (tiny_ctx.out_dir / f"{name}.svg").exists()
