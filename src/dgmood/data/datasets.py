"""Datasets by name, loaded with torchvision's own readers into uint8 tensors.

Every dataset comes back as an :class:`ImageSet`: ``images`` uint8 ``[N, C, H, W]`` and
``labels`` int64 ``[N]`` (``-1`` where there are none). Files live in torchvision's layout
under the data directory (:mod:`dgmood.data.sources`); ``download=True`` uses torchvision's
real downloaders, and a local mirror of the raw files is used when one is configured.

Names: ``mnist``, ``fashion-mnist``, ``kmnist``, ``cifar10`` (:mod:`dgmood.data.cifar`),
``cifar100``, ``svhn``, ``celeba``, ``imagenet32``, ``gtsrb`` (:mod:`dgmood.data.gtsrb`), the
synthetic ``constant`` and ``noise`` (:mod:`dgmood.data.synthetic`), and ``folder:PATH`` / a
single image path for a user's own images. Gray sets load as 1x28x28; a colour run gets them
as 3x32x32 through :func:`dgmood.data.transforms.match_format` (gray repeated, zero-padded).

Splits: each set's own, plus for every set with a ``train`` split ``train-holdout`` (its last
:data:`HOLDOUT_FRACTION`, e.g. CIFAR-10's last 5,000 images) and ``train-fit`` (the rest): a
validation slice of the training split, named as such, disjoint from what ``train-fit`` trains
on.

Storage: in memory by default; a split can be kept in a memory-mapped store instead
(:mod:`dgmood.data.store`): ``storage="memmap"`` always, ``"auto"`` (the default) where a
store already exists or the split is larger than ``memmap_above_bytes``; ``$DGMOOD_STORAGE``
sets the default (:func:`dgmood.data.sources.resolve_storage`).
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from torch import Tensor

from dgmood.data.cifar import load_cifar10, python_version, unverified
from dgmood.data.errors import CorruptDatasetError, DataError, DatasetNotFoundError
from dgmood.data.gtsrb import load_gtsrb
from dgmood.data.images import ImageLoadError
from dgmood.data.imageset import ImageSet
from dgmood.data.registry import (
    DATASETS,
    DatasetSpec,
    LoadRequest,
    dataset_names,
    not_found,
    register,
)
from dgmood.data.sources import (
    copy_verified,
    resolve_data_dir,
    resolve_mirror,
    resolve_storage,
    verify_md5,
)
from dgmood.data.store import STORE_DIR, open_store, source_fingerprint, write_store
from dgmood.data.synthetic import SYNTHETIC_TEST_SIZE, constant_images, noise_images, synthetic
from dgmood.data.transforms import center_crop_square

__all__ = ["DATASETS", "DatasetSpec", "ImageSet", "LoadRequest", "dataset_names", "load_dataset"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
HOLDOUT_FRACTION = 0.1  # the last tenth of a training split is `train-holdout`
DERIVED_SPLITS = ("train-fit", "train-holdout")
MEMMAP_ABOVE_BYTES = 2 << 30  # storage="auto": splits larger than this are memory-mapped


def read_idx(data: bytes, ndim: int, source: Path) -> np.ndarray:
    """The uint8 array of an idx file's bytes (LeCun's format: two zero bytes, type 0x08,
    the number of dimensions, then each size as a big-endian 32-bit integer, then the data).
    """
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes([0, 0, 0x08, ndim]):
        raise CorruptDatasetError(f"{source} is not a uint8 idx file with {ndim} dimensions")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != math.prod(shape):
        raise CorruptDatasetError(
            f"{source} holds {len(data) - header} values, not the {math.prod(shape)} of its "
            f"header {list(shape)}; delete it and fetch it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _gunzip_bytes(source: Path) -> bytes:
    try:
        with gzip.open(source, "rb") as packed:
            return packed.read()
    except (OSError, EOFError) as err:
        raise CorruptDatasetError(
            f"{source} cannot be decompressed ({err}); delete it and fetch it again"
        ) from err


def _mnist_like(name: str, cls: type[tvd.MNIST]) -> Callable[[LoadRequest], ImageSet]:
    """A loader reading only the md5-checked ``.gz`` idx files, decompressed in memory.

    torchvision's ``MNIST`` class is not used to read: it prefers ``processed/*.pt`` caches
    (unverified, and pickles) over the raw files when both exist. Extracted idx files beside
    the ``.gz`` files are not read either: no official md5 covers them (with
    ``verify=False`` they are read when the ``.gz`` is absent).
    """

    def raw_bytes(req: LoadRequest, filename: str, md5: str) -> tuple[bytes, Path]:
        raw = req.root / cls.__name__ / "raw"
        packed = raw / filename
        checked = False
        if not packed.exists() and req.mirror is not None:
            mirrored = req.mirror / name / filename
            if mirrored.exists():
                copy_verified(mirrored, packed, md5 if req.verify else None)
                checked = True
        if not packed.exists() and req.download:
            from torchvision.datasets.utils import download_url

            failures = []
            for url_base in cls.mirrors:  # torchvision's mirrors; it checks the md5
                try:
                    download_url(f"{url_base}{filename}", str(raw), filename, md5)
                    checked = True
                    break
                except Exception as err:  # any failure of one mirror: try the next
                    failures.append(f"{url_base}: {err}")
            else:
                raise DataError(f"cannot download {filename}: " + "; ".join(failures))
        if packed.exists():
            if req.verify and not checked:
                verify_md5(packed, md5)
            return _gunzip_bytes(packed), packed
        extracted = raw / filename.removesuffix(".gz")
        if extracted.exists() and not req.verify:
            return extracted.read_bytes(), extracted
        if extracted.exists():
            raise DatasetNotFoundError(
                f"{packed} is missing: dgmood reads only files an official md5 covers, and "
                f"that is the .gz, not the extracted {extracted.name}. Put the .gz there "
                "(or run with --download)."
            )
        raise not_found(name, raw)

    def load(req: LoadRequest) -> ImageSet:
        if req.split not in ("train", "test"):
            raise ValueError(f"{name} has splits train and test, not {req.split!r}")
        prefix = "train" if req.split == "train" else "t10k"
        md5s = dict(cls.resources)
        arrays = []
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            filename = f"{prefix}-{kind}-ubyte.gz"
            data, path = raw_bytes(req, filename, md5s[filename])
            arrays.append(read_idx(data, ndim, path))
        images, labels = arrays
        if len(images) != len(labels):
            raise CorruptDatasetError(
                f"{name} {req.split}: {len(images)} images but {len(labels)} labels"
            )
        return ImageSet(
            name,
            req.split,
            torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
        )

    return load


def _load_svhn(req: LoadRequest) -> ImageSet:
    cls = tvd.SVHN
    if req.split not in cls.split_list:
        raise ValueError(f"svhn has splits {sorted(cls.split_list)}, not {req.split!r}")
    root = req.root / "svhn"
    _, filename, md5 = cls.split_list[req.split]
    path = root / filename
    if not path.exists() and req.mirror is not None and (req.mirror / "svhn" / filename).exists():
        copy_verified(req.mirror / "svhn" / filename, path, md5 if req.verify else None)
    if not path.exists() and req.download:
        cls(str(root), split=req.split, download=True)
    if not path.exists():
        raise not_found("svhn", root)
    if req.verify:
        verify_md5(path, md5)
    reader = unverified(
        cls, split_list={k: [url, fn, None] for k, (url, fn, _) in cls.split_list.items()}
    )
    try:
        dataset = reader(str(root), split=req.split, download=False)
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise CorruptDatasetError(f"cannot read svhn from {path}: {err}") from err
    images = torch.from_numpy(np.ascontiguousarray(dataset.data))
    return ImageSet("svhn", req.split, images, torch.as_tensor(dataset.labels, dtype=torch.int64))


def _imagenet32_files(req: LoadRequest) -> list[Path]:
    folder = req.root / "imagenet32"
    if req.split == "train":
        files = sorted(
            folder.glob("train_data_batch_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1])
        )
    elif req.split in ("val", "test"):
        files = [folder / "val_data.npz"] if (folder / "val_data.npz").exists() else []
    else:
        raise ValueError(f"imagenet32 has splits train and val (alias test), not {req.split!r}")
    if not files:
        raise not_found("imagenet32", folder)
    return files


def _stream_imagenet32(req: LoadRequest) -> tuple[int, Iterator[ImageSet]]:
    """Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017), the official npz release, one
    file at a time: the number of images (read from the labels alone), then the files' sets.

    ``<data dir>/imagenet32/`` holds ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz``
    and ``val_data.npz``; each has ``data`` uint8 ``[N, 3072]`` (R plane, G plane, B plane)
    and 1-based ``labels``. The training split (1.28 M images, 3.9 GB) need never be in
    memory at once: with ``storage="auto"`` it is written to a memory-mapped store file by
    file (:mod:`dgmood.data.store`).
    """
    files = _imagenet32_files(req)

    def read(file: Path, key: str) -> np.ndarray:
        try:
            with np.load(file, allow_pickle=False) as batch:
                return np.asarray(batch[key])
        except (OSError, KeyError, ValueError) as err:
            raise CorruptDatasetError(f"cannot read {file}: {err}") from err

    count = sum(len(read(file, "labels")) for file in files)

    def parts() -> Iterator[ImageSet]:
        for file in files:
            data, labels = read(file, "data"), read(file, "labels")
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise CorruptDatasetError(
                    f"{file}: data is {data.dtype} {list(data.shape)}, not uint8 [N, 3072]"
                )
            yield ImageSet(
                "imagenet32",
                req.split,
                torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32)),
                torch.from_numpy(labels.astype(np.int64) - 1),
            )

    return count, parts()


def _load_imagenet32(req: LoadRequest) -> ImageSet:
    """Downsampled ImageNet 32x32 in memory (:func:`_stream_imagenet32`)."""
    _, parts = _stream_imagenet32(req)
    pieces = list(parts)
    return pieces[0].with_images(
        torch.cat([p.images for p in pieces]), torch.cat([p.labels for p in pieces])
    )


CELEBA_CROP = 148  # centre crop of the 178x218 aligned faces before resizing


def _load_celeba(req: LoadRequest) -> ImageSet:
    """CelebA's aligned faces, centre-cropped to 148x148 and resized to ``req.size``.

    Decoding 202,599 JPEGs takes minutes, so the decoded split is always kept in a store
    (:mod:`dgmood.data.store`; registered with ``always_stored``) and read from it after.
    """
    from PIL import Image

    cls = tvd.CelebA
    splits = {"train": "train", "valid": "valid", "val": "valid", "test": "test", "all": "all"}
    if req.split not in splits:
        raise ValueError(f"celeba has splits train, valid, test, all; not {req.split!r}")
    folder = req.root / cls.base_folder
    if not folder.exists() and req.download:
        cls(str(req.root), split="all", download=True)
    for _, md5, filename in cls.file_list:
        if filename.endswith(".zip"):
            continue
        if not (folder / filename).exists():
            raise not_found("celeba", folder)
        if req.verify:
            verify_md5(folder / filename, md5)
    if not (folder / "img_align_celeba").is_dir():
        raise not_found("celeba", folder / "img_align_celeba")
    reader = unverified(cls, file_list=[(i, None, f) for i, _, f in cls.file_list])
    try:
        dataset = reader(str(req.root), split=splits[req.split], target_type="identity")
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise CorruptDatasetError(f"cannot read celeba from {folder}: {err}") from err
    out = np.empty((len(dataset.filename), 3, req.size, req.size), dtype=np.uint8)
    for i, filename in enumerate(dataset.filename):
        with Image.open(folder / "img_align_celeba" / filename) as photo:
            face = center_crop_square(photo.convert("RGB"), CELEBA_CROP)
            face = face.resize((req.size, req.size), Image.Resampling.BICUBIC)
            out[i] = np.asarray(face).transpose(2, 0, 1)
    labels = dataset.identity[:, 0].to(torch.int64)
    return ImageSet("celeba", req.split, torch.from_numpy(out), labels)


def load_user_images(
    paths: list[Path],
    channels: int,
    size: int,
    invert: bool | None = None,
    *,
    upscale: str = "pad",
    native_sides: tuple[int, ...] = (),
) -> Tensor:
    """Image files -> uint8 ``[N, channels, size, size]``; a bad file raises one clear error.

    Images already in the dataset's format (side ``size`` or one of ``native_sides``) take
    the dataset's geometry, others the photo route: :func:`dgmood.data.images.prepare_image`.
    """
    from dgmood.data.images import prepare_files, stack_pixels

    prepared = prepare_files(
        paths, channels, size, upscale=upscale, native_sides=native_sides, invert=invert
    )
    return stack_pixels(prepared)


def _load_folder(path: Path, req: LoadRequest) -> ImageSet:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise DatasetNotFoundError(f"{path} is neither an image file nor a folder")
    if not files:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}")
    if req.skip_unreadable:
        images, files = _readable_images(files, req)
    else:
        try:
            images = load_user_images(
                files, req.channels, req.size, upscale=req.upscale, native_sides=req.native_sides
            )
        except ImageLoadError as error:
            raise ImageLoadError(
                f"{error}; pass --skip-unreadable to leave out the files that cannot be read"
            ) from None
    return ImageSet(f"folder:{path}", req.split, images, torch.full((len(files),), -1))


def _readable_images(files: list[Path], req: LoadRequest) -> tuple[Tensor, list[Path]]:
    """The images of ``files`` that can be read, and their files; a warning names the rest."""
    images, kept, skipped = [], [], []
    for file in files:
        try:
            images.append(
                load_user_images(
                    [file],
                    req.channels,
                    req.size,
                    upscale=req.upscale,
                    native_sides=req.native_sides,
                )
            )
            kept.append(file)
        except ImageLoadError as error:
            skipped.append(f"{file} ({error})")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable file(s): " + "; ".join(skipped), stacklevel=2
        )
    if not kept:
        raise DatasetNotFoundError(f"none of the {len(files)} image files could be read")
    return torch.cat(images), kept


_MNIST_HINT = "Run with --download, or put the four official .gz files in a mirror folder."
_GRAY_NOTE = "gray 1x28x28; colour runs get it as 3x32x32 (gray repeated, zero-padded)"
register(
    DatasetSpec(
        "mnist", 1, 28, ("train", "test"), 10, _MNIST_HINT, _mnist_like("mnist", tvd.MNIST),
        notes=_GRAY_NOTE, folders=("MNIST/raw",),
    )
)  # fmt: skip
register(
    DatasetSpec(
        "fashion-mnist",
        1,
        28,
        ("train", "test"),
        10,
        _MNIST_HINT,
        _mnist_like("fashion-mnist", tvd.FashionMNIST),
        notes=_GRAY_NOTE,
        folders=("FashionMNIST/raw",),
    )
)
register(
    DatasetSpec(
        "kmnist", 1, 28, ("train", "test"), 10, _MNIST_HINT, _mnist_like("kmnist", tvd.KMNIST),
        notes=_GRAY_NOTE, folders=("KMNIST/raw",),
    )
)  # fmt: skip
register(
    DatasetSpec(
        "cifar10",
        3,
        32,
        ("train", "test"),
        10,
        "Run with --download, or extract cifar-10-python.tar.gz or cifar-10-binary.tar.gz "
        "into the data directory (folder cifar-10-batches-py or cifar-10-batches-bin).",
        load_cifar10,
        notes="python or binary version; where only test_batch_first1000.bin exists, test is "
        'those 1,000 images, labelled "CIFAR-10 test (first 1,000)"',
        folders=("cifar-10-batches-py", "cifar-10-batches-bin"),
    )
)
register(
    DatasetSpec(
        "cifar100",
        3,
        32,
        ("train", "test"),
        100,
        "Run with --download, or extract cifar-100-python.tar.gz into the data "
        "directory (folder cifar-100-python).",
        python_version("cifar100", tvd.CIFAR100),
        folders=("cifar-100-python",),
    )
)
register(
    DatasetSpec(
        "svhn",
        3,
        32,
        ("train", "test", "extra"),
        10,
        "Run with --download, or put train_32x32.mat / test_32x32.mat in <data dir>/svhn.",
        _load_svhn,
        folders=("svhn",),
    )
)
register(
    DatasetSpec(
        "imagenet32",
        3,
        32,
        ("train", "val", "test"),
        1000,
        "Download the 32x32 npz release of downsampled ImageNet from image-net.org (login "
        "needed; no automatic download) and unpack it into <data dir>/imagenet32.",
        _load_imagenet32,
        notes="test is an alias of val; train (3.9 GB) is memory-mapped by default",
        folders=("imagenet32",),
        stream=_stream_imagenet32,
    )
)
register(
    DatasetSpec(
        "celeba",
        3,
        32,
        ("train", "valid", "test", "all"),
        10177,
        "torchvision downloads CelebA from Google Drive (needs gdown); or put "
        "img_align_celeba/ and the six list_*.txt/identity files in "
        "<data dir>/celeba.",
        _load_celeba,
        notes="148x148 centre crop, resized to the run's size; decoded once into a store",
        folders=("celeba", "celeba/img_align_celeba"),
        sized_by_request=True,
        always_stored=True,
    )
)
register(
    DatasetSpec(
        "gtsrb",
        3,
        32,
        ("test",),
        43,
        "Run with --download, or put GT-final_test.csv and GTSRB/Final_Test/Images/ in "
        "<data dir>/gtsrb (torchvision's layout).",
        load_gtsrb,
        notes="traffic signs, 12,630 test images resized whole to 32x32; decoded once into a store",
        folders=("gtsrb", "gtsrb/GTSRB/Final_Test/Images"),
        always_stored=True,
    )
)
for _name, _make, _what in (
    ("constant", constant_images, "one random colour per image (Serra et al. 2020)"),
    ("noise", noise_images, "uniform random levels per sub-pixel (Serra et al. 2020)"),
):
    register(
        DatasetSpec(
            _name,
            3,
            32,
            ("test",),
            0,
            "Generated on the fly; nothing to get.",
            synthetic(_name, _make),
            notes=f"{_what}; {SYNTHETIC_TEST_SIZE:,} seeded images at the run's channels and size",
            storable=False,
        )
    )


def split_parts(split: str) -> tuple[str, str]:
    """``"train-holdout"`` -> ``("train", "holdout")``; a plain split -> ``(split, "")``."""
    if split in DERIVED_SPLITS:
        base, part = split.split("-")
        return base, part
    return split, ""


def holdout_size(n_train: int) -> int:
    """Images in ``train-holdout``: the last :data:`HOLDOUT_FRACTION` of the training split."""
    return int(n_train * HOLDOUT_FRACTION)


def _take_part(imageset: ImageSet, split: str, part: str) -> ImageSet:
    if not part:
        return imageset
    n_fit = len(imageset) - holdout_size(len(imageset))
    rows = slice(n_fit, None) if part == "holdout" else slice(0, n_fit)
    return dataclasses.replace(
        imageset.with_images(imageset.images[rows], imageset.labels[rows]), split=split
    )


def _store_folder(spec: DatasetSpec, req: LoadRequest) -> Path:
    suffix = f"-{req.size}px" if spec.sized_by_request else ""
    return req.root / STORE_DIR / spec.name / f"{req.split}{suffix}"


def _fingerprint(spec: DatasetSpec, req: LoadRequest) -> str:
    folders = [req.root / folder for folder in spec.folders]
    if req.mirror is not None:
        folders.append(req.mirror / spec.name)
    return source_fingerprint(folders)


def _load_split(spec: DatasetSpec, req: LoadRequest, storage: str, memmap_above: int) -> ImageSet:
    """One split of ``spec`` in memory or memory-mapped, as ``storage`` says (module doc)."""
    if not spec.storable or (storage == "memory" and not spec.always_stored):
        return spec.load(req)
    folder = _store_folder(spec, req)
    stored = open_store(folder, _fingerprint(spec, req), verify=req.verify)
    if stored is None:
        keep = storage == "memmap" or spec.always_stored
        if spec.stream is not None:
            count, parts = spec.stream(req)
            if keep or count * spec.channels * spec.size**2 > memmap_above:
                write_store(folder, parts, count, _fingerprint(spec, req))
            else:
                return spec.load(req)
        else:
            fresh = spec.load(req)
            if not keep and fresh.images.nbytes <= memmap_above:
                return fresh
            write_store(folder, [fresh], len(fresh), _fingerprint(spec, req))
        stored = open_store(folder, verify=False)
        assert stored is not None, folder
    if storage == "memory":
        return stored.with_images(stored.images.clone(), stored.labels.clone())
    return stored


def load_dataset(
    name: str,
    split: str = "test",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    mirror: str | os.PathLike[str] | None = None,
    verify: bool = True,
    channels: int = 1,
    size: int = 32,
    storage: str | None = None,
    memmap_above_bytes: int = MEMMAP_ABOVE_BYTES,
    skip_unreadable: bool = False,
    upscale: str = "pad",
    native_sides: tuple[int, ...] = (),
) -> ImageSet:
    """Load one split of a dataset as uint8 ``[N, C, H, W]`` at its native size.

    ``channels``/``size`` only matter for loaders that make or resize images on load
    (``celeba``, ``constant``, ``noise``, ``folder:PATH``); use
    :func:`dgmood.data.transforms.match_format` to make sets comparable. ``split`` may be
    ``train-fit`` or ``train-holdout`` (module doc). ``storage``: ``"memory"``, ``"memmap"``
    or ``"auto"`` (default: ``$DGMOOD_STORAGE``, else ``"auto"``); see the module doc.
    ``upscale``/``native_sides`` only matter for ``folder:PATH`` (see :func:`load_user_images`).
    """
    req = LoadRequest(
        root=resolve_data_dir(data_dir),
        split=split,
        download=download,
        mirror=resolve_mirror(mirror),
        verify=verify,
        channels=channels,
        size=size,
        skip_unreadable=skip_unreadable,
        upscale=upscale,
        native_sides=native_sides,
    )
    if name.startswith("folder:"):
        return _load_folder(Path(name.removeprefix("folder:")).expanduser(), req)
    if name not in DATASETS:
        as_path = Path(name).expanduser()
        if as_path.exists():
            return _load_folder(as_path, req)
        raise DataError(f"unknown dataset {name!r}; known: {dataset_names()} or folder:PATH")
    spec = DATASETS[name]
    base, part = split_parts(split)
    if part and "train" not in spec.splits:
        raise ValueError(f"{name} has no train split, so no {split!r}; splits: {spec.splits}")
    req.root.mkdir(parents=True, exist_ok=True)
    imageset = _load_split(
        spec, dataclasses.replace(req, split=base), resolve_storage(storage), memmap_above_bytes
    )
    return _take_part(imageset, split, part)
