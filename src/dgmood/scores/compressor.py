"""The compressor alone: a model-free baseline for every grid of OOD scores.

Input complexity (:mod:`dgmood.scores.complexity`) scores ``S(x) = -log2 p(x)/D - L(x)``
with ``L(x)`` a lossless compressor's length in bits/dim. Replace the generative model by
the uniform distribution over 8-bit images (``-log2 p(x)/D = 8`` for every image) and
``S(x) = 8 - L(x)``: the compressor alone, which ranks images exactly as ``-L(x)``. Simpler
images (shorter codes) score as more OOD, as they do under ``S`` when the model finds every
image equally likely. Comparing ``complexity-<codec>`` with ``compressor-<codec>`` on the
same sets shows how much of input complexity's win is the model's and how much is the
compressor's; on FashionMNIST -> MNIST the PNG length alone is already a strong detector.

These scores look at the images only (:attr:`Score.model_free`): they apply to any run,
density model or classifier, and a benchmark grid shows each of them once per pair of sets,
as the row of a pseudo-model ``none``.

References: Serra, Alvarez, Gomez, Slizovskaia, Nunez & Luque, "Input complexity and
out-of-distribution detection with likelihood-based generative models", ICLR 2020
(Section 4: S as a likelihood ratio against a universal compressor).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from dgmood.scores.base import Score, ScoreInput, register_score
from dgmood.scores.complexity import _COMPRESSORS, CODECS, compressed_bits_per_dim

MODEL_FREE_MODEL = "none"  # the model column of a model-free score's row in a grid


class CompressorLength(Score):
    """Base of ``compressor-<codec>``: minus the compressed length, no model."""

    codec: ClassVar[str]
    model_free = True

    def score(self, data: ScoreInput) -> np.ndarray:
        return -compressed_bits_per_dim(data.images, self.codec)


def _register_compressor_scores() -> None:
    """Register ``compressor-<codec>`` for every codec of :data:`CODECS` (one class each, so
    that ``dgmood scores`` lists each with its summary and reference)."""
    for codec_name in CODECS:
        compressor, references = _COMPRESSORS[codec_name]

        @register_score
        class Compressor(CompressorLength):
            __doc__ = (
                f"Minus the {compressor} length in bits/dim; no model (a model-free "
                f"baseline).\n\nReferences: {references}"
            )
            name = f"compressor-{codec_name}"
            codec = codec_name

        Compressor.__name__ = Compressor.__qualname__ = f"CompressorLength[{codec_name}]"


_register_compressor_scores()
