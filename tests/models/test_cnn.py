"""MNISTCNN: the Classifier contract, registry wiring, and that it can learn."""

from __future__ import annotations

import pytest
import torch

from dgmood.config import DataConfig, RunConfig
from dgmood.data.dequantize import to_model_input
from dgmood.models.base import Classifier
from dgmood.models.classifiers.cnn import MNISTCNN, CNNConfig, build_cnn
from dgmood.models.registry import build_model, families, model_preset


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 28, 28)])
def test_features_and_logits_have_contract_shapes(shape: tuple[int, int, int]) -> None:
    model = MNISTCNN(CNNConfig(channels=(4, 8), hidden_width=16, num_classes=7), shape).eval()
    x = torch.rand(5, *shape)
    features = model.features(x)
    assert isinstance(model, Classifier)
    assert features.shape == (5, 16)
    assert model.head(features).shape == (5, 7)
    torch.testing.assert_close(model(x), model.head(features))
    assert model.num_classes == 7


def test_input_spec_maps_pixels_to_unit_interval() -> None:
    model = MNISTCNN(CNNConfig(), (1, 32, 32))
    spec = model.input_spec
    assert (spec.shape, spec.n_bits, spec.low, spec.high, spec.discrete) == (
        (1, 32, 32),
        8,
        0.0,
        1.0,
        True,
    )
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).repeat(1, 1, 32, 32 // 3 + 1)
    pixels = pixels[..., :32, :32].contiguous()
    mapped = to_model_input(pixels, spec)
    torch.testing.assert_close(mapped, pixels.float() / 255)


def test_wrong_image_shape_is_a_clear_value_error() -> None:
    model = MNISTCNN(CNNConfig(channels=(4,), hidden_width=8), (1, 32, 32))
    with pytest.raises(ValueError, match="expected images of shape"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        MNISTCNN(CNNConfig(channels=(4, 4, 4)), (1, 4, 4))


def test_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    model = MNISTCNN(CNNConfig(channels=(4,), hidden_width=64, dropout=0.5), (1, 8, 8))
    x = torch.rand(3, 1, 8, 8)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_registry_builds_cnn_for_the_data_config() -> None:
    assert "cnn" in families()
    model = build_model(model_preset("cnn", "tiny"), DataConfig(channels=3, image_size=28))
    assert isinstance(model, MNISTCNN)
    assert model.input_spec.shape == (3, 28, 28)
    assert isinstance(build_cnn(model_preset("cnn", "cpu"), DataConfig()), MNISTCNN)


def test_config_round_trips_through_yaml() -> None:
    config = RunConfig(model=CNNConfig(channels=(8, 16, 32), hidden_width=64, dropout=0.2))
    assert RunConfig.from_yaml(config.to_yaml()) == config


def test_tiny_cnn_learns_bar_orientation() -> None:
    """Horizontal vs vertical bars at random positions: any working CNN fits this quickly."""
    side, count = 12, 32
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(count, 1, side, side)
    labels = torch.arange(count) % 2
    positions = torch.randint(1, side - 1, (count,), generator=generator)
    for index, (label, position) in enumerate(zip(labels, positions, strict=True)):
        if label == 0:
            images[index, 0, position, 1 : side - 1] = 1.0
        else:
            images[index, 0, 1 : side - 1, position] = 1.0
    torch.manual_seed(0)
    config = CNNConfig(channels=(4, 8), hidden_width=16, num_classes=2)
    model = MNISTCNN(config, (1, side, side))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss, _ = model.training_loss(images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(-1) == labels).float().mean().item()
    assert accuracy == 1.0


def test_mlp_alias_is_flattened_pixels_through_one_hidden_layer() -> None:
    """`mlp` (no conv block): logits equal an independent two-layer computation."""
    from dgmood.models.registry import resolve_model

    config = resolve_model("mlp", "tiny")
    model = build_model(config, DataConfig(dataset="mnist"))
    model.eval()
    x = torch.rand(5, 1, 32, 32)
    hidden = model.hidden[1]
    manual = torch.relu(x.flatten(1) @ hidden.weight.T + hidden.bias)
    manual = manual @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(model(x), manual)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def test_strided_cnn_has_no_pooling_and_halves_like_the_pooled_one() -> None:
    import dataclasses

    pooled = model_preset("cnn", "tiny")
    strided = dataclasses.replace(pooled, pooling="stride")
    a = build_model(pooled, DataConfig(dataset="mnist"))
    b = build_model(strided, DataConfig(dataset="mnist"))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in b.modules())
    assert [m.stride for m in b.modules() if isinstance(m, torch.nn.Conv2d)] == [(2, 2)] * 2
    x = torch.rand(3, 1, 32, 32)
    assert a.features(x).shape == b.features(x).shape == (3, pooled.hidden_width)
