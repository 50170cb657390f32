"""The contracts every model honours.

A density model maps an image on its *continuous input scale* to a per-sample log density
(or, for discrete models such as PixelCNN++, a log probability mass) together with a
per-sample breakdown of that number. Turning uint8 pixels into that scale, and the
resulting change of units, lives in :mod:`dgmood.data.dequantize`; bits per dimension is
derived in exactly one place, :func:`dgmood.models.base.bits_per_dim`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input, and how uint8 pixels map onto it.

    A uint8 pixel ``k`` (reduced to ``n_bits``) maps to ``low + (k + u) / 2**n_bits * (high - low)``
    for continuous models (``u`` is the dequantization offset), and to
    ``low + k / (2**n_bits - 1) * (high - low)`` for discrete ones.
    """

    shape: tuple[int, int, int]  # (channels, height, width) of one image
    n_bits: int = 8  # bit depth the model sees; 8 = all 256 levels
    low: float = -0.5  # lower end of the continuous input range
    high: float = 0.5  # upper end of the continuous input range
    discrete: bool = False  # True: log_prob is already a log mass over the 2**n_bits levels

    @property
    def num_dims(self) -> int:
        """Number of scalar dimensions D of one image."""
        c, h, w = self.shape
        return c * h * w

    @property
    def n_levels(self) -> int:
        return 2**self.n_bits

    def log_bin_volume(self) -> float:
        """log of the volume of one quantization bin on the continuous scale, for all D dims.

        ``log P(k) ~= log p(x) + log_bin_volume()``: the scaling term of bits/dim.
        Zero for discrete models, whose log_prob is already a mass.
        """
        if self.discrete:
            return 0.0
        return self.num_dims * math.log((self.high - self.low) / self.n_levels)


def bits_per_dim(log_prob: Tensor, spec: InputSpec) -> Tensor:
    """Bits per dimension of the discrete (quantized) data, per sample.

    ``bpd = -(log p(x) + D log(bin width)) / (D ln 2)``; for inputs scaled to [-0.5, 0.5)
    with 256 levels this is the familiar ``-(log p(x) - D log 256) / (D ln 2)``.
    With uniform dequantization noise its expectation is an upper bound on the true
    discrete bits/dim (Theis et al. 2016), which is how published numbers are reported.
    """
    return -(log_prob + spec.log_bin_volume()) / (spec.num_dims * math.log(2.0))


class DensityModel(nn.Module, ABC):
    """A model of p(x) on images.

    Subclasses set ``input_spec`` and implement :meth:`log_prob_terms`, which returns a dict
    of per-sample tensors of shape ``[batch]`` that always contains ``"log_prob"`` plus the
    model family's breakdown (flows: ``"log_pz"`` density term and ``"log_abs_det_jacobian"``
    volume term; VAEs: ``"reconstruction"`` and ``"kl"``).
    """

    input_spec: InputSpec
    # True when log_prob_terms draws random numbers (a VAE's sampled ELBO): scoring then
    # gives each image its own seeded generator (seeded_log_prob_terms), so that an image's
    # score depends neither on the batch nor on its position among the inputs
    stochastic_log_prob: ClassVar[bool] = False

    @abstractmethod
    def log_prob_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Per-sample log density of ``x`` (continuous input scale) and its breakdown."""

    def seeded_log_prob_terms(
        self, x: Tensor, generators: Sequence[torch.Generator], iwae_k: int = 0
    ) -> dict[str, Tensor]:
        """:meth:`log_prob_terms` with image ``b``'s random draws from ``generators[b]``
        alone (``iwae_k > 0``: also ``"iwae_log_prob"``). Models with ``stochastic_log_prob``
        override it; the others draw nothing."""
        if iwae_k > 0:
            raise ValueError(f"{type(self).__name__} has no importance-weighted bound (IWAE)")
        return self.log_prob_terms(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """Per-sample log density (or log mass, for discrete models) of ``x``."""
        return self.log_prob_terms(x)["log_prob"]

    def training_loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss in bits/dim to minimise, and per-sample terms for logging.

        The default is the negative log-likelihood; models whose training objective differs
        (e.g. a VAE with KL warm-up) override this.
        """
        terms = self.log_prob_terms(x)
        bpd = bits_per_dim(terms["log_prob"], self.input_spec)
        return bpd.mean(), terms

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """Draw ``n`` samples on the continuous input scale (optional for a family)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sampling")


class Classifier(nn.Module, ABC):
    """A classifier p(y | x) that also exposes its penultimate features (for Mahalanobis)."""

    input_spec: InputSpec
    num_classes: int

    @abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features, shape ``[batch, feature_dim]``."""

    @abstractmethod
    def head(self, features: Tensor) -> Tensor:
        """Logits from features, shape ``[batch, num_classes]``."""

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        accuracy = (logits.argmax(-1) == y).float()
        return loss, {"accuracy": accuracy}
