"""Where a run's datasets come from, and loading them in the run's format."""

from __future__ import annotations

from dataclasses import dataclass

from dgmood.config import DataConfig
from dgmood.data.datasets import ImageSet, load_dataset
from dgmood.data.transforms import match_format


@dataclass(frozen=True)
class DataSources:
    """Where to find datasets (see :mod:`dgmood.data.sources`)."""

    data_dir: str | None = None
    mirror: str | None = None
    download: bool = False
    skip_unreadable: bool = False  # folder:PATH sets: leave out files that cannot be read

    def load_like(self, name: str, split: str, data: DataConfig) -> ImageSet:
        """Load ``name``/``split`` in the format (channels, size, upscaling) of ``data``."""
        raw = load_dataset(
            name,
            split,
            data_dir=self.data_dir,
            download=self.download,
            mirror=self.mirror,
            channels=data.channels,
            size=data.image_size,
            skip_unreadable=self.skip_unreadable,
        )
        return match_format(raw, data.channels, data.image_size, data.upscale)
