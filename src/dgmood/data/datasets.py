"""Datasets by name, loaded with torchvision's own readers into in-memory uint8 tensors.

Every dataset comes back as an :class:`ImageSet`: ``images`` uint8 ``[N, C, H, W]`` and
``labels`` int64 ``[N]`` (``-1`` where there are none). Files live in torchvision's layout
under the data directory (:mod:`dgmood.data.sources`); ``download=True`` uses torchvision's
real downloaders, and a local mirror of the raw files is used when one is configured.

Names: ``mnist``, ``fashion-mnist``, ``kmnist``, ``cifar10``, ``cifar100``, ``svhn``,
``celeba``, ``imagenet32``, and ``folder:PATH`` / a single image path for a user's own images.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from torch import Tensor

from dgmood.data.errors import CorruptDatasetError, DataError, DatasetNotFoundError
from dgmood.data.imageset import ImageSet
from dgmood.data.sources import copy_verified, resolve_data_dir, resolve_mirror, verify_md5
from dgmood.data.transforms import center_crop_square
from dgmood.io import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LoadRequest:
    root: Path  # the data directory
    split: str
    download: bool
    mirror: Path | None
    verify: bool  # check official md5s
    channels: int  # wanted channels (used only by loaders that must resize on load)
    size: int  # wanted side (idem)
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


def _not_found(spec_name: str, where: Path) -> DatasetNotFoundError:
    spec = DATASETS[spec_name]
    return DatasetNotFoundError(
        f"dataset {spec_name!r} not found under {where}. {spec.how_to_get} "
        "The data directory is set with --data-dir or $DGMOOD_DATA; a folder of raw files "
        f"with --mirror or $DGMOOD_MIRROR (sub-folder '{spec_name}')."
    )


def _gunzip(source: Path, target: Path) -> None:
    try:
        with atomic_path(target) as tmp, gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError) as err:
        raise CorruptDatasetError(
            f"{source} cannot be decompressed ({err}); delete it and fetch it again"
        ) from err


def _mnist_like(name: str, cls: type[tvd.MNIST]) -> Callable[[LoadRequest], ImageSet]:
    def load(req: LoadRequest) -> ImageSet:
        if req.split not in ("train", "test"):
            raise ValueError(f"{name} has splits train and test, not {req.split!r}")
        raw = req.root / cls.__name__ / "raw"
        for filename, md5 in cls.resources:
            extracted = raw / filename.removesuffix(".gz")
            if extracted.exists():
                continue
            packed = raw / filename
            if not packed.exists() and req.mirror is not None:
                mirrored = req.mirror / name / filename
                if mirrored.exists():
                    copy_verified(mirrored, packed, md5 if req.verify else None)
            if not packed.exists() and req.download:
                cls(str(req.root), train=True, download=True)  # fetches and checks all files
                continue
            if not packed.exists():
                raise _not_found(name, raw)
            if req.verify:
                verify_md5(packed, md5)
            _gunzip(packed, extracted)
        try:
            dataset = cls(str(req.root), train=req.split == "train", download=False)
        except (RuntimeError, ValueError, AssertionError, OSError) as err:
            raise CorruptDatasetError(f"cannot read {name} from {raw}: {err}") from err
        images = dataset.data.unsqueeze(1).contiguous()
        return ImageSet(name, req.split, images, dataset.targets.to(torch.int64))

    return load


def _unverified(cls: type, **overrides: object) -> type:
    """The torchvision class with its md5 table blanked; we verify (or not) beforehand."""
    return type(f"Unverified{cls.__name__}", (cls,), overrides)


def _extract_from_mirror(req: LoadRequest, name: str, archive: str, md5: str | None) -> bool:
    if req.mirror is None or not (req.mirror / name / archive).exists():
        return False
    from torchvision.datasets.utils import extract_archive

    target = req.root / archive
    copy_verified(req.mirror / name / archive, target, md5 if req.verify else None)
    extract_archive(str(target), str(req.root))
    return True


def _cifar(name: str, cls: type[tvd.CIFAR10]) -> Callable[[LoadRequest], ImageSet]:
    def load(req: LoadRequest) -> ImageSet:
        if req.split not in ("train", "test"):
            raise ValueError(f"{name} has splits train and test, not {req.split!r}")
        folder = req.root / cls.base_folder
        files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
        if not folder.exists():
            if not _extract_from_mirror(req, name, cls.filename, cls.tgz_md5) and req.download:
                cls(str(req.root), train=True, download=True)
        for filename, md5 in files:
            path = folder / filename
            if not path.exists():
                raise _not_found(name, folder)
            if req.verify:
                verify_md5(path, md5)
        reader = _unverified(
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
        raise _not_found("svhn", root)
    if req.verify:
        verify_md5(path, md5)
    reader = _unverified(
        cls, split_list={k: [url, fn, None] for k, (url, fn, _) in cls.split_list.items()}
    )
    try:
        dataset = reader(str(root), split=req.split, download=False)
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise CorruptDatasetError(f"cannot read svhn from {path}: {err}") from err
    images = torch.from_numpy(np.ascontiguousarray(dataset.data))
    return ImageSet("svhn", req.split, images, torch.as_tensor(dataset.labels, dtype=torch.int64))


def _load_imagenet32(req: LoadRequest) -> ImageSet:
    """Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017), the official npz release.

    ``<data dir>/imagenet32/`` holds ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz``
    and ``val_data.npz``; each has ``data`` uint8 ``[N, 3072]`` (R plane, G plane, B plane)
    and 1-based ``labels``.
    """
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
        raise _not_found("imagenet32", folder)
    images, labels = [], []
    for file in files:
        try:
            with np.load(file) as batch:
                images.append(batch["data"].reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch["labels"], dtype=np.int64) - 1)
        except (OSError, KeyError, ValueError) as err:
            raise CorruptDatasetError(f"cannot read {file}: {err}") from err
    return ImageSet(
        "imagenet32",
        req.split,
        torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
        torch.from_numpy(np.concatenate(labels)),
    )


CELEBA_CROP = 148  # centre crop of the 178x218 aligned faces before resizing


def _load_celeba(req: LoadRequest) -> ImageSet:
    from PIL import Image

    cls = tvd.CelebA
    splits = {"train": "train", "valid": "valid", "val": "valid", "test": "test", "all": "all"}
    if req.split not in splits:
        raise ValueError(f"celeba has splits train, valid, test, all; not {req.split!r}")
    folder = req.root / cls.base_folder
    cache = folder / f"dgmood-{splits[req.split]}-{req.size}px.npz"
    if cache.exists():
        with np.load(cache) as stored:
            images, labels = torch.from_numpy(stored["images"]), torch.from_numpy(stored["labels"])
        return ImageSet("celeba", req.split, images, labels)
    if not folder.exists() and req.download:
        cls(str(req.root), split="all", download=True)
    for _, md5, filename in cls.file_list:
        if filename.endswith(".zip"):
            continue
        if not (folder / filename).exists():
            raise _not_found("celeba", folder)
        if req.verify:
            verify_md5(folder / filename, md5)
    if not (folder / "img_align_celeba").is_dir():
        raise _not_found("celeba", folder / "img_align_celeba")
    reader = _unverified(cls, file_list=[(i, None, f) for i, _, f in cls.file_list])
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
    labels = dataset.identity[:, 0].to(torch.int64).numpy()
    # a file object, not a name: np.savez would append ".npz" to the temporary name
    with atomic_path(cache) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, images=out, labels=labels)
    return ImageSet("celeba", req.split, torch.from_numpy(out), torch.from_numpy(labels))


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
    images = load_user_images(
        files, req.channels, req.size, upscale=req.upscale, native_sides=req.native_sides
    )
    return ImageSet(f"folder:{path}", req.split, images, torch.full((len(files),), -1))


DATASETS: dict[str, DatasetSpec] = {}


def _register(spec: DatasetSpec) -> None:
    DATASETS[spec.name] = spec


_MNIST_HINT = "Run with --download, or put the four official .gz files in a mirror folder."
_register(
    DatasetSpec("mnist", 1, 28, ("train", "test"), 10, _MNIST_HINT, _mnist_like("mnist", tvd.MNIST))
)
_register(
    DatasetSpec(
        "fashion-mnist",
        1,
        28,
        ("train", "test"),
        10,
        _MNIST_HINT,
        _mnist_like("fashion-mnist", tvd.FashionMNIST),
    )
)
_register(
    DatasetSpec(
        "kmnist", 1, 28, ("train", "test"), 10, _MNIST_HINT, _mnist_like("kmnist", tvd.KMNIST)
    )
)
_register(
    DatasetSpec(
        "cifar10",
        3,
        32,
        ("train", "test"),
        10,
        "Run with --download, or extract cifar-10-python.tar.gz into the data "
        "directory (folder cifar-10-batches-py).",
        _cifar("cifar10", tvd.CIFAR10),
    )
)
_register(
    DatasetSpec(
        "cifar100",
        3,
        32,
        ("train", "test"),
        100,
        "Run with --download, or extract cifar-100-python.tar.gz into the data "
        "directory (folder cifar-100-python).",
        _cifar("cifar100", tvd.CIFAR100),
    )
)
_register(
    DatasetSpec(
        "svhn",
        3,
        32,
        ("train", "test", "extra"),
        10,
        "Run with --download, or put train_32x32.mat / test_32x32.mat in <data dir>/svhn.",
        _load_svhn,
    )
)
_register(
    DatasetSpec(
        "imagenet32",
        3,
        32,
        ("train", "val", "test"),
        1000,
        "Download the 32x32 npz release of downsampled ImageNet from image-net.org (login "
        "needed; no automatic download) and unpack it into <data dir>/imagenet32.",
        _load_imagenet32,
    )
)
_register(
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
    )
)


def dataset_names() -> list[str]:
    return sorted(DATASETS)


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
    upscale: str = "pad",
    native_sides: tuple[int, ...] = (),
) -> ImageSet:
    """Load one split of a dataset as uint8 ``[N, C, H, W]`` at its native size.

    ``channels``/``size`` only matter for loaders that must resize on load (``celeba``,
    ``folder:PATH``); use :func:`dgmood.data.transforms.match_format` to make sets comparable.
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
    req.root.mkdir(parents=True, exist_ok=True)
    return DATASETS[name].load(req)
