"""OOD sets for colour models: GTSRB (real files where present, a fixture otherwise), the gray
sets as 3x32x32, the synthetic constant and noise sets, and the `dgmood datasets` listing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dgmood.config import DataConfig
from dgmood.data import CorruptDatasetError, DatasetNotFoundError, load_dataset
from dgmood.data.loading import DataSources
from dgmood.data.synthetic import SYNTHETIC_TEST_SIZE

# GTSRB's published test-set class counts (classes 0..42; 12,630 images)
GTSRB_TEST_COUNTS = [
    60, 720, 750, 450, 660, 630, 150, 450, 450, 480, 660, 420, 690, 720, 270, 210, 150, 360,
    390, 60, 90, 90, 120, 150, 90, 480, 180, 60, 150, 90, 150, 270, 60, 210, 120, 390, 120,
    60, 690, 90, 90, 60, 90,
]  # fmt: skip
# ../shared/data/SOURCES.md: sha256 of every file under gtsrb/ concatenated in sorted order
GTSRB_FILES_SHA256 = "7d0813f14be7d70a79be6d500cdba3503f950736858ebf7709536bfd98c1f6a1"
COLOUR = DataConfig(dataset="cifar10", channels=3)


@pytest.fixture(scope="module")
def gtsrb_mirror(mirror: Path) -> Path:
    if not (mirror / "gtsrb" / "GT-final_test.csv").exists():
        pytest.skip(f"the GTSRB test files are not in the mirror ({mirror / 'gtsrb'})")
    return mirror


def test_real_gtsrb_test_split(gtsrb_mirror: Path, data_dir: Path) -> None:
    files = sorted(p for p in (gtsrb_mirror / "gtsrb").rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    if digest.hexdigest() != GTSRB_FILES_SHA256:
        pytest.skip("the mirror's gtsrb/ is not the copy SOURCES.md describes")
    s = DataSources(data_dir=str(data_dir), mirror=str(gtsrb_mirror)).load_like(
        "gtsrb", "test", COLOUR
    )
    assert s.images.shape == (12_630, 3, 32, 32) and s.label == "gtsrb-test"
    assert torch.bincount(s.labels, minlength=43).tolist() == GTSRB_TEST_COUNTS
    mean = s.images.double().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.337, 0.309, 0.320], dtype=torch.float64), atol=6e-4)
    # image 12629 is the last 3,072 bytes of its binary PPM (RGB interleaved), read directly
    ppm = (gtsrb_mirror / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / "12629.ppm").read_bytes()
    pixels = np.frombuffer(ppm[-3072:], dtype=np.uint8).reshape(32, 32, 3).transpose(2, 0, 1)
    assert torch.equal(s.images[-1], torch.from_numpy(pixels.copy()))
    assert not (data_dir / "gtsrb").exists()  # read in place from the mirror, not copied


def _gtsrb_fixture(root: Path, sizes: list[tuple[int, int]]) -> list[int]:
    images = root / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    classes = []
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), color=(10 * i, 200, 30)).save(images / f"{i:05d}.ppm")
        classes.append((7 * i) % 43)
        rows.append(f"{i:05d}.ppm;{w};{h};1;1;{w - 1};{h - 1};{classes[-1]}")
    (root / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return classes


def test_gtsrb_fixture_in_torchvision_layout(tmp_path: Path) -> None:
    classes = _gtsrb_fixture(tmp_path, [(32, 32), (53, 41), (15, 17)])
    s = load_dataset("gtsrb", "test", data_dir=tmp_path, mirror=tmp_path / "none")
    assert s.images.shape == (3, 3, 32, 32) and s.labels.tolist() == classes
    for i in range(3):  # one-colour signs stay one colour through the resize
        assert s.images[i, :, 5, 7].tolist() == [10 * i, 200, 30]
    with pytest.raises(ValueError, match="test"):
        load_dataset("gtsrb", "train", data_dir=tmp_path)


def test_gtsrb_unreadable_image_is_named(tmp_path: Path) -> None:
    _gtsrb_fixture(tmp_path, [(32, 32), (32, 32)])
    (tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / "00001.ppm").write_bytes(b"P6\n")
    with pytest.raises(CorruptDatasetError, match="00001.ppm"):
        load_dataset("gtsrb", "test", data_dir=tmp_path, mirror=tmp_path / "none")
    with pytest.raises(DatasetNotFoundError, match="GT-final_test.csv"):
        load_dataset("gtsrb", "test", data_dir=tmp_path / "empty", mirror=tmp_path / "none")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_gray_sets_for_a_colour_run(mirror: Path, data_dir: Path, name: str) -> None:
    sources = DataSources(data_dir=str(data_dir), mirror=str(mirror))
    gray = load_dataset(name, "test", data_dir=data_dir, mirror=mirror)
    colour = sources.load_like(name, "test", COLOUR)
    assert colour.images.shape == (10_000, 3, 32, 32) and colour.label == f"{name}-test"
    for channel in range(3):  # the gray level in every channel, zero-padded by 2 pixels
        assert torch.equal(colour.images[:, channel, 2:30, 2:30], gray.images[:, 0])
    assert int(colour.images[:, :, :2].sum()) == 0 and int(colour.images[..., 30:].sum()) == 0
    assert torch.equal(colour.labels, gray.labels)


def test_constant_images_are_one_random_colour_each(tmp_path: Path) -> None:
    s = DataSources(data_dir=str(tmp_path)).load_like("constant", "test", COLOUR)
    assert s.images.shape == (SYNTHETIC_TEST_SIZE, 3, 32, 32) and (s.labels == -1).all()
    flat = s.images.flatten(2)
    assert (flat == flat[:, :, :1]).all()  # every pixel of an image has the image's colour
    colours = flat[:, :, 0].long()
    counts = torch.bincount(colours.flatten(), minlength=256).double()
    expected = colours.numel() / 256  # uniform levels: chi-square with 255 degrees of freedom
    assert float(((counts - expected) ** 2 / expected).sum()) < 350
    assert len(torch.unique(colours, dim=0)) > 9_990  # independent colours, not a palette
    again = load_dataset("constant", "test", data_dir=tmp_path, channels=3)
    assert torch.equal(again.images, s.images)  # seeded: the same set every time
    gray = DataSources(data_dir=str(tmp_path)).load_like("constant", "test", DataConfig())
    assert gray.images.shape == (SYNTHETIC_TEST_SIZE, 1, 32, 32)


@pytest.mark.parametrize("channels", [1, 3])
def test_noise_is_uniform_in_every_sub_pixel(tmp_path: Path, channels: int) -> None:
    config = DataConfig(dataset="cifar10", channels=channels)
    s = DataSources(data_dir=str(tmp_path)).load_like("noise", "test", config)
    assert s.images.shape == (SYNTHETIC_TEST_SIZE, channels, 32, 32)
    counts = torch.bincount(s.images.flatten().long(), minlength=256).double()
    expected = s.images.numel() / 256
    assert float(((counts - expected) ** 2 / expected).sum()) < 350  # uniform, not luma-mixed
    # neighbouring sub-pixels are independent
    x = s.images[:2000].double()
    corr = np.corrcoef(x[..., :-1].flatten().numpy(), x[..., 1:].flatten().numpy())[0, 1]
    assert abs(corr) < 0.01
    assert torch.equal(load_dataset("noise", data_dir=tmp_path, channels=channels).images, s.images)
    with pytest.raises(ValueError, match="one split"):
        load_dataset("noise", "train", data_dir=tmp_path)


def test_datasets_command_lists_the_colour_ood_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    from dgmood.cli import main

    monkeypatch.setattr(main.console, "width", 400)  # one line per dataset
    result = CliRunner().invoke(main.app, ["datasets"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.count("│") > 3}
    for name in ("cifar10", "gtsrb", "constant", "noise", "mnist", "svhn", "celeba"):
        assert name in lines, result.output
    assert "first 1,000" in lines["cifar10"] and "train-holdout" in lines["cifar10"]
    assert "3x32x32" in lines["mnist"]
