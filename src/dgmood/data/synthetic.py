"""Synthetic OOD sets for any model: one random colour per image, and uniform noise.

Both are made at the requested channels and size (a colour run gets 3x32x32 images, a gray
run 1x32x32), from a fixed seed per set and split, so every run and every machine sees the
same images. Only a ``test`` split, of :data:`SYNTHETIC_TEST_SIZE` images; labels are -1.

- ``constant``: every pixel of an image has one colour, each channel's level uniform in
  0..255 (Serra et al.'s "Constant").
- ``noise``: every sub-pixel uniform in 0..255, independently (Serra et al.'s "Noise").

References: Serra et al., "Input Complexity and Out-of-distribution Detection with
Likelihood-based Generative Models", ICLR 2020 (Sec. 3, the Constant and Noise sets).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dgmood.data.imageset import ImageSet
from dgmood.data.registry import LoadRequest

SYNTHETIC_TEST_SIZE = 10_000  # images in the test split of `constant` and `noise`
SEEDS = {"constant": 2020_1, "noise": 2020_2}  # one fixed seed per set


def _generator(name: str, channels: int, size: int) -> torch.Generator:
    # the format is part of the seed: a gray and a colour run get unrelated draws, each fixed
    return torch.Generator().manual_seed(SEEDS[name] * 1_000_003 + channels * 1_009 + size)


def constant_images(n: int, channels: int, size: int) -> torch.Tensor:
    """``n`` uint8 images ``[channels, size, size]``, each filled with one random colour."""
    levels = torch.randint(
        0, 256, (n, channels, 1, 1), generator=_generator("constant", channels, size),
        dtype=torch.uint8,
    )  # fmt: skip
    return levels.expand(n, channels, size, size).contiguous()


def noise_images(n: int, channels: int, size: int) -> torch.Tensor:
    """``n`` uint8 images ``[channels, size, size]`` of independent uniform levels."""
    return torch.randint(
        0, 256, (n, channels, size, size), generator=_generator("noise", channels, size),
        dtype=torch.uint8,
    )  # fmt: skip


def synthetic(
    name: str, make: Callable[[int, int, int], torch.Tensor]
) -> Callable[[LoadRequest], ImageSet]:
    def load(req: LoadRequest) -> ImageSet:
        if req.split != "test":
            raise ValueError(f"{name} has one split, test ({SYNTHETIC_TEST_SIZE:,} images)")
        images = make(SYNTHETIC_TEST_SIZE, req.channels, req.size)
        return ImageSet(name, "test", images, torch.full((len(images),), -1, dtype=torch.int64))

    return load
