"""The compressor alone (-L(x), no model): PIL's PNG length, and FashionMNIST -> MNIST."""

from __future__ import annotations

import io
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from PIL import Image

from dgmood.config import DataConfig
from dgmood.data.loading import DataSources
from dgmood.evaluation.metrics import ood_metrics
from dgmood.runs import LoadedRun
from dgmood.scores.base import ScoreInput, make_score, score_class, score_names
from dgmood.scores.complexity import CODECS


def pil_png_bytes(image: np.ndarray) -> int:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", optimize=True, compress_level=9)
    return len(buffer.getvalue())


@pytest.mark.parametrize("channels", [1, 3])
def test_png_score_is_minus_the_pil_png_length_in_bits_per_dim(channels: int) -> None:
    generator = torch.Generator().manual_seed(0)
    # smooth ramps, noise and a constant: lengths that differ a lot
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).expand(1, channels, 32, 32)
    noise = torch.randint(0, 256, (2, channels, 32, 32), generator=generator, dtype=torch.uint8)
    constant = torch.full((1, channels, 32, 32), 77, dtype=torch.uint8)
    images = torch.cat([ramp, noise, constant])
    scores = make_score("compressor-png").score(
        ScoreInput({}, images, torch.full((4,), -1), label="mixed")
    )
    arrays = images.numpy()
    arrays = arrays[:, 0] if channels == 1 else arrays.transpose(0, 2, 3, 1)
    zero = pil_png_bytes(np.zeros_like(arrays[0]))
    dims = channels * 32 * 32
    expected = [-8.0 * (pil_png_bytes(np.ascontiguousarray(a)) - zero) / dims for a in arrays]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)
    # higher = more OOD: the constant and the ramp are more suspicious than noise
    assert min(scores[0], scores[3]) > max(scores[1], scores[2])
    assert abs(scores[3]) < 0.1  # a constant image costs about nothing beyond the header


def test_every_codec_has_a_model_free_score_that_applies_to_any_run() -> None:
    names = set(score_names())
    for codec in CODECS:
        cls = score_class(f"compressor-{codec}")
        assert f"compressor-{codec}" in names and cls.model_free and cls.references()
        # model-free: no statistics needed, no model asked (the run is never looked at)
        assert cls.needs_stats == () and cls().applies_to(cast(LoadedRun, object()))
    assert not score_class("nll").model_free and not score_class("complexity-png").model_free


def test_png_length_alone_separates_fashion_mnist_from_mnist(mirror: Path) -> None:
    """The issue's check: with no model at all, the PNG length ranks MNIST (simpler) as more
    OOD than FashionMNIST-test with AUROC ~0.99 (docs/RESULTS.md: 0.990 on all 10,000 + 10,000
    test images; here the first 2,000 of each)."""
    sources = DataSources(mirror=str(mirror))
    like = DataConfig(dataset="fashion-mnist", channels=1)  # what the gray runs see: 1x32x32
    fashion = sources.load_like("fashion-mnist", "test", like).head(2000)
    mnist = sources.load_like("mnist", "test", like).head(2000)
    score = make_score("compressor-png")
    metrics = ood_metrics(
        score.score(ScoreInput({}, fashion.images, fashion.labels)),
        score.score(ScoreInput({}, mnist.images, mnist.labels)),
        confidence=None,
    )
    assert metrics.auroc > 0.98
