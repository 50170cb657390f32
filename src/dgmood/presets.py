"""Run presets: the model's size preset plus matching training settings.

``tiny`` runs in seconds (tests), ``cpu`` in minutes on 2 cores (the demo: ~10 minutes on
gray 1x32x32 data, <= 30 minutes on colour 3x32x32 data such as CIFAR-10, through each
family's ``colour_train_overrides``), ``paper`` is the published setting (GPU-scale).
"""

from __future__ import annotations

import dataclasses

from dgmood.config import DataConfig, ExecutionConfig, RunConfig, TrainConfig
from dgmood.data.datasets import DATASETS
from dgmood.models.registry import family_spec, resolve_model

TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(
        steps=20,
        batch_size=16,
        lr=1e-3,
        warmup_steps=5,
        eval_every=0,
        checkpoint_every=10,
        log_every=5,
    ),
    "cpu": TrainConfig(
        steps=600,
        batch_size=64,
        lr=1e-3,
        warmup_steps=100,
        eval_every=200,
        checkpoint_every=100,
        log_every=25,
    ),
    # models that need longer than `cpu` to show anything: ~30 min on 2 cores, `cpu` sizes
    "cpu-long": TrainConfig(
        steps=6000,
        batch_size=64,
        lr=2e-3,
        warmup_steps=100,
        eval_every=1000,
        checkpoint_every=500,
        log_every=50,
    ),
    # Kingma & Dhariwal: Adamax, lr 1e-3 with linear warm-up; batch 64 on one GPU
    "paper": TrainConfig(
        steps=200_000,
        batch_size=64,
        optimizer="adamax",
        lr=1e-3,
        warmup_steps=5000,
        eval_every=5000,
        checkpoint_every=2000,
        log_every=100,
    ),
}

# How the preset's steps run by default (never part of a run's identity)
EXECUTION_PRESETS: dict[str, ExecutionConfig] = {"paper": ExecutionConfig(channels_last=False)}

# Train presets that reuse another preset's model sizes (there is no `cpu-long` model).
MODEL_SIZE_OF_TRAIN_PRESET: dict[str, str] = {"cpu-long": "cpu"}


def run_preset(
    model: str, preset: str = "cpu", dataset: str = "fashion-mnist", channels: int | None = None
) -> RunConfig:
    """A complete run config: ``model`` (family or alias) at size ``preset`` on ``dataset``."""
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(TRAIN_PRESETS)}")
    if channels is None:
        # a dataset's native channels; user folders (folder:PATH) default to colour
        channels = DATASETS[dataset].channels if dataset in DATASETS else 3
    data = DataConfig(dataset=dataset, channels=channels)
    model_config = resolve_model(model, MODEL_SIZE_OF_TRAIN_PRESET.get(preset, preset))
    # each family's own changes to the train preset and the data config (its FamilySpec), and
    # for colour data its colour_train_overrides on top of the train overrides
    spec = family_spec(model_config)
    overrides = dict(spec.train_overrides.get(preset, {}))
    if channels == 3:
        overrides.update(spec.colour_train_overrides.get(preset, {}))
    train = dataclasses.replace(TRAIN_PRESETS[preset], **overrides)
    data = dataclasses.replace(data, **spec.data_overrides.get(preset, {}))
    return RunConfig(
        model=model_config,
        data=data,
        train=train,
        preset=f"{model}/{preset}",
        execution=EXECUTION_PRESETS.get(preset, ExecutionConfig()),
    )
