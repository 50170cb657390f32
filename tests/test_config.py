"""Configs: frozen, round-trip through YAML for every family, typed overrides."""

from __future__ import annotations

import dataclasses

import pytest

from dgmood.config import DataConfig, RunConfig, TrainConfig, replace_path
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


def test_execution_settings_are_not_part_of_a_runs_identity() -> None:
    """How steps run (threads, precision, compile, memory-light, device, budget) is not what is
    trained: the identity hash ignores them; every field of model, data or train changes it."""
    config = run_preset("glow", "tiny")
    for key, value in [
        ("execution.num_threads", "3"),
        ("execution.channels_last", "false"),
        ("execution.precision", "bf16"),
        ("execution.compile", "true"),
        ("execution.memory_light", "true"),
        ("execution.device", "cpu"),
        ("execution.budget_minutes", "5"),
        ("preset", "renamed"),
    ]:
        changed = replace_path(config, key, value)
        assert changed != config and changed.same_run(config), key
        assert changed.identity_hash() == config.identity_hash(), key
    for key, value in [
        ("train.lr", "0.5"),
        ("train.seed", "7"),
        ("train.steps", "21"),
        ("data.dataset", "mnist"),
        ("data.train_limit", "5"),
        ("model.hidden_channels", "17"),
    ]:
        changed = replace_path(config, key, value)
        assert not changed.same_run(config), key
        assert changed.identity_hash() != config.identity_hash(), key
    # the hash is of the content: an independent sha256 of the canonical JSON of the fields
    # that differ from their defaults (so a field added later with a default changes no hash)
    import hashlib
    import json

    defaults = {
        "model": dataclasses.asdict(type(config.model)()),
        "data": dataclasses.asdict(DataConfig()),
        "train": dataclasses.asdict(TrainConfig()),
    }
    identity = {
        section: {
            k: v
            for k, v in config.to_dict()[section].items()
            if k == "family"
            or defaults[section].get(k, object()) != (tuple(v) if isinstance(v, list) else v)
        }
        for section in ("model", "data", "train")
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    assert config.identity_hash() == hashlib.sha256(canonical).hexdigest()[:12]
    # a value set to its default is the same run as the value left out
    explicit = replace_path(config, "train.grad_clip", str(TrainConfig().grad_clip))
    assert explicit.identity_hash() == config.identity_hash()


def test_older_configs_with_execution_keys_in_train_or_model_still_load() -> None:
    """Run directories outlive versions: keys that moved to ``execution`` load in their new
    place, and the older names still work with --set."""
    config = run_preset("glow", "tiny")
    light = replace_path(config, "train.memory_light", "true")  # the older name
    assert light.execution.memory_light and light.model == config.model
    assert RunConfig.from_yaml(light.to_yaml()) == light
    old = config.to_dict()
    del old["execution"]
    old["model"]["memory_light"] = True
    old["train"].update(num_threads=2, precision="auto", compile=True, budget_minutes=3.0)
    loaded = RunConfig.from_dict(old)
    assert loaded.execution.memory_light and loaded.execution.num_threads == 2
    assert (loaded.execution.precision, loaded.execution.compile) == ("auto", True)
    assert loaded.execution.budget_minutes == 3.0 and loaded.same_run(config)
    old["train"]["memory_light"] = False
    with pytest.raises(ValueError, match="memory_light.*disagree"):
        RunConfig.from_dict(old)
