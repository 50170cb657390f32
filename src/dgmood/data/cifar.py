"""CIFAR-10 and CIFAR-100 from their official releases.

CIFAR-10 is read from whichever official layout the data directory holds:

1. ``cifar-10-batches-py/``, the python version, through torchvision's reader (and its
   downloader with ``--download``);
2. ``cifar-10-batches-bin/``, the binary version: ``data_batch_1.bin`` .. ``data_batch_5.bin``
   and ``test_batch.bin``, each a run of 3,073-byte records (1 label byte, then 1,024 red,
   1,024 green and 1,024 blue bytes, each plane row-major).

When neither is there, a mirror's ``cifar10/`` folder is used: ``cifar-10-python.tar.gz`` or
``cifar-10-binary.tar.gz`` (md5-checked, then extracted), or the extracted
``cifar-10-batches-bin/`` folder, whose files are copied one by one after their md5 matches
the one the binary release is known by. A file that fails its md5 is named in the error.

**Test split.** The official ``test_batch.bin`` (10,000 images) is used wherever it exists.
Where only ``test_batch_first1000.bin`` exists (records 0-999 of ``test_batch.bin``, byte for
byte, md5-checked; the team mirror holds only this), the ``test`` split is those 1,000 images
and says so: its label, the name tables and reports print, is "CIFAR-10 test (first 1,000)".
Training images are never used in place of test images.

**Validation.** A CIFAR-10 run validates on ``data.val_split``, ``test`` by default, as every
dataset's runs do: the partial test split (1,000 images) where only it exists, the full test
split elsewhere. ``train-holdout`` (the last 5,000 training images, named as such) with
``data.train_split=train-fit`` (the other 45,000) validates on held-out training images
instead (:mod:`dgmood.data.datasets`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd

from dgmood.data.errors import CorruptDatasetError
from dgmood.data.imageset import ImageSet
from dgmood.data.registry import LoadRequest, not_found
from dgmood.data.sources import copy_verified, verify_md5

BINARY_FOLDER = "cifar-10-batches-bin"
BINARY_ARCHIVE = ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")
# (file, md5): the per-file md5s of the official binary release
BINARY_TRAIN = (
    ("data_batch_1.bin", "5dd7e06a14cb22eb9f671a540d1b7c25"),
    ("data_batch_2.bin", "5ea93a67294ea407fff1d09f752e9692"),
    ("data_batch_3.bin", "942cd6a4bcdd0dd3c604fbe906cb4421"),
    ("data_batch_4.bin", "ae636b3ba5c66a11e91e8cb52e771fcb"),
    ("data_batch_5.bin", "53f37980c15c3d472c316c40844f3f0d"),
)
BINARY_TEST = ("test_batch.bin", "803d5f7f4d78ea53de84dbe85f74fb6d")
# records 0-999 of test_batch.bin, byte for byte (../shared/data/SOURCES.md)
BINARY_TEST_FIRST_1000 = ("test_batch_first1000.bin", "371f65da31ad652f5e24b3699a3e6515")
PARTIAL_TEST_TITLE = "CIFAR-10 test"
RECORD_BYTES = 1 + 3 * 32 * 32


def unverified(cls: type, **overrides: object) -> type:
    """The torchvision class with its md5 table blanked; we verify (or not) beforehand."""
    return type(f"Unverified{cls.__name__}", (cls,), overrides)


def extract_from_mirror(req: LoadRequest, name: str, archive: str, md5: str | None) -> bool:
    """Extract ``<mirror>/<name>/<archive>`` into the data directory after its md5 matches."""
    if req.mirror is None or not (req.mirror / name / archive).exists():
        return False
    from torchvision.datasets.utils import extract_archive

    target = req.root / archive
    copy_verified(req.mirror / name / archive, target, md5 if req.verify else None)
    extract_archive(str(target), str(req.root))
    return True


def _check_split(name: str, split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"{name} has splits train and test, not {split!r}")


def python_version(name: str, cls: type[tvd.CIFAR10]) -> Callable[[LoadRequest], ImageSet]:
    """A loader of the python version (``cls.base_folder``) through torchvision's reader.

    The files are pickles: their md5s are checked before torchvision unpickles them, so
    ``verify=False`` is for files you made yourself.
    """

    def load(req: LoadRequest) -> ImageSet:
        _check_split(name, req.split)
        folder = req.root / cls.base_folder
        files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
        if not folder.exists():
            if not extract_from_mirror(req, name, cls.filename, cls.tgz_md5) and req.download:
                cls(str(req.root), train=True, download=True)
        for filename, md5 in files:
            path = folder / filename
            if not path.exists():
                raise not_found(name, folder)
            if req.verify:
                verify_md5(path, md5)
        reader = unverified(
            cls,
            train_list=[[f, None] for f, _ in cls.train_list],
            test_list=[[f, None] for f, _ in cls.test_list],
            meta={**cls.meta, "md5": None},
        )
        try:
            dataset = reader(str(req.root), train=req.split == "train", download=False)
        except (RuntimeError, ValueError, KeyError, OSError, EOFError) as err:
            raise CorruptDatasetError(f"cannot read {name} from {folder}: {err}") from err
        images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
        return ImageSet(name, req.split, images, torch.as_tensor(dataset.targets))

    return load


def read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary-version file -> uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``.

    Any whole number of records is read (the md5 check, on by default, pins the count)."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % RECORD_BYTES:
        raise CorruptDatasetError(
            f"{path} is not a CIFAR-10 binary batch: its {data.size} bytes are not a whole "
            f"number of {RECORD_BYTES}-byte records. Delete it and copy a good file in its place."
        )
    rows = data.reshape(-1, RECORD_BYTES)
    labels = rows[:, 0].astype(np.int64)
    if int(labels.max()) > 9:
        raise CorruptDatasetError(f"{path} has a label byte {int(labels.max())} (CIFAR-10: 0-9)")
    return np.ascontiguousarray(rows[:, 1:]).reshape(-1, 3, 32, 32), labels


def _binary_file(req: LoadRequest, filename: str, md5: str) -> Path | None:
    """``filename`` of the binary version in the data directory (copied from the mirror if
    needed), md5-checked; None if neither has it."""
    path = req.root / BINARY_FOLDER / filename
    if not path.exists() and req.mirror is not None:
        mirrored = req.mirror / "cifar10" / BINARY_FOLDER / filename
        if mirrored.exists():
            copy_verified(mirrored, path, md5 if req.verify else None)
            return path
    if not path.exists():
        return None
    if req.verify:
        verify_md5(path, md5)
    return path


def _binary_version(req: LoadRequest) -> ImageSet:
    folder = req.root / BINARY_FOLDER
    if req.split == "train":
        parts = []
        for filename, md5 in BINARY_TRAIN:
            path = _binary_file(req, filename, md5)
            if path is None:
                raise not_found("cifar10", folder / filename)
            parts.append(read_binary_batch(path))
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return ImageSet("cifar10", "train", torch.from_numpy(images), torch.from_numpy(labels))
    full = _binary_file(req, *BINARY_TEST)
    if full is not None:
        images, labels = read_binary_batch(full)
        return ImageSet("cifar10", "test", torch.from_numpy(images), torch.from_numpy(labels))
    first = _binary_file(req, *BINARY_TEST_FIRST_1000)
    if first is None:
        raise not_found("cifar10", folder / BINARY_TEST[0])
    images, labels = read_binary_batch(first)
    return ImageSet(
        "cifar10",
        "test",
        torch.from_numpy(images),
        torch.from_numpy(labels),
        title=PARTIAL_TEST_TITLE,
        partial=True,
    )


_CIFAR10_PYTHON = python_version("cifar10", tvd.CIFAR10)


def load_cifar10(req: LoadRequest) -> ImageSet:
    """CIFAR-10 from the python or the binary version (see the module docstring)."""
    _check_split("cifar10", req.split)
    if (req.root / tvd.CIFAR10.base_folder).exists():
        return _CIFAR10_PYTHON(req)
    if not (req.root / BINARY_FOLDER).exists():
        if extract_from_mirror(req, "cifar10", tvd.CIFAR10.filename, tvd.CIFAR10.tgz_md5):
            return _CIFAR10_PYTHON(req)
        mirrored = req.mirror is not None and (req.mirror / "cifar10" / BINARY_FOLDER).is_dir()
        if not mirrored and not extract_from_mirror(req, "cifar10", *BINARY_ARCHIVE):
            if not req.download:
                raise not_found("cifar10", req.root / tvd.CIFAR10.base_folder)
            return _CIFAR10_PYTHON(req)
    return _binary_version(req)
