"""Any image file -> a uint8 tensor in a run's format: the dataset's geometry or "MNIST-ify".

A file takes one of two routes (:func:`prepare_image`):

- **dataset route**: an image already in the run's native format (square, its side the
  dataset's own side or the model's, plain 8-bit gray or colour without transparency; e.g.
  a 28x28 grayscale PNG for a model of MNIST zero-padded to 32x32) goes through exactly what
  the dataset's images went through (:func:`dgmood.data.transforms.to_channels` and
  :func:`~dgmood.data.transforms.to_size` with the run's ``upscale``): no crop, no resize
  to fill the frame, no inversion, no contrast stretch. An in-distribution image saved as a
  file scores as it does in the dataset.
- **photo route**: anything else (a photo, a drawing of another size, an image with
  transparency). Gray models take the MNIST-ify path below; colour models a centre crop and
  a resize. Whether the photo route inverted an image is reported
  (:attr:`PreparedImage.inverted`), as ``dgmood predict`` shows.

The photo route for gray models, one function a step::

    image = load_image("chicken.jpg")            # PIL image; one clear error if unreadable
    x = mnistify(image, size=32)                 # uint8 [1, 32, 32], white strokes on black
    x = to_channels(x, 3)                        # dgmood.data.transforms; only for RGB models
    model_input = to_model_input(x[None], model.input_spec)   # dgmood.data.dequantize

:func:`mnistify` does, in order:

1. flatten transparency onto white (as an image viewer shows it) and convert to grayscale
   with the ITU-R 601-2 luma transform (Pillow's ``"L"`` mode);
2. centre-crop to a square, so nothing is stretched;
3. resize (Lanczos, antialiased) to ``size`` minus the padding;
4. match MNIST's intensity convention, bright strokes on a dark background: with
   ``invert=None`` the image is inverted when its border (the outer 5% of the square) is on
   average brighter than mid-gray, as for a dark digit drawn on white paper or most photos
   of objects on a light background; ``invert=True/False`` forces the choice;
5. optionally stretch intensities to the full 0..255 range (autocontrast), as MNIST digits
   use it;
6. pad with black to ``size`` (``pad_fraction`` of the side on each edge);
   ``MNIST_PAD_FRACTION`` reproduces MNIST's 20-pixel digit box inside a 32-pixel frame.

References:
    LeCun et al., "Gradient-based learning applied to document recognition", 1998 (MNIST's
    normalisation); "Passing a chicken through an MNIST model" (2018), the MNIST-ified chicken.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from dgmood.data import transforms
from dgmood.data.errors import DataError
from dgmood.data.transforms import center_crop_square

SUPPORTED_FORMATS = "PNG, JPEG, BMP, GIF, TIFF, WebP, PPM/PGM (any still image Pillow can decode)"
MNIST_PAD_FRACTION = 6 / 32  # MNIST: 20x20 digit box centred in 28x28, zero-padded to 32x32
_BORDER_FRACTION = 0.05  # share of the square's side that counts as border for auto-invert


class ImageLoadError(DataError, ValueError):
    """An image file could not be read (missing, unreadable, or not an image).

    A :class:`DataError` like every data problem a user can fix, and a ``ValueError``.
    """


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode one image file, applying its EXIF orientation.

    Raises :class:`ImageLoadError`, naming the file and the supported formats, for a missing
    file, a directory, a file without read permission, and anything Pillow cannot decode
    (including truncated files). Multi-frame files give their first frame.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            image.load()
    except FileNotFoundError:
        reason = "no such file"
    except IsADirectoryError:
        reason = "it is a directory"
    except PermissionError:
        reason = "permission denied"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = f"not a readable image: {error}"
    else:
        return image
    raise ImageLoadError(
        f"cannot load image {str(path)!r} ({reason}); supported: {SUPPORTED_FORMATS}"
    )


def _to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    array = image
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(
            f"expected an array of shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
            f"got {list(array.shape)}"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError("float image arrays must hold finite values in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, bool or float in [0, 1]; got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _to_grayscale(image: Image.Image) -> Image.Image:
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grayscale: map the data range linearly onto 0..255
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        return Image.fromarray(np.round(scaled).astype(np.uint8))
    return image.convert("L")


def _border_mean(gray: np.ndarray) -> float:
    side = gray.shape[0]
    width = max(1, round(_BORDER_FRACTION * side))
    border = np.ones(gray.shape, dtype=bool)
    border[width : side - width, width : side - width] = False
    return float(gray[border].mean())


def _stretch_to_full_range(gray: np.ndarray) -> np.ndarray:
    # Pillow's ImageOps.autocontrast truncates, so its maximum can land on 254
    low, high = int(gray.min()), int(gray.max())
    if high == low:
        return gray
    scaled = (gray.astype(np.float64) - low) * (255.0 / (high - low))
    return np.round(scaled).astype(np.uint8)


def mnistify(
    image: Image.Image | np.ndarray,
    size: int = 32,
    invert: bool | None = None,
    pad_fraction: float = 0.0,
    autocontrast: bool = True,
) -> Tensor:
    """Turn any image into a uint8 tensor ``[1, size, size]`` in MNIST's convention.

    ``image`` is a PIL image or an ``[H, W(, C)]`` array (uint8, bool, or float in [0, 1]).
    ``invert=None`` auto-detects a bright background by the border's mean brightness;
    ``pad_fraction`` is the share of ``size`` left black on each edge (``MNIST_PAD_FRACTION``
    mimics MNIST's digit box). See the module docstring for every step.

    References:
        "Passing a chicken through an MNIST model" (2018).
    """
    return _mnistify(image, size, invert, pad_fraction, autocontrast)[0]


def _mnistify(
    image: Image.Image | np.ndarray,
    size: int,
    invert: bool | None,
    pad_fraction: float,
    autocontrast: bool,
) -> tuple[Tensor, bool]:
    """:func:`mnistify` and whether it inverted the image."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not 0.0 <= pad_fraction < 0.5:
        raise ValueError(f"pad_fraction must be in [0, 0.5), got {pad_fraction}")
    pad = round(pad_fraction * size)
    content_side = size - 2 * pad
    if content_side < 1:
        raise ValueError(f"pad_fraction={pad_fraction} leaves no room in a {size}px image")

    gray = _to_grayscale(_to_pil(image))
    width, height = gray.size
    if width == 0 or height == 0:
        raise ValueError(f"image is empty ({width}x{height})")
    square = center_crop_square(gray)

    if invert is None:
        invert = _border_mean(np.asarray(square)) > 127.5
    content = square.resize((content_side, content_side), Image.Resampling.LANCZOS)
    if invert:
        content = ImageOps.invert(content)
    content_pixels = np.asarray(content)
    if autocontrast:
        content_pixels = _stretch_to_full_range(content_pixels)

    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[pad : pad + content_side, pad : pad + content_side] = content_pixels
    return torch.from_numpy(pixels)[None], bool(invert)


def _rgb_square(image: Image.Image, size: int) -> Tensor:
    """Colour photo -> uint8 [3, size, size]: centre crop to a square, then resize."""
    image = center_crop_square(image.convert("RGB"))
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


Route = Literal["dataset", "photo"]


@dataclass(frozen=True)
class PreparedImage:
    """One user image in a run's format, and how it got there."""

    pixels: Tensor  # uint8 [channels, size, size]
    route: Route  # "dataset": the dataset's own geometry; "photo": crop, resize, MNIST-ify
    inverted: bool  # made white-on-black (auto-detected bright background, or forced)

    def describe(self) -> str:
        """A few words for a table: the route, and the inversion if there was one."""
        return f"{self.route}, inverted" if self.inverted else self.route


def native_pixels(image: Image.Image, native_sides: Collection[int]) -> Tensor | None:
    """uint8 ``[C, H, W]`` of an image already in a dataset's format, else None.

    In the format means: square, its side one of ``native_sides``, plain 8-bit gray (``L``,
    ``1``) or colour (``RGB``, or a palette) without transparency (an alpha channel that is
    fully opaque counts as none). Everything else is a photo.
    """
    width, height = image.size
    if width != height or width not in native_sides:
        return None
    if "transparency" in image.info:
        return None
    if image.mode in ("RGBA", "LA"):
        if np.asarray(image.getchannel("A")).min() < 255:
            return None
        image = image.convert("RGB" if image.mode == "RGBA" else "L")
    elif image.mode == "P":
        image = image.convert("RGB")
    elif image.mode == "1":
        image = image.convert("L")
    if image.mode == "L":
        return torch.from_numpy(np.array(image, dtype=np.uint8))[None]
    if image.mode == "RGB":
        return torch.from_numpy(np.array(image, dtype=np.uint8).transpose(2, 0, 1).copy())
    return None


def prepare_image(
    image: Image.Image,
    channels: int,
    size: int,
    *,
    upscale: str = "pad",
    native_sides: Collection[int] = (),
    invert: bool | None = None,
) -> PreparedImage:
    """One user image (PIL) -> uint8 ``[channels, size, size]`` by the route that fits it.

    An image of side ``size`` or one of ``native_sides`` (the dataset's own side) in plain
    gray or colour takes the dataset route: channels by
    :func:`~dgmood.data.transforms.to_channels`, side by
    :func:`~dgmood.data.transforms.to_size` with ``upscale``, exactly as the dataset's
    images; it is inverted only when ``invert=True``. Any other image takes the photo route
    (gray: :func:`mnistify`, with ``invert=None`` auto-detection; colour: centre crop and
    resize). See the module docstring.
    """
    if channels not in (1, 3):
        raise ValueError(f"user images can be made 1- or 3-channel, not {channels}")
    native = native_pixels(image, {size, *native_sides})
    if native is not None:
        if invert:
            native = 255 - native  # before padding: the border stays the dataset's black
        pixels = transforms.to_size(transforms.to_channels(native, channels)[None], size, upscale)[
            0
        ]
        return PreparedImage(pixels, "dataset", bool(invert))
    if channels == 1:
        pixels, inverted = _mnistify(image, size, invert, 0.0, True)
        return PreparedImage(pixels, "photo", inverted)
    return PreparedImage(_rgb_square(image, size), "photo", False)


def prepare_files(
    paths: Sequence[str | Path],
    channels: int,
    size: int,
    *,
    upscale: str = "pad",
    native_sides: Collection[int] = (),
    invert: bool | None = None,
) -> list[PreparedImage]:
    """:func:`prepare_image` of each file; an unreadable file raises one :class:`ImageLoadError`."""
    return [
        prepare_image(
            load_image(path),
            channels,
            size,
            upscale=upscale,
            native_sides=native_sides,
            invert=invert,
        )
        for path in paths
    ]


def stack_pixels(prepared: Sequence[PreparedImage]) -> Tensor:
    """The images of :func:`prepare_files` as one uint8 ``[N, C, H, W]`` tensor."""
    if not prepared:
        raise ValueError("no images given")
    return torch.stack([p.pixels for p in prepared])
