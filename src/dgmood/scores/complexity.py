"""Input complexity: bits/dim minus the length a lossless image compressor needs.

References: Serra, Alvarez, Gomez, Slizovskaia, Nunez & Luque, "Input complexity and
out-of-distribution detection with likelihood-based generative models", ICLR 2020.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import cache
from typing import ClassVar

import numpy as np
from PIL import Image
from torch import Tensor

from dgmood.io import progress
from dgmood.scores.base import Score, ScoreInput, register_score
from dgmood.scores.density import negative_log_likelihood

Encoder = Callable[[np.ndarray], bytes]  # uint8 [H, W] or [H, W, 3] -> compressed bytes


def _pillow_encoder(fmt: str, **options: object) -> Encoder:
    def encode(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, fmt, **options)
        return buffer.getvalue()

    return encode


def _jpeg_xl_lossless(image: np.ndarray) -> bytes:
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - a declared dependency
        raise ValueError("complexity-jxl needs imagecodecs: pip install imagecodecs") from None
    return bytes(imagecodecs.jpegxl_encode(image, lossless=True, effort=5))


# every codec is lossless; WebP method 4 and JPEG XL effort 5 compress 32x32 images within
# 0.3% of their slowest settings (method 6, effort 9) at 1/6 to 1/40 of the time
CODECS: dict[str, Encoder] = {
    "png": _pillow_encoder("PNG", optimize=True, compress_level=9),
    "jp2": _pillow_encoder("JPEG2000", irreversible=False),  # reversible 5/3 wavelet
    "webp": _pillow_encoder("WEBP", lossless=True, quality=100, method=4),
    "jxl": _jpeg_xl_lossless,
}


def _as_arrays(images: Tensor) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> ``[N, H, W]`` (gray) or ``[N, H, W, 3]`` (RGB) for the codecs."""
    array = images.numpy()
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(
            f"expected uint8 images [N, 1 or 3, H, W], got {array.dtype} {list(array.shape)}"
        )
    return array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1)


@cache
def _overhead_bytes(codec: str, shape: tuple[int, ...]) -> int:
    """Compressed size of an all-zero image: the codec's headers and container."""
    return len(CODECS[codec](np.zeros(shape, dtype=np.uint8)))


def compressed_bits_per_dim(images: Tensor, codec: str) -> np.ndarray:
    """Lossless compressed length ``L(x)`` of each image in bits per dimension.

    Each uint8 image is compressed exactly as stored (same size and channels as the main
    run's input: 1-channel grayscale or 3-channel RGB). The size of an all-zero image of the
    same shape is subtracted, so that a constant image costs about 0 bits and ``L(x)`` counts
    content, not headers (a constant shift that does not change any ranking).
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {sorted(CODECS)}")
    arrays = _as_arrays(images)
    if len(arrays) == 0:
        return np.zeros(0)
    overhead = _overhead_bytes(codec, arrays.shape[1:])
    encode = CODECS[codec]
    steps = progress(arrays, f"compress {codec}", unit="images")  # 1-2 minutes per model
    sizes = np.array([len(encode(np.ascontiguousarray(a))) for a in steps], dtype=np.float64)
    result: np.ndarray = 8.0 * (sizes - overhead) / arrays[0].size
    return result


def input_complexity_score(
    bits_per_dim: np.ndarray, complexity_bits_per_dim: np.ndarray
) -> np.ndarray:
    """``S(x) = -log2 p(x) / D - L(x)``: likelihood beyond what a generic compressor explains."""
    result: np.ndarray = np.asarray(bits_per_dim, dtype=np.float64) - np.asarray(
        complexity_bits_per_dim
    )
    return result


class InputComplexity(Score):
    """Base of the compressor-specific input-complexity scores."""

    codec: ClassVar[str]
    needs_stats = ("bits_per_dim",)

    def score(self, data: ScoreInput) -> np.ndarray:
        return input_complexity_score(
            negative_log_likelihood(data.stats), compressed_bits_per_dim(data.images, self.codec)
        )


_SERRA = (
    'Serra et al., "Input complexity and out-of-distribution detection with likelihood-based '
    'generative models", ICLR 2020.'
)
_LATER_CODEC = "Serra et al., ICLR 2020 (the compressor is a later lossless codec)."

# codec -> the compressor as `dgmood scores` names it, and what to cite: Serra et al. used
# PNG and JPEG 2000; WebP and JPEG XL are later lossless codecs
_COMPRESSORS = {
    "png": ("PNG (deflate, level 9)", _SERRA),
    "jp2": ("lossless JPEG 2000", _SERRA),
    "webp": ("lossless WebP", _LATER_CODEC),
    "jxl": ("lossless JPEG XL (effort 5)", _LATER_CODEC),
}


def _register_codec_scores() -> None:
    """Register ``complexity-<codec>`` for every codec: the one score above, codec fixed.

    A class per codec, because the registry lists one class per name (with its summary and
    references); the classes differ in nothing but the codec.
    """
    for codec_name in CODECS:
        compressor, references = _COMPRESSORS[codec_name]

        @register_score
        class CodecComplexity(InputComplexity):
            __doc__ = (
                f"Bits/dim minus the {compressor} length in bits/dim.\n\nReferences: {references}"
            )
            name = f"complexity-{codec_name}"
            codec = codec_name

        CodecComplexity.__name__ = CodecComplexity.__qualname__ = f"InputComplexity[{codec_name}]"


_register_codec_scores()
