"""The in-memory image set every loader returns and every transform takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ImageSet:
    """A split of a dataset, fully in memory."""

    name: str  # registry name, e.g. "fashion-mnist"
    split: str  # "train", "test", ...
    images: Tensor  # uint8 [N, C, H, W]
    labels: Tensor  # int64 [N]; -1 where unlabeled

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if len(self.labels) != len(self.images):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def label(self) -> str:
        return f"{self.name}-{self.split}"

    def head(self, n: int) -> ImageSet:
        """The first ``n`` images (all if ``n`` <= 0)."""
        if n <= 0 or n >= len(self):
            return self
        return ImageSet(self.name, self.split, self.images[:n], self.labels[:n])
