"""Input complexity: a constant image compresses to ~0 bits, noise to ~8 bits per dimension."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from dgmood.scores.base import ScoreInput, make_score
from dgmood.scores.complexity import CODECS, compressed_bits_per_dim

MakeInput = Callable[..., ScoreInput]


def _constant_and_noise(channels: int) -> torch.Tensor:
    constant = torch.full((1, channels, 32, 32), 200, dtype=torch.uint8)
    noise = torch.randint(0, 256, (1, channels, 32, 32), generator=torch.Generator().manual_seed(0))
    return torch.cat([constant, noise.to(torch.uint8)])


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("channels", [1, 3])
def test_constant_costs_nothing_and_noise_about_eight_bits(codec: str, channels: int) -> None:
    constant, noise = compressed_bits_per_dim(_constant_and_noise(channels), codec)
    assert abs(constant) < 0.1  # a few bytes for the level itself
    assert 7.5 < noise < 10.0


@pytest.mark.parametrize(
    "name", ["complexity-png", "complexity-jp2", "complexity-webp", "complexity-jxl"]
)
def test_score_subtracts_complexity_from_bits_per_dim(name: str, make_input: MakeInput) -> None:
    images = _constant_and_noise(1)
    # the model finds both equally likely: the simple image is the suspicious one
    scores = make_score(name).score(
        make_input({"bits_per_dim": np.array([4.0, 4.0])}, images=images)
    )
    assert scores[0] > scores[1]
    assert scores[0] == pytest.approx(4.0, abs=0.1)


def test_wrong_images_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match="uint8"):
        compressed_bits_per_dim(torch.zeros(1, 2, 8, 8, dtype=torch.uint8), "png")
    with pytest.raises(ValueError, match="unknown codec"):
        compressed_bits_per_dim(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "gif")


def test_every_new_score_is_registered_with_a_reference() -> None:
    from dgmood.scores.base import score_class, score_names

    names = set(score_names())
    new = {"likelihood-ratio", "typicality", "waic", "likelihood-regret", "dose"}
    assert new | {f"complexity-{codec}" for codec in CODECS} <= names
    for name in new:
        assert score_class(name).references()


def _encoded_size(codec: str, array: np.ndarray) -> int:
    """Bytes of ``array`` compressed by the codec's library directly (not dgmood's wrapper)."""
    if codec == "jxl":
        import imagecodecs

        return len(imagecodecs.jpegxl_encode(array, lossless=True, effort=5))
    buffer = io.BytesIO()
    options: dict[str, dict[str, object]] = {
        "png": {"format": "PNG", "optimize": True, "compress_level": 9},
        "jp2": {"format": "JPEG2000", "irreversible": False},
        "webp": {"format": "WEBP", "lossless": True, "quality": 100, "method": 4},
    }
    Image.fromarray(array).save(buffer, **options[codec])  # type: ignore[arg-type]
    return len(buffer.getvalue())


def _decoded(codec: str, data: bytes) -> np.ndarray:
    if codec == "jxl":
        import imagecodecs

        return np.asarray(imagecodecs.jpegxl_decode(data))
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_codec_is_lossless(codec: str, channels: int) -> None:
    """L(x) is a lossless length only if decoding gives back every pixel exactly."""
    generator = torch.Generator().manual_seed(channels)
    image = torch.randint(0, 256, (channels, 32, 32), generator=generator, dtype=torch.uint8)
    image[:, 8:24, 8:24] //= 16  # smooth and noisy regions, like real content
    array = image[0].numpy() if channels == 1 else image.permute(1, 2, 0).contiguous().numpy()
    decoded = _decoded(codec, CODECS[codec](array))
    if channels == 1 and decoded.ndim == 3:  # WebP stores gray as RGB with equal channels
        decoded = np.stack([decoded[..., 0], decoded[..., 1], decoded[..., 2]])
        array = np.stack([array] * 3)
    np.testing.assert_array_equal(decoded, array)


def test_each_complexity_score_compresses_with_its_own_codec(make_input: MakeInput) -> None:
    generator = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, (3, 1, 32, 32), generator=generator).to(torch.uint8)
    images = torch.cat([noise // 4 * 4, noise])  # coarser and finer content
    bits_per_dim = np.array([4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    zeros = np.zeros((32, 32), dtype=np.uint8)
    lengths = {
        codec: np.array(
            [
                8.0 * (_encoded_size(codec, a) - _encoded_size(codec, zeros)) / a.size
                for a in images[:, 0].numpy()
            ]
        )
        for codec in CODECS
    }
    # the codecs give different lengths on these images, so the check tells them apart
    assert len({tuple(v) for v in lengths.values()}) == len(CODECS)
    for codec, length in lengths.items():
        np.testing.assert_array_equal(compressed_bits_per_dim(images, codec), length, codec)
        scores = make_score(f"complexity-{codec}").score(
            make_input({"bits_per_dim": bits_per_dim}, images=images)
        )
        np.testing.assert_array_equal(scores, bits_per_dim - length, err_msg=codec)


def test_complexity_scores_are_listed_by_name_compressor_and_reference() -> None:
    """What `dgmood scores` shows for them (one generated class per codec)."""
    from dgmood.scores.base import score_class, score_names

    serra = (
        'Serra et al., "Input complexity and out-of-distribution detection with likelihood-'
        'based generative models", ICLR 2020.'
    )
    later = "Serra et al., ICLR 2020 (the compressor is a later lossless codec)."
    listing = {
        name: (score_class(name).summary(), score_class(name).references())
        for name in score_names()
        if name.startswith("complexity-")
    }
    assert listing == {
        "complexity-png": ("Bits/dim minus the PNG (deflate, level 9) length in bits/dim.", serra),
        "complexity-jp2": ("Bits/dim minus the lossless JPEG 2000 length in bits/dim.", serra),
        "complexity-webp": ("Bits/dim minus the lossless WebP length in bits/dim.", later),
        "complexity-jxl": (
            "Bits/dim minus the lossless JPEG XL (effort 5) length in bits/dim.",
            later,
        ),
    }
    assert list(listing) == [
        "complexity-png",
        "complexity-jp2",
        "complexity-webp",
        "complexity-jxl",
    ]
