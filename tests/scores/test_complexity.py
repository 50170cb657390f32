"""Input complexity: a constant image compresses to ~0 bits, noise to ~8 bits per dimension."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from dgmood.scores.base import ScoreInput, make_score
from dgmood.scores.complexity import CODECS, compressed_bits_per_dim

MakeInput = Callable[..., ScoreInput]


def _constant_and_noise(channels: int) -> torch.Tensor:
    constant = torch.full((1, channels, 32, 32), 200, dtype=torch.uint8)
    noise = torch.randint(0, 256, (1, channels, 32, 32), generator=torch.Generator().manual_seed(0))
    return torch.cat([constant, noise.to(torch.uint8)])


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("channels", [1, 3])
def test_constant_costs_nothing_and_noise_about_eight_bits(codec: str, channels: int) -> None:
    constant, noise = compressed_bits_per_dim(_constant_and_noise(channels), codec)
    assert abs(constant) < 0.1  # a few bytes for the level itself
    assert 7.5 < noise < 10.0


@pytest.mark.parametrize(
    "name", ["complexity-png", "complexity-jp2", "complexity-webp", "complexity-jxl"]
)
def test_score_subtracts_complexity_from_bits_per_dim(name: str, make_input: MakeInput) -> None:
    images = _constant_and_noise(1)
    # the model finds both equally likely: the simple image is the suspicious one
    scores = make_score(name).score(
        make_input({"bits_per_dim": np.array([4.0, 4.0])}, images=images)
    )
    assert scores[0] > scores[1]
    assert scores[0] == pytest.approx(4.0, abs=0.1)


def test_wrong_images_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match="uint8"):
        compressed_bits_per_dim(torch.zeros(1, 2, 8, 8, dtype=torch.uint8), "png")
    with pytest.raises(ValueError, match="unknown codec"):
        compressed_bits_per_dim(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "gif")


def test_every_new_score_is_registered_with_a_reference() -> None:
    from dgmood.scores.base import score_class, score_names

    names = set(score_names())
    new = {"likelihood-ratio", "typicality", "waic", "likelihood-regret", "dose"}
    assert new | {f"complexity-{codec}" for codec in CODECS} <= names
    for name in new:
        assert score_class(name).references()
