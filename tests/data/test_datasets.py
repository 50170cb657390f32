"""Dataset loading: real MNIST/Fashion-MNIST via the mirror, torchvision formats via fixtures."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgmood.data import (
    CorruptDatasetError,
    DataError,
    DatasetNotFoundError,
    load_dataset,
    match_format,
)
from dgmood.data.transforms import to_channels, to_size


@pytest.mark.parametrize(
    ("name", "split", "n", "first_labels"),
    [
        ("mnist", "test", 10_000, [7, 2, 1, 0, 4]),
        ("fashion-mnist", "test", 10_000, [9, 2, 1, 1, 6]),
        ("mnist", "train", 60_000, [5, 0, 4, 1, 9]),
    ],
)
def test_real_mnist_style_sets_load_from_mirror(
    mirror: Path, data_dir: Path, name: str, split: str, n: int, first_labels: list[int]
) -> None:
    s = load_dataset(name, split, data_dir=data_dir, mirror=mirror)
    assert s.images.shape == (n, 1, 28, 28) and s.images.dtype == torch.uint8
    assert s.labels[:5].tolist() == first_labels
    assert int(s.images.max()) == 255 and int(s.images.min()) == 0


def test_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="--download"):
        load_dataset("mnist", "test", data_dir=tmp_path / "empty", mirror=tmp_path / "nomirror")
    with pytest.raises(DatasetNotFoundError, match="svhn"):
        load_dataset("svhn", "test", data_dir=tmp_path / "empty")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet-9000", data_dir=tmp_path)


def _bad_mirror(mirror: Path, tmp_path: Path, corrupt: str) -> Path:
    bad = tmp_path / "bad-mirror" / "mnist"
    bad.mkdir(parents=True)
    for file in (mirror / "mnist").iterdir():
        shutil.copyfile(file, bad / file.name)
    target = bad / "t10k-images-idx3-ubyte.gz"
    data = bytearray(target.read_bytes())
    if corrupt == "flip":
        data[5000] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target.write_bytes(bytes(data[: len(data) // 2]))
    return bad.parent


def test_corrupt_file_is_named_by_md5(mirror: Path, tmp_path: Path) -> None:
    bad = _bad_mirror(mirror, tmp_path, "flip")
    with pytest.raises(CorruptDatasetError, match="t10k-images-idx3-ubyte.gz.*md5"):
        load_dataset("mnist", "test", data_dir=tmp_path / "d", mirror=bad)


def test_truncated_gzip_is_named_when_not_verifying(mirror: Path, tmp_path: Path) -> None:
    bad = _bad_mirror(mirror, tmp_path, "truncate")
    with pytest.raises(CorruptDatasetError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", data_dir=tmp_path / "d", mirror=bad, verify=False)
    # nothing half-extracted is left behind
    raw = tmp_path / "d" / "MNIST" / "raw"
    assert not (raw / "t10k-images-idx3-ubyte").exists()
    assert not list(raw.glob("*.part"))


# ---- torchvision on-disk formats, written by the tests ------------------------------------


def write_cifar(root: Path, folder: str, n_train: int, n_test: int, fine: bool) -> None:
    rng = np.random.default_rng(0)
    base = root / folder
    base.mkdir(parents=True)
    label_key = "fine_labels" if fine else "labels"

    def batch(n: int) -> dict[str, object]:
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        return {"data": data, label_key: rng.integers(0, 10, n).tolist(), "filenames": []}

    if fine:
        files = {"train": batch(n_train), "test": batch(n_test)}
        meta = {"fine_label_names": [f"c{i}" for i in range(100)]}
        files["meta"] = meta
    else:
        files = {f"data_batch_{i}": batch(n_train) for i in range(1, 6)}
        files["test_batch"] = batch(n_test)
        files["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)]}
    for name, content in files.items():
        with open(base / name, "wb") as handle:
            pickle.dump(content, handle)


def test_cifar10_fixture_in_torchvision_format(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar-10-batches-py", 4, 3, fine=False)
    train = load_dataset("cifar10", "train", data_dir=tmp_path, verify=False)
    test = load_dataset("cifar10", "test", data_dir=tmp_path, verify=False)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as handle:
        raw = pickle.load(handle)
    # the row-major 3072-vector is R plane, G plane, B plane
    expected = torch.from_numpy(raw["data"][1].reshape(3, 32, 32))
    assert torch.equal(test.images[1], expected)
    assert test.labels.tolist() == raw["labels"]
    # with verification on, the fixture's md5s differ from the official files and are named
    with pytest.raises(CorruptDatasetError, match="data_batch_1"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


def test_cifar100_fixture(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar-100-python", 6, 2, fine=True)
    s = load_dataset("cifar100", "train", data_dir=tmp_path, verify=False)
    assert s.images.shape == (6, 3, 32, 32) and s.labels.dtype == torch.int64


def test_svhn_fixture_mat_format(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)  # SVHN stores H, W, C, N
    y = np.array([[10], [1], [2], [3], [10]], dtype=np.uint8)  # digit 0 is stored as 10
    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": y})
    s = load_dataset("svhn", "test", data_dir=tmp_path, verify=False)
    assert s.images.shape == (5, 3, 32, 32)
    assert s.labels.tolist() == [0, 1, 2, 3, 0]
    assert torch.equal(s.images[2], torch.from_numpy(x[:, :, :, 2].transpose(2, 0, 1).copy()))


def test_celeba_fixture_crops_and_resizes(tmp_path: Path) -> None:
    folder = tmp_path / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 5)]
    for i, name in enumerate(names):
        array = np.full((218, 178, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(array).save(images / name, quality=95)
    header_attr = " ".join(f"a{i}" for i in range(40))
    (folder / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n{header_attr}\n"
        + "".join(f"{n} " + " ".join(["1"] * 40) + "\n" for n in names)
    )
    (folder / "identity_CelebA.txt").write_text(
        "".join(f"{n} {i + 1}\n" for i, n in enumerate(names))
    )
    (folder / "list_bbox_celeba.txt").write_text(
        f"{len(names)}\nimage_id x_1 y_1 width height\n" + "".join(f"{n} 1 2 3 4\n" for n in names)
    )
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{len(names)}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x "
        "leftmouth_y rightmouth_x rightmouth_y\n"
        + "".join(f"{n} " + " ".join(["1"] * 10) + "\n" for n in names)
    )
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{n} {0 if i < 2 else 2}\n" for i, n in enumerate(names))
    )
    train = load_dataset("celeba", "train", data_dir=tmp_path, verify=False, channels=3, size=32)
    test = load_dataset("celeba", "test", data_dir=tmp_path, verify=False, channels=3, size=32)
    assert train.images.shape == (2, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert abs(int(test.images[1].float().mean()) - 120) <= 2  # 4th image is gray level 120
    # decoded once into a store; a changed image file makes it decode again
    assert (tmp_path / "dgmood-store" / "celeba" / "test-32px" / "store.json").exists()
    again = load_dataset("celeba", "test", data_dir=tmp_path, verify=False, size=32)
    assert torch.equal(again.images, test.images)
    Image.fromarray(np.full((218, 178, 3), 7, dtype=np.uint8)).save(images / names[3], quality=95)
    os.utime(images, ns=(1, 1))  # the folder's mtime says its files changed
    changed = load_dataset("celeba", "test", data_dir=tmp_path, verify=False, size=32)
    assert abs(int(changed.images[1].float().mean()) - 7) <= 2
    in_memory = load_dataset("celeba", "test", data_dir=tmp_path, verify=False, storage="memory")
    assert torch.equal(in_memory.images, changed.images)


def test_folder_of_user_images(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / "b.jpg")
    rgb = load_dataset(f"folder:{folder}", channels=3, size=32)
    gray = load_dataset(str(folder / "a.png"), channels=1, size=32)
    assert rgb.images.shape == (2, 3, 32, 32) and gray.images.shape == (1, 1, 32, 32)
    assert (rgb.labels == -1).all()


def test_pad_28_to_32_keeps_the_digit_centred() -> None:
    images = torch.randint(1, 256, (2, 1, 28, 28), dtype=torch.uint8)
    padded = to_size(images, 32)
    assert padded.shape == (2, 1, 32, 32)
    assert torch.equal(padded[:, :, 2:30, 2:30], images)
    assert int(padded[:, :, :2].sum()) == 0 and int(padded[:, :, :, 30:].sum()) == 0


def test_channel_conversions_are_explicit() -> None:
    gray = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    rgb = to_channels(gray, 3)
    assert rgb.shape == (3, 3, 4, 4) and torch.equal(rgb[:, 1:2], gray)
    assert torch.equal(to_channels(rgb, 1), gray)  # luma of a gray pixel is the gray value
    red = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    red[:, 0] = 255
    assert int(to_channels(red, 1)) == round(0.299 * 255)


def test_match_format_mnist_to_three_channels(mirror: Path, data_dir: Path) -> None:
    s = match_format(load_dataset("mnist", "test", data_dir=data_dir, mirror=mirror), 3, 32)
    assert s.images.shape == (10_000, 3, 32, 32)


def test_idx_files_read_as_torchvision_reads_them(
    mirror: Path, data_dir: Path, tmp_path: Path
) -> None:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    s = load_dataset("fashion-mnist", "test", data_dir=data_dir, mirror=mirror)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(mirror / "fashion-mnist" / f"{name}.gz") as packed:
            (tmp_path / name).write_bytes(packed.read())
    assert torch.equal(s.images[:, 0], read_image_file(str(tmp_path / "t10k-images-idx3-ubyte")))
    assert torch.equal(s.labels, read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte")))


def test_resize_upscaling_fills_the_frame_and_bad_mode_is_rejected() -> None:
    images = torch.full((1, 1, 28, 28), 200, dtype=torch.uint8)
    resized = to_size(images, 32, "resize")
    assert resized.shape == (1, 1, 32, 32)
    assert int(resized.min()) == 200  # no black border, unlike padding
    assert int(to_size(images, 32, "pad")[..., 0, 0]) == 0
    with pytest.raises(ValueError, match="upscale"):
        to_size(images, 32, "stretch")


def test_imagenet32_fixture_npz_format(tmp_path: Path) -> None:
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    rng = np.random.default_rng(2)
    batches = {}
    for name, n in (
        ("train_data_batch_2", 3),
        ("train_data_batch_10", 2),
        ("train_data_batch_1", 4),
        ("val_data", 5),
    ):
        batches[name] = (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(1, 1001, n))
        np.savez(
            folder / f"{name}.npz",
            data=batches[name][0],
            labels=batches[name][1],
            mean=np.zeros(3072),
        )
    train = load_dataset("imagenet32", "train", data_dir=tmp_path)
    val = load_dataset("imagenet32", "val", data_dir=tmp_path)
    assert train.images.shape == (9, 3, 32, 32) and val.images.shape == (5, 3, 32, 32)
    # batches in numeric order (1, 2, 10), labels made 0-based, planes R, G, B
    assert train.labels[:4].tolist() == (batches["train_data_batch_1"][1] - 1).tolist()
    assert train.labels[-2:].tolist() == (batches["train_data_batch_10"][1] - 1).tolist()
    assert torch.equal(
        val.images[0, 1], torch.from_numpy(batches["val_data"][0][0, 1024:2048].reshape(32, 32))
    )
    with pytest.raises(DatasetNotFoundError, match="image-net.org"):
        load_dataset("imagenet32", "train", data_dir=tmp_path / "none")


def test_copied_files_get_ordinary_permissions(tmp_path: Path) -> None:
    from dgmood.data.sources import copy_verified, md5sum

    packed = tmp_path / "raw.gz"
    packed.write_bytes(gzip.compress(b"idx bytes"))
    previous = os.umask(0o022)
    try:
        copy_verified(packed, tmp_path / "copy" / "raw.gz", md5sum(packed))
    finally:
        os.umask(previous)
    written = tmp_path / "copy" / "raw.gz"
    assert written.read_bytes() == packed.read_bytes()
    assert written.stat().st_mode & 0o777 == 0o644  # mkstemp's 0600 would stick
    assert [p.name for p in written.parent.iterdir()] == [written.name]


def test_download_fetches_only_the_needed_gz_files(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--download goes through torchvision's download_url (which checks the md5); a failed
    download names the file and every mirror tried."""
    import torchvision.datasets.utils as tv_utils

    fetched: list[str] = []

    def fake_download(url: str, root: str, filename: str, md5: str) -> None:
        fetched.append(filename)
        Path(root).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror / "mnist" / filename, Path(root) / filename)

    monkeypatch.setattr(tv_utils, "download_url", fake_download)
    s = load_dataset("mnist", "test", data_dir=tmp_path, mirror=tmp_path / "none", download=True)
    assert len(s) == 10_000 and sorted(fetched) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]

    def offline(url: str, root: str, filename: str, md5: str) -> None:
        raise RuntimeError("no network")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(DataError, match=r"cannot download train-images-idx3-ubyte\.gz.*no network"):
        load_dataset("mnist", "train", data_dir=tmp_path, mirror=tmp_path / "none", download=True)
