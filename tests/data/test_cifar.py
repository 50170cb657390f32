"""CIFAR-10 from either official layout: the real binary files of the mirror where present,
fixtures in the exact on-disk formats for the rest."""

from __future__ import annotations

import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dgmood.config import DataConfig
from dgmood.data import CorruptDatasetError, DatasetNotFoundError, load_dataset, match_format
from dgmood.data.loading import DataSources
from dgmood.data.sources import md5sum

# published statistics of the CIFAR-10 training set (pixels in [0, 1])
TRAIN_MEAN = (0.4914, 0.4822, 0.4465)
TRAIN_STD = (0.2470, 0.2435, 0.2616)
# the first test records' classes, as listed in ../shared/data/SOURCES.md
FIRST_1000_COUNTS = [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
OFFICIAL_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch_first1000.bin": "371f65da31ad652f5e24b3699a3e6515",
}


@pytest.fixture(scope="module")
def cifar_mirror(mirror: Path) -> Path:
    folder = mirror / "cifar10" / "cifar-10-batches-bin"
    if not (folder / "data_batch_1.bin").exists():
        pytest.skip(f"the CIFAR-10 binary files are not in the mirror ({folder})")
    return mirror


@pytest.fixture(scope="module")
def cifar_train(cifar_mirror: Path, data_dir: Path) -> torch.Tensor:
    return load_dataset("cifar10", "train", data_dir=data_dir, mirror=cifar_mirror).images


def test_real_training_split_has_the_published_statistics(
    cifar_mirror: Path, data_dir: Path, cifar_train: torch.Tensor
) -> None:
    train = load_dataset("cifar10", "train", data_dir=data_dir, mirror=cifar_mirror)
    assert train.images.shape == (50_000, 3, 32, 32) and train.label == "cifar10-train"
    assert train.labels[:5].tolist() == [6, 9, 9, 4, 1]  # frog, truck, truck, deer, car
    assert torch.bincount(train.labels).tolist() == [5_000] * 10
    levels = torch.arange(256, dtype=torch.float64) / 255
    for channel in range(3):  # exact moments from the histogram of each channel's levels
        counts = torch.bincount(train.images[:, channel].flatten(), minlength=256).double()
        mean = float((counts * levels).sum() / counts.sum())
        std = float(((counts * (levels - mean) ** 2).sum() / counts.sum()).sqrt())
        assert abs(mean - TRAIN_MEAN[channel]) < 6e-5
        assert abs(std - TRAIN_STD[channel]) < 6e-5
    for name in ("data_batch_1.bin", "data_batch_5.bin"):  # copied into the data dir as is
        assert md5sum(data_dir / "cifar-10-batches-bin" / name) == OFFICIAL_MD5[name]


def test_real_partial_test_split_says_so(cifar_mirror: Path, data_dir: Path) -> None:
    test = load_dataset("cifar10", "test", data_dir=data_dir, mirror=cifar_mirror)
    assert test.partial and len(test) == 1_000
    assert test.label == "CIFAR-10 test (first 1,000)"
    assert test.labels[:5].tolist() == [3, 8, 8, 0, 6]  # cat, ship, ship, airplane, frog
    assert torch.bincount(test.labels).tolist() == FIRST_1000_COUNTS
    # the records of the md5-pinned file, and no training image in their place
    copied = data_dir / "cifar-10-batches-bin" / "test_batch_first1000.bin"
    assert md5sum(copied) == OFFICIAL_MD5["test_batch_first1000.bin"]
    records = np.fromfile(copied, dtype=np.uint8).reshape(1_000, 3073)
    assert torch.equal(test.images[999].flatten(), torch.from_numpy(records[999, 1:]))
    # the name travels with the set: a colour run's format, a shorter head
    like = DataSources(data_dir=str(data_dir), mirror=str(cifar_mirror))
    as_run = like.load_like("cifar10", "test", DataConfig(dataset="cifar10", channels=3))
    assert as_run.label == "CIFAR-10 test (first 1,000)"
    assert match_format(test, 1, 32).label == "CIFAR-10 test (first 1,000)"
    assert test.head(500).label == "CIFAR-10 test (first 500)"


def test_holdout_is_the_end_of_train_and_named_as_such(
    cifar_mirror: Path, data_dir: Path, cifar_train: torch.Tensor
) -> None:
    fit = load_dataset("cifar10", "train-fit", data_dir=data_dir, mirror=cifar_mirror)
    holdout = load_dataset("cifar10", "train-holdout", data_dir=data_dir, mirror=cifar_mirror)
    assert (len(fit), len(holdout)) == (45_000, 5_000)
    assert holdout.label == "cifar10-train-holdout" and fit.label == "cifar10-train-fit"
    assert torch.equal(holdout.images, cifar_train[45_000:])
    assert torch.equal(fit.images, cifar_train[:45_000])


def test_validating_on_the_holdout_needs_training_on_the_rest(
    cifar_mirror: Path, data_dir: Path
) -> None:
    sources = DataSources(data_dir=str(data_dir), mirror=str(cifar_mirror))
    overlapping = DataConfig(dataset="cifar10", channels=3, val_split="train-holdout")
    with pytest.raises(ValueError, match="train_split=train-fit"):
        sources.load_like("cifar10", "train-holdout", overlapping)
    disjoint = DataConfig(
        dataset="cifar10", channels=3, train_split="train-fit", val_split="train-holdout"
    )
    assert len(sources.load_like("cifar10", "train-holdout", disjoint)) == 5_000


def test_a_corrupt_binary_file_is_named(cifar_mirror: Path, tmp_path: Path) -> None:
    bad = tmp_path / "mirror" / "cifar10" / "cifar-10-batches-bin"
    bad.mkdir(parents=True)
    data = bytearray(
        (cifar_mirror / "cifar10" / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    )
    data[123_456] ^= 0x01
    (bad / "data_batch_1.bin").write_bytes(bytes(data))
    with pytest.raises(CorruptDatasetError, match=r"data_batch_1\.bin.*md5"):
        load_dataset("cifar10", "train", data_dir=tmp_path / "d", mirror=tmp_path / "mirror")
    assert not (tmp_path / "d" / "cifar-10-batches-bin" / "data_batch_1.bin").exists()


# ---- fixtures in the official on-disk formats --------------------------------------------


def _records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The binary version's bytes: per image, its label byte then its R, G, B planes."""
    flat = images.reshape(len(images), -1)
    return np.concatenate([labels.astype(np.uint8)[:, None], flat], axis=1).tobytes()


def _batches(seed: int, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))
        for n in sizes
    ]


def _write_binary(folder: Path, batches: list[tuple[np.ndarray, np.ndarray]], test: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, batch in enumerate(batches[:5], start=1):
        (folder / f"data_batch_{i}.bin").write_bytes(_records(*batch))
    (folder / test).write_bytes(_records(*batches[5]))


def _write_python(folder: Path, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, (images, labels) in zip(names, batches, strict=True):
        content = {"data": images.reshape(len(images), -1), "labels": labels.tolist()}
        (folder / name).write_bytes(pickle.dumps(content))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))


def test_binary_and_python_versions_read_alike(tmp_path: Path) -> None:
    batches = _batches(0, [3, 2, 4, 1, 2, 5])
    _write_binary(tmp_path / "bin" / "cifar-10-batches-bin", batches, "test_batch.bin")
    _write_python(tmp_path / "py" / "cifar-10-batches-py", batches)
    for split in ("train", "test"):
        a = load_dataset("cifar10", split, data_dir=tmp_path / "bin", verify=False)
        b = load_dataset("cifar10", split, data_dir=tmp_path / "py", verify=False)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert not a.partial and a.label == f"cifar10-{split}"
    # plane order, from the bytes themselves: record 1 of test_batch.bin, byte 1 + 1024 + 33
    # is the green level of row 1, column 1
    raw = (tmp_path / "bin" / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "bin", verify=False)
    assert int(test.images[1, 1, 1, 1]) == raw[3073 + 1 + 1024 + 33]
    assert int(test.labels[1]) == raw[3073]


def test_full_test_file_wins_over_the_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DGMOOD_MIRROR")  # the team mirror would supply the partial file
    batches = _batches(1, [2, 2, 2, 2, 2, 6])
    folder = tmp_path / "cifar-10-batches-bin"
    _write_binary(folder, batches, "test_batch.bin")
    (folder / "test_batch_first1000.bin").write_bytes(_records(*batches[5])[: 2 * 3073])
    full = load_dataset("cifar10", "test", data_dir=tmp_path, verify=False)
    assert len(full) == 6 and not full.partial and full.label == "cifar10-test"
    (folder / "test_batch.bin").unlink()
    partial = load_dataset("cifar10", "test", data_dir=tmp_path, verify=False)
    assert partial.label == "CIFAR-10 test (first 2)"
    assert torch.equal(partial.images, full.images[:2])
    (folder / "test_batch_first1000.bin").unlink()
    # no test file at all: the training files are there, and are not used instead
    with pytest.raises(DatasetNotFoundError, match=r"test_batch\.bin"):
        load_dataset("cifar10", "test", data_dir=tmp_path, verify=False)
    assert len(load_dataset("cifar10", "train", data_dir=tmp_path, verify=False)) == 10


def test_a_mirror_copy_of_the_full_test_file_is_used(tmp_path: Path) -> None:
    batches = _batches(2, [1, 1, 1, 1, 1, 4])
    _write_binary(tmp_path / "d" / "cifar-10-batches-bin", batches, "test_batch_first1000.bin")
    mirrored = tmp_path / "m" / "cifar10" / "cifar-10-batches-bin"
    _write_binary(mirrored, batches, "test_batch.bin")
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "d", mirror=tmp_path / "m",
                        verify=False)  # fmt: skip
    assert len(test) == 4 and not test.partial


def test_binary_archive_in_the_mirror_is_checked_then_extracted(tmp_path: Path) -> None:
    batches = _batches(3, [1, 2, 1, 1, 1, 3])
    staging = tmp_path / "staging"
    _write_binary(staging / "cifar-10-batches-bin", batches, "test_batch.bin")
    archive = tmp_path / "m" / "cifar10" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    with pytest.raises(CorruptDatasetError, match=r"cifar-10-binary\.tar\.gz.*md5"):
        load_dataset("cifar10", "train", data_dir=tmp_path / "d1", mirror=tmp_path / "m")
    train = load_dataset("cifar10", "train", data_dir=tmp_path / "d2", mirror=tmp_path / "m",
                         verify=False)  # fmt: skip
    assert len(train) == 6


def test_a_file_that_is_not_whole_records_is_named(tmp_path: Path) -> None:
    batches = _batches(4, [1, 1, 1, 1, 1, 2])
    folder = tmp_path / "cifar-10-batches-bin"
    _write_binary(folder, batches, "test_batch.bin")
    (folder / "test_batch.bin").write_bytes(_records(*batches[5])[:-7])
    with pytest.raises(CorruptDatasetError, match=r"test_batch\.bin.*3073-byte records"):
        load_dataset("cifar10", "test", data_dir=tmp_path, verify=False)
    shutil.rmtree(folder)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-binary.tar.gz"):
        load_dataset("cifar10", "test", data_dir=tmp_path, mirror=tmp_path / "none")
