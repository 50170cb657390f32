from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dgmood.data.datasets import load_dataset
from dgmood.studies import StudyContext, run_study
from dgmood.studies.moments import pixel_moments


def test_pixel_moments_of_synthetic_images_with_known_moments() -> None:
    # pixel d is 255 in half the images and 0 in the other half where d is even, and a
    # constant 51 (0.2) where d is odd: means 0.5 / 0.2, variances 0.25 / 0
    n, dims = 10, 8
    images = torch.zeros(n, 1, 2, 4, dtype=torch.uint8)
    flat = images.view(n, dims)
    flat[: n // 2, 0::2] = 255
    flat[:, 1::2] = 51
    means, variances = pixel_moments(images)
    np.testing.assert_allclose(means, [0.5, 0.2] * 4)
    np.testing.assert_allclose(variances, [0.25, 0.0] * 4, atol=1e-15)


def test_moments_study_on_mnist_and_fashion_mnist(tiny_ctx: StudyContext) -> None:
    result = run_study("moments", tiny_ctx)
    table = result.table("pixel_moments")
    assert table.column("set") == ["fashion-mnist-test", "mnist-test"]
    assert table.column("images") == [32, 32] and table.column("dimensions") == [784, 784]
    mnist = load_dataset("mnist", "test").head(32)
    means, variances = pixel_moments(mnist.images)
    assert table.rows[1][3] == pytest.approx(means.mean())
    assert table.column("mean of variances")[1] == pytest.approx(variances.mean())
    # MNIST is darker on average than FashionMNIST (about 0.13 vs 0.29)
    mean_of_means = table.column("mean of means")
    assert mean_of_means[1] < mean_of_means[0]
    assert "mnist-test: mean" in result.finding and "ratio" in result.finding
    out = tiny_ctx.out_dir
    assert (out / "pixel_moments.png").stat().st_size > 10_000
    assert (out / "pixel_moments.svg").exists()
    assert json.loads((out / "result.json").read_text())["study"] == "moments"
