"""Where a run's datasets come from, and loading them in the run's format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dgmood.config import DataConfig
from dgmood.data.datasets import DATASETS, MEMMAP_ABOVE_BYTES, ImageSet, load_dataset
from dgmood.data.images import PreparedImage, prepare_files
from dgmood.data.transforms import match_format


@dataclass(frozen=True)
class DataSources:
    """Where to find datasets (see :mod:`dgmood.data.sources`)."""

    data_dir: str | None = None
    mirror: str | None = None
    download: bool = False
    # "auto", "memory" or "memmap" (None: $DGMOOD_STORAGE, else "auto"); how splits are held
    # (dgmood.data.datasets), never which images: not part of a run's identity
    storage: str | None = None
    memmap_above_bytes: int = MEMMAP_ABOVE_BYTES  # "auto": memory-map splits larger than this
    skip_unreadable: bool = False  # folder:PATH sets: leave out files that cannot be read

    def load_like(self, name: str, split: str, data: DataConfig) -> ImageSet:
        """Load ``name``/``split`` in the format (channels, size, upscaling) of ``data``.

        A run's validation split ``train-holdout`` needs ``train_split=train-fit``: with
        ``train`` the run would validate on images it trains on.
        """
        if (name, split) == (data.dataset, data.val_split) and split == "train-holdout":
            if data.train_split != "train-fit":
                raise ValueError(
                    "data.val_split=train-holdout holds the last tenth of the training split, "
                    f"which data.train_split={data.train_split} trains on too; set "
                    "data.train_split=train-fit (the other nine tenths)"
                )
        raw = load_dataset(
            name,
            split,
            data_dir=self.data_dir,
            download=self.download,
            mirror=self.mirror,
            channels=data.channels,
            size=data.image_size,
            storage=self.storage,
            memmap_above_bytes=self.memmap_above_bytes,
            skip_unreadable=self.skip_unreadable,
            upscale=data.upscale,
            native_sides=native_sides(data),
        )
        return match_format(raw, data.channels, data.image_size, data.upscale)


def native_sides(data: DataConfig) -> tuple[int, ...]:
    """Sides of images already in ``data``'s format: the dataset's own and the model's."""
    spec = DATASETS.get(data.dataset)
    return tuple(sorted({data.image_size, *([spec.size] if spec is not None else [])}))


def load_files_like(
    paths: Sequence[str | Path], data: DataConfig, invert: bool | None = None
) -> list[PreparedImage]:
    """Image files in the format of ``data``: the dataset's geometry for images already in
    it (e.g. 28x28 gray for a padded MNIST run), the photo route for the others
    (:func:`dgmood.data.images.prepare_image`)."""
    return prepare_files(
        paths,
        data.channels,
        data.image_size,
        upscale=data.upscale,
        native_sides=native_sides(data),
        invert=invert,
    )
