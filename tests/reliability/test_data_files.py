"""Data files someone else put in the data directory: only md5-checked bytes are read.

Issue 19, case 6: torchvision's MNIST reader prefers ``processed/{training,test}.pt`` over
the raw idx files when both exist, so a stray cache silently replaced the checked data
(100 white images scored as FashionMNIST), and a pickle there was unpickled.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from dgmood.data import load_dataset


class _Trap:
    """Unpickling this writes a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "unpickled"))  # type: ignore[return-value]


def _data_dir_with_raw(mirror: Path, root: Path, name: str, folder: str) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for file in (mirror / name).iterdir():
        shutil.copyfile(file, raw / file.name)
    processed = root / folder / "processed"
    processed.mkdir()
    return processed


def test_processed_cache_does_not_replace_the_checked_raw_files(
    mirror: Path, tmp_path: Path
) -> None:
    processed = _data_dir_with_raw(mirror, tmp_path, "fashion-mnist", "FashionMNIST")
    white = torch.full((100, 28, 28), 255, dtype=torch.uint8), torch.zeros(100, dtype=torch.int64)
    for file in ("training.pt", "test.pt"):
        torch.save(white, processed / file)
    test = load_dataset("fashion-mnist", "test", data_dir=tmp_path)
    assert len(test) == 10_000
    assert test.labels[:5].tolist() == [9, 2, 1, 1, 6]  # the official first test labels
    assert float(test.images.float().mean()) < 100  # not the white images


def test_a_pickle_in_processed_is_never_unpickled(mirror: Path, tmp_path: Path) -> None:
    processed = _data_dir_with_raw(mirror, tmp_path, "mnist", "MNIST")
    marker = tmp_path / "marker"
    for file in ("training.pt", "test.pt"):
        (processed / file).write_bytes(pickle.dumps(_Trap(marker)))
    test = load_dataset("mnist", "test", data_dir=tmp_path)
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert not marker.exists()


def test_a_tampered_extracted_idx_file_is_not_read(mirror: Path, tmp_path: Path) -> None:
    """The md5s cover the .gz files; an extracted idx file beside them is not trusted."""
    import gzip

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file in (mirror / "mnist").iterdir():
        shutil.copyfile(file, raw / file.name)
    labels = bytearray(gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[8:13] = bytes([3, 3, 3, 3, 3])  # first five labels rewritten
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    test = load_dataset("mnist", "test", data_dir=tmp_path)
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]


@pytest.mark.parametrize("verify", [True, False])
def test_processed_cache_alone_is_not_a_dataset(tmp_path: Path, verify: bool) -> None:
    """Without the raw files a processed cache is not used either: the set is missing."""
    from dgmood.data import DatasetNotFoundError

    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    white = torch.full((3, 28, 28), 255, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)
    for file in ("training.pt", "test.pt"):
        torch.save(white, processed / file)
    with pytest.raises(DatasetNotFoundError, match="mnist"):
        load_dataset("mnist", "test", data_dir=tmp_path, mirror=tmp_path / "none", verify=verify)
