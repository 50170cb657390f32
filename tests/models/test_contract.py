"""One contract, every density model: shapes, bits/dim, save/load, dtype moves, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dgmood.config import DataConfig, RunConfig
from dgmood.data.dequantize import to_model_input
from dgmood.inference import score_images
from dgmood.models.base import DensityModel, bits_per_dim
from dgmood.models.registry import build_model, resolve_model
from dgmood.presets import run_preset
from dgmood.runs import load_run, save_model

DENSITY_MODELS = [
    "glow",
    "glow-additive",
    "cv-glow",
    "realnvp",
    "pixelcnnpp",
    "vae",
    "vae-bernoulli",
    "vae-categorical",
    "vae-realnvp",
]


def make(name: str, channels: int = 1, seed: int = 0) -> DensityModel:
    torch.manual_seed(seed)
    model = build_model(resolve_model(name, "tiny"), DataConfig(channels=channels))
    images = torch.randint(0, 256, (16, channels, 32, 32), dtype=torch.uint8)
    model.train()
    with torch.no_grad():  # data-dependent init where a model has one
        model.log_prob(to_model_input(images, model.input_spec))
    model.eval()
    assert isinstance(model, DensityModel)
    return model


def seeded_log_prob(model: DensityModel, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        return model.log_prob(x)


@pytest.mark.parametrize("name", DENSITY_MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_log_prob_shape_finite_and_bits_per_dim_consistent(name: str, channels: int) -> None:
    model = make(name, channels)
    images = torch.randint(0, 256, (5, channels, 32, 32), dtype=torch.uint8)
    x = to_model_input(images, model.input_spec, generator=torch.Generator().manual_seed(0))
    terms = model.log_prob_terms(x)
    assert terms["log_prob"].shape == (5,)
    assert all(torch.isfinite(v).all() for v in terms.values())
    stats = score_images(model, images, batch_size=5, seed=0)
    assert stats["bits_per_dim"].shape == (5,)
    # bits/dim is derived from the same log_prob in one place
    expected = bits_per_dim(torch.from_numpy(stats["log_prob"]), model.input_spec)
    torch.testing.assert_close(torch.from_numpy(stats["bits_per_dim"]), expected)
    # and a freshly built model is near "no knowledge": a few bits/dim, not 0 or 1000
    assert 0.5 < float(stats["bits_per_dim"].mean()) < 20


@pytest.mark.parametrize("name", DENSITY_MODELS)
def test_training_loss_is_mean_negative_bits_per_dim(name: str) -> None:
    model = make(name)
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    x = to_model_input(images, model.input_spec, generator=torch.Generator().manual_seed(1))
    with torch.random.fork_rng():
        torch.manual_seed(3)
        loss, _ = model.training_loss(x)
    bpd = bits_per_dim(seeded_log_prob(model, x, 3), model.input_spec)
    torch.testing.assert_close(loss.detach(), bpd.mean(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", DENSITY_MODELS)
def test_checkpoint_round_trip_gives_identical_outputs(name: str, tmp_path: Path) -> None:
    model = make(name)
    config = RunConfig(model=resolve_model(name, "tiny"), data=DataConfig(channels=1))
    (tmp_path / "run").mkdir()
    save_model(model, tmp_path / "run" / "model.safetensors", config, step=7)
    loaded = load_run(tmp_path / "run")
    assert loaded.step == 7 and loaded.config == config
    x = to_model_input(torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8), model.input_spec)
    torch.testing.assert_close(seeded_log_prob(loaded.model, x), seeded_log_prob(model, x))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", DENSITY_MODELS)
def test_dtype_move_carries_every_buffer(name: str) -> None:
    model = make(name)
    x = to_model_input(torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8), model.input_spec)
    reference = seeded_log_prob(model, x)
    model64 = model.double()
    for buffer_name, buffer in model64.named_buffers():
        if buffer.is_floating_point():
            assert buffer.dtype == torch.float64, buffer_name
    log_prob64 = seeded_log_prob(model64, x.double())
    assert log_prob64.dtype == torch.float64
    torch.testing.assert_close(log_prob64.float(), reference, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("name", DENSITY_MODELS)
def test_same_seed_same_model_same_scores(name: str) -> None:
    a, b, c = make(name, seed=5), make(name, seed=5), make(name, seed=6)
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    sa, sb = score_images(a, images, seed=1), score_images(b, images, seed=1)
    assert (sa["log_prob"] == sb["log_prob"]).all()
    assert (score_images(a, images, seed=1)["log_prob"] == sa["log_prob"]).all()
    assert not (score_images(c, images, seed=1)["log_prob"] == sa["log_prob"]).all()


def test_every_density_preset_builds_for_its_run_config() -> None:
    for name in DENSITY_MODELS:
        config = run_preset(name, "tiny")
        assert isinstance(build_model(config.model, config.data), DensityModel)
