"""Any image -> MNIST-like uint8 [1, size, size]; clear errors for files that are not images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageDraw

from dgmood.data.errors import DataError
from dgmood.data.images import (
    MNIST_PAD_FRACTION,
    ImageLoadError,
    load_image,
    mnistify,
    prepare_image,
)
from dgmood.data.transforms import center_crop_square, to_channels, to_size


def _drawn_digit(
    background: int = 255, ink: int = 0, size: tuple[int, int] = (120, 100)
) -> Image.Image:
    """A dark '7'-like stroke on a light sheet, as a user would draw it."""
    image = Image.new("L", size, color=background)
    draw = ImageDraw.Draw(image)
    draw.line([(30, 30), (90, 30), (50, 95)], fill=ink, width=9)
    return image


def test_white_background_drawing_becomes_white_on_black() -> None:
    x = mnistify(_drawn_digit())
    assert x.shape == (1, 32, 32) and x.dtype == torch.uint8
    corners = x[0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).all()
    assert x.max() == 255
    # the stroke is a minority of pixels, as in MNIST
    assert (x > 127).float().mean() < 0.3


def test_dark_background_image_is_not_inverted_automatically() -> None:
    x = mnistify(_drawn_digit(background=0, ink=255))
    assert x[0, 0, 0] == 0 and x.max() == 255


def test_forced_inversion_overrides_auto_detection() -> None:
    kept = mnistify(_drawn_digit(), invert=False)
    assert kept[0, 0, 0] == 255
    inverted = mnistify(_drawn_digit(background=0, ink=255), invert=True)
    assert inverted[0, 0, 0] == 255
    torch.testing.assert_close(mnistify(_drawn_digit(), invert=True), mnistify(_drawn_digit()))


def test_mnist_like_input_at_target_size_is_unchanged() -> None:
    pixels = np.zeros((32, 32), dtype=np.uint8)
    pixels[8:24, 14:18] = 255
    pixels[10, 10] = 128
    torch.testing.assert_close(mnistify(pixels), torch.from_numpy(pixels)[None])


def test_centre_crop_keeps_the_middle_without_stretching() -> None:
    wide = np.full((30, 90), 255, dtype=np.uint8)
    wide[:, 30:60] = 0  # only the centre square is dark
    x = mnistify(wide, invert=False, autocontrast=False)
    assert (x == 0).all()


def test_autocontrast_stretches_to_full_range() -> None:
    ramp = np.tile(np.linspace(100, 150, 64).astype(np.uint8), (64, 1))
    stretched = mnistify(ramp, invert=False)
    assert stretched.min() == 0 and stretched.max() == 255
    plain = mnistify(ramp, invert=False, autocontrast=False)
    assert 95 <= plain.min() and plain.max() <= 155


def test_pad_fraction_leaves_a_black_frame() -> None:
    x = mnistify(_drawn_digit(), pad_fraction=MNIST_PAD_FRACTION)
    assert (x[0, :6] == 0).all() and (x[0, -6:] == 0).all()
    assert (x[0, :, :6] == 0).all() and (x[0, :, -6:] == 0).all()
    assert x[0, 6:26, 6:26].max() == 255
    with pytest.raises(ValueError):
        mnistify(_drawn_digit(), pad_fraction=0.5)


def test_transparent_background_counts_as_white() -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line([(10, 32), (54, 32)], fill=(0, 0, 0, 255), width=6)
    x = mnistify(rgba)
    assert x[0, 0, 0] == 0 and x[0, 16].max() == 255


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1", "I;16", "F"])
@pytest.mark.parametrize("size", [(5, 5), (17, 50), (451, 300)])
def test_any_pil_mode_and_size_gives_uint8_1x32x32(mode: str, size: tuple[int, int]) -> None:
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    ).convert(mode)
    x = mnistify(image)
    assert x.shape == (1, 32, 32) and x.dtype == torch.uint8


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((40, 60), dtype=np.uint8),
        np.ones((40, 60, 1), dtype=np.uint8),
        np.zeros((40, 60, 3), dtype=np.uint8),
        np.zeros((40, 60, 4), dtype=np.uint8),
        np.random.default_rng(0).random((33, 33)),
        np.eye(50, dtype=bool),
    ],
)
def test_any_array_layout_gives_uint8_1x32x32(array: np.ndarray) -> None:
    x = mnistify(array)
    assert x.shape == (1, 32, 32) and x.dtype == torch.uint8
    assert mnistify(array, size=28).shape == (1, 28, 28)


def test_bad_arrays_raise_value_error() -> None:
    with pytest.raises(ValueError):
        mnistify(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ValueError):
        mnistify(np.full((4, 4), 2.0))
    with pytest.raises(ValueError):
        mnistify(np.zeros((4, 4), dtype=np.int64))


@pytest.mark.parametrize("photo", [skimage.data.chelsea, skimage.data.astronaut])
def test_natural_photo_goes_through_the_whole_path(photo, tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo()).save(path, quality=90)
    x = mnistify(load_image(path))
    assert x.shape == (1, 32, 32) and x.dtype == torch.uint8
    assert x.min() == 0 and x.max() == 255
    assert x.float().std() > 20  # still a picture, not a flat field
    rgb = to_channels(x, 3)
    assert rgb.shape == (3, 32, 32)


def test_text_file_renamed_png_raises_image_load_error(tmp_path: Path) -> None:
    path = tmp_path / "chicken.png"
    path.write_text("definitely not a picture of a chicken\n")
    with pytest.raises(ImageLoadError, match="chicken.png") as raised:
        load_image(path)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, DataError)
    assert "PNG" in str(raised.value) and "JPEG" in str(raised.value)


def test_missing_directory_and_truncated_files_raise_image_load_error(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)
    good = tmp_path / "good.png"
    _drawn_digit().save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="truncated.png"):
        load_image(truncated)


def test_load_image_reads_pixels_and_applies_exif_rotation(tmp_path: Path) -> None:
    original = _drawn_digit(size=(120, 100))
    plain = tmp_path / "plain.png"
    original.save(plain)
    loaded = load_image(plain)
    assert loaded.size == (120, 100)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(original))

    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    original.save(rotated, exif=exif)
    assert load_image(rotated).size == (100, 120)


def test_to_channels_gray_to_rgb_and_back() -> None:
    gray = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    rgb = to_channels(gray, 3)
    assert rgb.shape == (2, 3, 8, 8)
    assert (rgb == gray).all()
    torch.testing.assert_close(to_channels(rgb, 1), gray)
    assert to_channels(gray, 1) is gray


def test_to_channels_rgb_to_gray_is_rounded_601_luma_for_images_and_batches() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    gray = to_channels(image, 1)
    assert gray.shape == (1, 16, 16) and gray.dtype == torch.uint8
    # float32 arithmetic may land on the other side of .5 at exact ties, never further off
    assert np.abs(gray[0].numpy().astype(np.float64) - luma).max() <= 0.5 + 1e-3
    assert (np.abs(gray[0].numpy() - np.round(luma)) > 0).mean() < 0.01
    torch.testing.assert_close(to_channels(image[None], 1)[0], gray)


def test_to_channels_rejects_bad_inputs() -> None:
    with pytest.raises(TypeError):
        to_channels(torch.zeros(1, 4, 4), 3)
    with pytest.raises(ValueError):
        to_channels(torch.zeros(2, 4, 4, dtype=torch.uint8), 3)
    with pytest.raises(ValueError):
        to_channels(torch.zeros(4, 4, dtype=torch.uint8), 3)
    with pytest.raises(ValueError):
        to_channels(torch.zeros(1, 4, 4, dtype=torch.uint8), 2)


def test_centre_crop_is_torchvisions_with_round_half_to_even_offsets() -> None:
    # columns numbered 0..w-1; the offset of the kept square is round(margin / 2)
    for width, expected_left in [(3, 0), (4, 1), (5, 2), (7, 2), (9, 4)]:
        columns = np.tile(np.arange(width, dtype=np.uint8), (2, 1))
        square = np.asarray(center_crop_square(Image.fromarray(columns)))
        assert square.shape == (2, 2)
        assert square[0].tolist() == [expected_left, expected_left + 1]
    tall = Image.fromarray(np.arange(10, dtype=np.uint8).reshape(10, 1).repeat(4, 1))
    assert np.asarray(center_crop_square(tall))[:, 0].tolist() == [3, 4, 5, 6]
    assert np.asarray(center_crop_square(tall, 2))[:, 0].tolist() == [4, 5]


def test_one_channel_conversion_rounds_luma_where_torchvision_truncates() -> None:
    import dgmood.data.images as images

    assert not hasattr(images, "to_channels")  # one implementation: dgmood.data.transforms
    yellow = torch.tensor([255, 255, 0], dtype=torch.uint8).view(3, 1, 1)
    assert int(to_channels(yellow, 1)) == 226  # 0.886 * 255 = 225.93; uint8 truncation: 225


# --- the route a user's file takes: the dataset's geometry, or the photo path -------------


def _letter(background: int = 255, ink: int = 0, side: int = 28) -> Image.Image:
    """A dark letter on a light 28x28 square: dataset-sized, but not MNIST's polarity."""
    image = Image.new("L", (side, side), color=background)
    ImageDraw.Draw(image).line([(6, 22), (14, 5), (22, 22)], fill=ink, width=3)
    return image


def test_an_image_in_the_datasets_format_takes_exactly_the_datasets_geometry() -> None:
    """Defect: a 28x28 file was resized to fill 32x32, stretched, and inverted when its
    border was bright; the dataset's images were zero-padded by 2 pixels, nothing else."""
    letter = _letter()
    prepared = prepare_image(letter, 1, 32, upscale="pad", native_sides=(28,))
    assert prepared.route == "dataset" and not prepared.inverted
    expected = torch.nn.functional.pad(torch.from_numpy(np.array(letter))[None], (2, 2, 2, 2))
    torch.testing.assert_close(prepared.pixels, expected)
    # a resize run resizes 28 -> 32 the way the dataset was resized
    resized = prepare_image(letter, 1, 32, upscale="resize", native_sides=(28,))
    original = torch.from_numpy(np.array(letter))[None, None]
    torch.testing.assert_close(resized.pixels, to_size(original, 32, "resize")[0])
    # an explicit --invert still inverts, before padding: the border stays black
    forced = prepare_image(letter, 1, 32, native_sides=(28,), invert=True)
    assert forced.inverted and forced.route == "dataset"
    torch.testing.assert_close(forced.pixels[:, 2:30, 2:30], 255 - expected[:, 2:30, 2:30])
    assert (forced.pixels[:, :2] == 0).all()


def test_colour_and_palette_files_in_the_datasets_format_convert_like_the_dataset() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    prepared = prepare_image(Image.fromarray(rgb), 1, 32, native_sides=(28,))
    chw = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    assert prepared.route == "dataset"
    torch.testing.assert_close(prepared.pixels, to_size(to_channels(chw, 1)[None], 32)[0])
    # gray into a colour model repeats the channel; an opaque alpha channel is no alpha
    gray = Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).convert("LA")
    colour = prepare_image(gray, 3, 32)
    assert colour.route == "dataset" and colour.pixels.shape == (3, 32, 32)
    torch.testing.assert_close(
        colour.pixels, torch.from_numpy(np.array(gray)[..., 0])[None].expand(3, -1, -1)
    )


def test_photos_take_the_photo_route_and_say_when_they_were_inverted() -> None:
    drawn = prepare_image(_drawn_digit(), 1, 32, native_sides=(28,))
    assert drawn.route == "photo" and drawn.inverted
    assert drawn.describe() == "photo, inverted"
    torch.testing.assert_close(drawn.pixels, mnistify(_drawn_digit()))
    dark = prepare_image(_drawn_digit(background=0, ink=255), 1, 32)
    assert dark.route == "photo" and not dark.inverted and dark.describe() == "photo"
    # another side, transparency, or a non-square image: photos, even at 28 pixels
    for photo in (
        _letter(side=20),
        _letter().convert("RGBA").resize((28, 28)).crop((0, 0, 28, 27)),
    ):
        assert prepare_image(photo, 1, 32, native_sides=(28,)).route == "photo"
    transparent = _letter().convert("RGBA")
    transparent.putalpha(128)
    assert prepare_image(transparent, 1, 32, native_sides=(28,)).route == "photo"
    # colour photos: centre crop and resize, never inverted
    cat = prepare_image(Image.fromarray(skimage.data.chelsea()), 3, 32)
    assert cat.route == "photo" and not cat.inverted and cat.pixels.shape == (3, 32, 32)


def test_a_folder_of_dataset_images_loads_exactly_as_the_dataset(
    tmp_path: Path, mirror: Path
) -> None:
    """Defect: a folder of in-distribution FashionMNIST PNGs scored as `--ood folder:DIR` was
    MNIST-ified (resized, stretched) and looked separable from FashionMNIST."""
    from dgmood.config import DataConfig
    from dgmood.data.datasets import load_dataset
    from dgmood.data.loading import DataSources

    raw = load_dataset("fashion-mnist", "test", mirror=mirror)
    for i in range(12):
        Image.fromarray(raw.images[i, 0].numpy()).save(tmp_path / f"{i:02d}.png")
    sources = DataSources(mirror=str(mirror))
    for upscale in ("pad", "resize"):
        data = DataConfig(dataset="fashion-mnist", upscale=upscale)
        folder = sources.load_like(f"folder:{tmp_path}", "test", data)
        dataset = sources.load_like("fashion-mnist", "test", data).head(12)
        torch.testing.assert_close(folder.images, dataset.images)
