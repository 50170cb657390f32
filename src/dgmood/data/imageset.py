"""The image set every loader returns and every transform takes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ImageSet:
    """A split of a dataset: uint8 images in memory, or memory-mapped from a store
    (:mod:`dgmood.data.store`); either way a tensor that batches index alike."""

    name: str  # registry name, e.g. "fashion-mnist"
    split: str  # "train", "test", ...
    images: Tensor  # uint8 [N, C, H, W]
    labels: Tensor  # int64 [N]; -1 where unlabeled
    title: str = ""  # how tables name the set; "" = "<name>-<split>"
    # only the first len(self) images of the split are here (the rest could not be
    # obtained); the label says so, e.g. "CIFAR-10 test (first 1,000)"
    partial: bool = False

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
        """The set's name in tables and reports; a partial split names its size."""
        base = self.title or f"{self.name}-{self.split}"
        return f"{base} (first {len(self):,})" if self.partial else base

    def head(self, n: int) -> ImageSet:
        """The first ``n`` images (all if ``n`` <= 0)."""
        if n <= 0 or n >= len(self):
            return self
        return self.with_images(self.images[:n], self.labels[:n])

    def with_images(self, images: Tensor, labels: Tensor | None = None) -> ImageSet:
        """The same set (name, split, title) holding ``images`` (and ``labels``)."""
        return dataclasses.replace(
            self, images=images, labels=self.labels if labels is None else labels
        )
