"""Where datasets live: the data directory, local mirrors of raw files, and checksums.

The data directory is, in order: an explicit ``data_dir`` argument (``--data-dir``), the
``DGMOOD_DATA`` environment variable, or ``~/.cache/dgmood/data``. Inside it every dataset
uses torchvision's own layout, so an existing torchvision download is reused as is.

A *mirror* is a folder with one sub-folder per dataset holding the original raw files
(for MNIST-style sets: the four ``*.gz`` idx files), e.g. a lab's shared copy. It is given by
``mirror`` (``--mirror``) or ``DGMOOD_MIRROR``. Files are copied from it into the data
directory only after their md5 matches the official one.

*Storage* (``storage`` / ``DGMOOD_STORAGE``: ``auto``, ``memory`` or ``memmap``) says
whether a split is loaded into memory or kept in a memory-mapped store inside the data
directory (:mod:`dgmood.data.store`); it changes how data is held, never which images.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from dgmood.data.errors import CorruptDatasetError
from dgmood.io import atomic_path

DATA_ENV = "DGMOOD_DATA"
MIRROR_ENV = "DGMOOD_MIRROR"
STORAGE_ENV = "DGMOOD_STORAGE"
STORAGES = ("auto", "memory", "memmap")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: argument, else $DGMOOD_DATA, else ~/.cache/dgmood/data."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dgmood" / "data"


def resolve_mirror(mirror: str | os.PathLike[str] | None = None) -> Path | None:
    """The local mirror of raw files: argument, else $DGMOOD_MIRROR, else none."""
    if mirror is not None:
        return Path(mirror).expanduser()
    env = os.environ.get(MIRROR_ENV)
    return Path(env).expanduser() if env else None


def resolve_storage(storage: str | None = None) -> str:
    """How splits are held: argument, else $DGMOOD_STORAGE, else "auto".

    ``memory``: loaded into RAM; ``memmap``: kept in a memory-mapped store
    (:mod:`dgmood.data.store`); ``auto``: a store where one exists or the split is large.
    """
    value = storage if storage is not None else os.environ.get(STORAGE_ENV) or "auto"
    if value not in STORAGES:
        where = "storage" if storage is not None else f"${STORAGE_ENV}"
        raise ValueError(f"{where} must be one of {', '.join(STORAGES)}, not {value!r}")
    return value


def md5sum(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str | None) -> None:
    """Raise :class:`CorruptDatasetError` naming ``path`` if its md5 is not ``expected``."""
    if expected is None:
        return
    actual = md5sum(path)
    if actual != expected:
        raise CorruptDatasetError(
            f"{path} is corrupt: md5 {actual} != official {expected}. "
            "Delete it and download again (--download), or copy a good file in its place."
        )


def copy_verified(source: Path, target: Path, md5: str | None) -> None:
    """Copy ``source`` to ``target`` atomically after checking the md5 of ``source``."""
    verify_md5(source, md5)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
