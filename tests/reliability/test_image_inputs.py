"""Any image a user can hand us becomes a valid model input or one clear error (property-based)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from dgmood.data.datasets import load_user_images
from dgmood.data.images import ImageLoadError, mnistify

SIDES = st.integers(min_value=1, max_value=70)
DTYPES = st.sampled_from([np.uint8, np.bool_, np.float32, np.float64, np.uint16, np.int32])
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _assert_model_input(tensor: torch.Tensor, channels: int, size: int) -> None:
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == (channels, size, size)


@st.composite
def pil_images(draw: st.DrawFn) -> Image.Image:
    """Images of every common Pillow mode, size and bit depth (1, 8, 16, 32-bit, float)."""
    mode = draw(st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK"]))
    width, height = draw(SIDES), draw(SIDES)
    bands = len(Image.new(mode, (1, 1)).getbands())
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if mode in ("I", "F", "I;16"):
        values = rng.integers(0, 65535, size=(height, width)).astype(np.int32)
        if draw(st.booleans()):
            values[:] = values.flat[0]  # a constant image: a zero data range
        image = Image.fromarray(values.astype(np.float32) if mode == "F" else values)
        return image.convert(mode) if mode == "I;16" else image
    raw = rng.integers(0, 256, size=height * width * bands, dtype=np.uint8).tobytes()
    if mode == "1":
        raw = rng.integers(0, 256, size=((width + 7) // 8) * height, dtype=np.uint8).tobytes()
    return Image.frombytes(mode, (width, height), raw)


@FAST
@given(image=pil_images(), size=st.integers(1, 40), invert=st.sampled_from([None, True, False]))
def test_mnistify_any_pil_image(image: Image.Image, size: int, invert: bool | None) -> None:
    _assert_model_input(mnistify(image, size=size, invert=invert), 1, size)


@FAST
@given(
    array=DTYPES.flatmap(
        lambda dtype: arrays(
            dtype,
            st.one_of(
                st.tuples(SIDES, SIDES),
                st.tuples(SIDES, SIDES, st.integers(1, 5)),
                st.tuples(st.integers(0, 3), st.integers(0, 3)),
                st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
            ),
        )
    )
)
def test_mnistify_any_array_is_an_input_or_a_value_error(array: np.ndarray) -> None:
    try:
        tensor = mnistify(array)
    except ValueError as error:
        assert str(error)  # one clear message, never an empty one
        return
    _assert_model_input(tensor, 1, 32)


@FAST
@given(
    image=pil_images(),
    file_format=st.sampled_from(["PNG", "BMP", "TIFF", "JPEG", "GIF", "WEBP"]),
    channels=st.sampled_from([1, 3]),
    cut=st.sampled_from([None, 0.5, 0.0]),
)
def test_load_user_images_any_file(
    image: Image.Image, file_format: str, channels: int, cut: float | None
) -> None:
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=file_format)
    except (OSError, ValueError, KeyError):
        return  # Pillow cannot write this mode in this format: no such file can exist
    data = buffer.getvalue()
    if cut is not None:
        data = data[: int(len(data) * cut)]  # a truncated or empty download
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"image.{file_format.lower()}"
        path.write_bytes(data)
        try:
            images = load_user_images([path], channels=channels, size=32)
        except ImageLoadError as error:
            assert str(path) in str(error)
            return
    assert images.dtype == torch.uint8 and tuple(images.shape) == (1, channels, 32, 32)
