"""Configs: frozen, round-trip through YAML for every family, typed overrides."""

from __future__ import annotations

import dataclasses

import pytest

from dgmood.config import RunConfig, replace_path
from dgmood.models.registry import model_names
from dgmood.presets import TRAIN_PRESETS, run_preset


@pytest.mark.parametrize("model", model_names())
@pytest.mark.parametrize("preset", ["tiny", "cpu"])
def test_every_model_config_round_trips_through_yaml(model: str, preset: str) -> None:
    config = run_preset(model, preset, "fashion-mnist")
    assert RunConfig.from_yaml(config.to_yaml()) == config


def test_configs_are_frozen() -> None:
    config = run_preset("glow", "tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.steps = 3  # type: ignore[misc]


def test_overrides_are_typed_and_checked() -> None:
    config = run_preset("glow", "tiny")
    changed = replace_path(config, "train.lr", "3e-4")
    changed = replace_path(changed, "model.hidden_channels", "7")
    assert changed.train.lr == 3e-4 and changed.model.hidden_channels == 7
    assert config.train.lr == TRAIN_PRESETS["tiny"].lr  # the original is untouched
    with pytest.raises(ValueError, match="unknown config key 'stepz'"):
        replace_path(config, "train.stepz", "3")


def test_unknown_yaml_field_is_rejected() -> None:
    text = run_preset("glow", "tiny").to_yaml().replace("n_steps:", "n_stepz:")
    with pytest.raises(ValueError, match="n_stepz"):
        RunConfig.from_yaml(text)


def test_shipped_yaml_configs_load_and_match_their_presets() -> None:
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(folder.glob("*.yaml"))
    assert files, "configs/ should ship YAML presets"
    for path in files:
        config = RunConfig.load(path)
        model, preset = config.preset.split("/")
        assert config == run_preset(model, preset, config.data.dataset), path.name


@pytest.mark.parametrize(("dataset", "channels"), [("mnist", 1), ("kmnist", 1), ("svhn", 3)])
def test_run_preset_takes_native_channels_from_the_dataset_registry(
    dataset: str, channels: int
) -> None:
    from dgmood.data.datasets import DATASETS

    assert run_preset("glow", "tiny", dataset).data.channels == channels
    assert DATASETS[dataset].channels == channels
    assert run_preset("glow", "tiny", "folder:photos").data.channels == 3


def test_memory_light_is_a_training_option_and_old_model_keys_still_load() -> None:
    """It changes how backprop stores activations, not the model: it lives in ``train``."""
    config = run_preset("glow", "tiny")
    light = replace_path(config, "train.memory_light", "true")
    assert light.train.memory_light and light.model == config.model
    assert RunConfig.from_yaml(light.to_yaml()) == light
    # a config written when it was a model field loads with the key in its new place
    old = config.to_dict()
    del old["train"]["memory_light"]
    old["model"]["memory_light"] = True
    assert RunConfig.from_dict(old) == light
    old["train"]["memory_light"] = False
    with pytest.raises(ValueError, match="model.memory_light.*train.memory_light"):
        RunConfig.from_dict(old)
    with pytest.raises(ValueError, match="moved to train.memory_light"):
        replace_path(config, "model.memory_light", "true")
