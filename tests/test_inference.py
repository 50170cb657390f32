"""Scoring results are a function of the images, the model and the seed, not of batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgmood.data.imageset import ImageSet
from dgmood.inference import score_cached, score_images
from dgmood.models.registry import build_model
from dgmood.presets import run_preset


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = run_preset(name, "tiny", "fashion-mnist")
    model = build_model(config.model, config.data)
    return model.eval()


def _images(n: int = 150) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 1, 32, 32), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize("name", ["glow", "vae"])
def test_scores_do_not_depend_on_the_batch_size(name: str) -> None:
    model, images = _model(name), _images()
    a = score_images(model, images, batch_size=256, seed=3)
    b = score_images(model, images, batch_size=100, seed=3)
    c = score_images(model, images, batch_size=7, seed=3)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(a[key], c[key], rtol=1e-5, atol=1e-4)
    other_seed = score_images(model, images, batch_size=100, seed=4)
    assert not np.allclose(a["log_prob"], other_seed["log_prob"])


def test_vae_iwae_bound_does_not_depend_on_the_batch_size() -> None:
    model, images = _model("vae"), _images(70)
    a = score_images(model, images, batch_size=256, iwae_k=4)
    b = score_images(model, images, batch_size=30, iwae_k=4)
    np.testing.assert_allclose(a["iwae_log_prob"], b["iwae_log_prob"], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", ["glow", "vae"])
def test_an_images_score_does_not_depend_on_its_position_or_company(name: str) -> None:
    """Defect: a VAE's ELBO noise was seeded per block of 64 images, so a file's score
    changed with its place in the argument list. Every random draw (dequantization noise, a
    VAE's latent samples) is now seeded by the seed and the image itself."""
    model, images = _model(name), _images(70)
    whole = score_images(model, images, batch_size=16, seed=2)
    alone = score_images(model, images[20:21], seed=2)
    for key in whole:
        np.testing.assert_allclose(alone[key][0], whole[key][20], rtol=1e-5, atol=1e-4)
    order = torch.randperm(70, generator=torch.Generator().manual_seed(3))
    shuffled = score_images(model, images[order], batch_size=7, seed=2)
    for key in whole:
        np.testing.assert_allclose(shuffled[key], whole[key][order], rtol=1e-5, atol=1e-4)
    # a duplicate is the same image: the same draws, the same score
    twice = score_images(model, images[[5, 5]], seed=2)["log_prob"]
    assert twice[0] == pytest.approx(twice[1], rel=1e-6)
    # the seed still matters
    other_seed = score_images(model, images[20:21], seed=3)["log_prob"][0]
    assert abs(other_seed - alone["log_prob"][0]) > 1e-4


def test_cache_does_not_return_another_batch_sizes_result(tmp_path) -> None:
    """Defect: the cache key omitted the batch size while noise was seeded per batch."""
    model, images = _model("vae"), _images(130)
    imageset = ImageSet("noise", "test", images, torch.full((130,), -1))
    cached = score_cached(model, imageset, tmp_path, step=0, batch_size=256, progress=False)
    fresh = score_images(model, images, batch_size=100)
    np.testing.assert_allclose(cached["log_prob"], fresh["log_prob"], rtol=1e-5, atol=1e-4)
