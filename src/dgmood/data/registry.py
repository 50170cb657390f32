"""The dataset registry: one :class:`DatasetSpec` per name, and what a loader is asked for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dgmood.data.errors import DatasetNotFoundError
from dgmood.data.imageset import ImageSet


@dataclass(frozen=True)
class LoadRequest:
    root: Path  # the data directory
    split: str
    download: bool
    mirror: Path | None
    verify: bool  # check official md5s
    channels: int  # wanted channels (used only by loaders that must resize on load)
    size: int  # wanted side (idem)
    skip_unreadable: bool = False  # folder:PATH: leave out (and name) files that cannot be read
    # folders of user images: how a smaller image reaches `size`, and the sides of images
    # already in the in-distribution dataset's format (they take its geometry, not MNIST-ify)
    upscale: str = "pad"
    native_sides: tuple[int, ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channels: int  # native channels
    size: int  # native side in pixels (after any fixed crop of the loader)
    splits: tuple[str, ...]
    num_classes: int
    how_to_get: str  # one line telling the user how to obtain the files
    load: Callable[[LoadRequest], ImageSet]
    notes: str = ""  # one line for `dgmood datasets`: what the set is, caveats
    # folders (relative to the data directory) holding the files the set is read from; a
    # memory-mapped store of the set is rebuilt when a file directly in them changes
    folders: tuple[str, ...] = ()
    sized_by_request: bool = False  # the loader resizes to the requested size (store per size)
    storable: bool = True  # may be kept in a memory-mapped store (not: generated on the fly)
    always_stored: bool = False  # decoding is slow: keep a store even with storage="memory"
    # the split piece by piece, with its image count up front: written to a store without
    # ever being in memory whole (None: ``load`` it)
    stream: Callable[[LoadRequest], tuple[int, Iterator[ImageSet]]] | None = None


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> None:
    """Make ``spec`` loadable by name everywhere a dataset name is taken (``dgmood datasets``)."""
    if spec.name.startswith("folder:") or not spec.name:
        raise ValueError(f"{spec.name!r} is not a dataset name (folder:PATH is taken)")
    if spec.name in DATASETS and DATASETS[spec.name] is not spec:
        raise ValueError(f"a dataset named {spec.name!r} is already registered")
    DATASETS[spec.name] = spec


register = register_dataset  # the name the built-in readers use


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def not_found(spec_name: str, where: Path) -> DatasetNotFoundError:
    spec = DATASETS[spec_name]
    return DatasetNotFoundError(
        f"dataset {spec_name!r} not found under {where}. {spec.how_to_get} "
        "The data directory is set with --data-dir or $DGMOOD_DATA; a folder of raw files "
        f"with --mirror or $DGMOOD_MIRROR (sub-folder '{spec_name}')."
    )
