"""A dataset split kept on disk as raw uint8 and opened memory-mapped: data larger than memory.

A store is written once per dataset and split (and per format, for loaders that shape images
on load) under ``<data dir>/dgmood-store/<name>/<split>/``:

- ``images.npy``: uint8 ``[N, C, H, W]`` (numpy's ``.npy``: a small header, then raw bytes);
- ``labels.npy``: int64 ``[N]``;
- ``store.json``: format, name, split, title, whether the split is partial, each array's
  shape, dtype and SHA-256, and a fingerprint of the source files it was made from.

Each file is written atomically (:mod:`dgmood.io`), ``store.json`` last: a folder without it
holds no store. Opening checks both SHA-256s (a streaming read, about 1 GB/s) unless
``verify=False``; a digest or header that does not match is one
:class:`~dgmood.data.errors.CorruptDatasetError` naming the file. A store whose source files
changed (a name, size or mtime under the dataset's folders) is rebuilt from them.

The arrays are opened with ``mmap_mode="c"`` (copy-on-write: nothing is ever written through
the mapping) and wrapped by ``torch.from_numpy`` without a copy. Training draws batch ``s`` as
``images[batch_indices(seed, s)]``, an index into this tensor exactly as into an in-memory
one, so only that batch's pages are read and the batch is the same, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgmood.data.errors import CorruptDatasetError
from dgmood.data.imageset import ImageSet
from dgmood.io import atomic_path, atomic_write_text

STORE_DIR = "dgmood-store"  # under the data directory
STORE_FORMAT = "dgmood-store/1"
HEADER_FILE = "store.json"
ARRAYS = {"images": "uint8", "labels": "int64"}


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def source_fingerprint(folders: Iterable[Path]) -> str:
    """A digest of the names, sizes and mtimes of what lies directly in ``folders`` (a
    sub-folder's mtime changes when a file is added to or removed from it); hidden entries
    and dgmood's own (``dgmood-*``) are left out."""
    digest = hashlib.sha256()
    for index, folder in enumerate(folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith((".", "dgmood-")):
                continue
            stat = path.stat()
            size = stat.st_size if path.is_file() else -1
            digest.update(f"{index}/{path.name}\t{size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _unreadable(path: Path, why: object) -> CorruptDatasetError:
    return CorruptDatasetError(
        f"{path} is corrupt ({why}); delete the folder {path.parent} and the store is "
        "rebuilt from the dataset's files"
    )


def write_store(folder: Path, parts: Iterable[ImageSet], count: int, source: str) -> None:
    """Write the images of ``parts`` (consecutive pieces of one split, ``count`` images in
    all) as a store in ``folder``; name, split and title come from the first piece."""
    header: dict[str, Any] = {"format": STORE_FORMAT, "source": source}
    labels: list[np.ndarray] = []
    with atomic_path(folder / "images.npy") as tmp:
        images: np.memmap | None = None
        filled = 0
        for part in parts:
            if images is None:
                header.update(
                    name=part.name, split=part.split, title=part.title, partial=part.partial
                )
                shape = (count, *part.images.shape[1:])
                images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            if filled + len(part) > count:
                raise ValueError(f"the pieces hold more than the {count} images announced")
            images[filled : filled + len(part)] = part.images.numpy()
            labels.append(part.labels.to(torch.int64).numpy())
            filled += len(part)
        if images is None or filled != count:
            raise ValueError(f"the pieces hold {filled} images, not the {count} announced")
        images.flush()
        del images
    with atomic_path(folder / "labels.npy") as tmp, open(tmp, "wb") as stream:
        np.save(stream, np.concatenate(labels))
    for key, dtype in ARRAYS.items():
        path = folder / f"{key}.npy"
        stored_shape = list(np.load(path, mmap_mode="r").shape)
        header[key] = {"shape": stored_shape, "dtype": dtype, "sha256": sha256_file(path)}
    atomic_write_text(folder / HEADER_FILE, json.dumps(header, indent=1) + "\n")


def read_header(folder: Path) -> dict[str, Any] | None:
    """The store's header, None if there is no store in ``folder``."""
    path = folder / HEADER_FILE
    if not path.exists():
        return None
    try:
        header = json.loads(path.read_text())
        if header.get("format") != STORE_FORMAT:
            raise ValueError(f"format {header.get('format')!r}, not {STORE_FORMAT!r}")
        missing = [
            k for k in ("name", "split", "title", "partial", "source", *ARRAYS) if k not in header
        ]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        return dict(header)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise _unreadable(path, err) from None


def open_store(folder: Path, source: str | None = None, verify: bool = True) -> ImageSet | None:
    """The store in ``folder`` as a memory-mapped :class:`ImageSet`; None if there is none,
    or if ``source`` (a :func:`source_fingerprint`) differs from the one it was made from."""
    header = read_header(folder)
    if header is None or (source is not None and header["source"] != source):
        return None
    arrays = {}
    for key, dtype in ARRAYS.items():
        path = folder / f"{key}.npy"
        expected = header[key]
        if not path.is_file():
            raise _unreadable(path, "missing")
        if verify and sha256_file(path) != expected["sha256"]:
            raise _unreadable(path, f"its sha256 is not the one {HEADER_FILE} records")
        try:
            array = np.load(path, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise _unreadable(path, err) from None
        if str(array.dtype) != dtype or list(array.shape) != expected["shape"]:
            found = f"{array.dtype} {list(array.shape)}"
            raise _unreadable(path, f"{found}, not {dtype} {expected['shape']}")
        arrays[key] = torch.from_numpy(array)
    try:
        return ImageSet(
            str(header["name"]),
            str(header["split"]),
            arrays["images"],
            arrays["labels"],
            title=str(header["title"]),
            partial=bool(header["partial"]),
        )
    except ValueError as err:
        raise _unreadable(folder / HEADER_FILE, err) from None
