"""Colour (3-channel) data get each family's colour training overrides on top of its own."""

from __future__ import annotations

import dataclasses

import pytest

from dgmood.models.registry import family_spec
from dgmood.presets import TRAIN_PRESETS, run_preset


@pytest.mark.parametrize("model", ["glow", "pixelcnnpp", "vae", "realnvp"])
def test_colour_runs_train_longer_and_gray_runs_are_unchanged(model: str) -> None:
    spec = family_spec(run_preset(model, "cpu").model)
    colour = spec.colour_train_overrides["cpu"]
    gray = run_preset(model, "cpu", "fashion-mnist")
    expected_gray = dataclasses.replace(TRAIN_PRESETS["cpu"], **spec.train_overrides.get("cpu", {}))
    assert gray.train == expected_gray  # FashionMNIST/MNIST numbers stay valid
    cifar = run_preset(model, "cpu", "cifar10")
    assert cifar.train.steps > gray.train.steps
    for key, value in colour.items():
        assert getattr(cifar.train, key) == value
    # the same model size: only how long it trains depends on the data
    assert cifar.model == gray.model
    # any colour data set, a user's folder included, gets them
    assert run_preset(model, "cpu", "folder:photos").train == cifar.train
    # and gray data forced to 3 channels too (colour OOD sets trained on)
    assert run_preset(model, "cpu", "mnist", channels=3).train == cifar.train


def test_other_presets_have_no_colour_overrides() -> None:
    assert run_preset("glow", "tiny", "cifar10").train == run_preset("glow", "tiny").train
