"""Decoder likelihoods p(x | z) over quantized pixels: each gives a log *mass* per sub-pixel.

Every likelihood models images on the discrete scale ``[0, 1]`` with ``2**n_bits`` levels
(level ``k`` sits at ``k / (2**n_bits - 1)``), so its log probability is already a log mass and
bits/dim from :func:`dgmood.models.base.bits_per_dim` compares across model families.

Decoder outputs arrive as ``params`` of shape ``[N, C, P, H, W]`` with ``P =
params_per_subpixel`` numbers per sub-pixel; images ``x`` have shape ``[N, C, H, W]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmood.models.base import InputSpec
from dgmood.nn.distributions import discretized_logistic_log_mass


class PixelLikelihood(nn.Module, ABC):
    """A factorised distribution over the quantized levels of every sub-pixel."""

    params_per_subpixel: int
    n_bits: int

    @property
    def n_levels(self) -> int:
        result: int = 2**self.n_bits
        return result

    def input_spec(self, shape: tuple[int, int, int]) -> InputSpec:
        """The :class:`InputSpec` of a model using this likelihood on images of ``shape``."""
        return InputSpec(shape, n_bits=self.n_bits, low=0.0, high=1.0, discrete=True)

    def level_values(self, like: Tensor) -> Tensor:
        """The ``n_levels`` values of the support, ``k / (n_levels - 1)``, in ``like``'s dtype.

        Computed exactly as :func:`dgmood.data.dequantize.to_model_input` does, so a level
        read from data and the same level here are the same number.
        """
        levels = torch.arange(self.n_levels, dtype=like.dtype, device=like.device)
        return levels / (self.n_levels - 1)

    def level_index(self, x: Tensor) -> Tensor:
        """Integer level ``0 .. n_levels - 1`` of each value of ``x`` on the ``[0, 1]`` scale."""
        return torch.round(x * (self.n_levels - 1)).clamp(0, self.n_levels - 1).long()

    @abstractmethod
    def log_mass(self, params: Tensor, x: Tensor) -> Tensor:
        """log P(x | params) per sub-pixel, shape ``[N, C, H, W]``."""

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log P(x | params) per image (sum over sub-pixels), shape ``[N]``."""
        return self.log_mass(params, x).flatten(1).sum(-1)

    def level_log_masses(self, params: Tensor) -> Tensor:
        """log P(level k) for every level, shape ``[N, C, n_levels, H, W]``."""
        n, c, _, h, w = params.shape
        masses = []
        for value in self.level_values(params):
            x = value.expand(n, c, h, w)
            masses.append(self.log_mass(params, x))
        return torch.stack(masses, dim=2)

    def mean(self, params: Tensor) -> Tensor:
        """Expected value of every sub-pixel on the ``[0, 1]`` scale, shape ``[N, C, H, W]``."""
        probs = self.level_log_masses(params).exp()
        return (probs * self.level_values(probs)[:, None, None]).sum(2)

    def mode(self, params: Tensor) -> Tensor:
        """Most probable level of every sub-pixel on the ``[0, 1]`` scale."""
        return self.level_values(params)[self.level_log_masses(params).argmax(2)]

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw per sub-pixel (inverse CDF, so a seeded ``generator`` reproduces it)."""
        probs = self.level_log_masses(params).exp()
        cdf = probs.cumsum(2)
        shape = cdf[:, :, :1].shape
        uniform = torch.rand(shape, generator=generator, dtype=cdf.dtype).to(cdf.device)
        index = (cdf < uniform * cdf[:, :, -1:]).sum(2).clamp(max=self.n_levels - 1)
        return self.level_values(params)[index]


class BernoulliLikelihood(PixelLikelihood):
    """Independent Bernoulli per sub-pixel on binarised images (levels 0 and 1).

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    """

    params_per_subpixel = 1  # logit of P(pixel = 1)
    n_bits = 1

    def log_mass(self, params: Tensor, x: Tensor) -> Tensor:
        logits = params[:, :, 0]
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")


class CategoricalLikelihood(PixelLikelihood):
    """A 256-way softmax per sub-pixel.

    References:
        van den Oord et al., "Pixel Recurrent Neural Networks", ICML 2016.
    """

    n_bits = 8
    params_per_subpixel = 2**n_bits  # one logit per level

    def level_log_masses(self, params: Tensor) -> Tensor:
        return torch.log_softmax(params, dim=2)

    def log_mass(self, params: Tensor, x: Tensor) -> Tensor:
        log_probs = torch.log_softmax(params, dim=2)
        index = self.level_index(x).unsqueeze(2)
        return log_probs.gather(2, index).squeeze(2)


class DiscretizedLogisticLikelihood(PixelLikelihood):
    """One logistic per sub-pixel, integrated over each of the 256 bins.

    The first and last bins absorb the tails, ``(-inf, edge]`` and ``[edge, inf)``, so the
    masses sum to one. Computed by
    :func:`dgmood.nn.distributions.discretized_logistic_log_mass`, shared with PixelCNN++.

    References:
        Salimans et al., "PixelCNN++", ICLR 2017; Kingma et al., "Improved Variational
        Inference with Inverse Autoregressive Flow", NeurIPS 2016.
    """

    params_per_subpixel = 2  # location on the [0, 1] scale, log scale
    n_bits = 8
    min_log_scale = -10.0  # keeps 1 / scale finite; far below one bin's width (log 1/255 = -5.5)

    def log_mass(self, params: Tensor, x: Tensor) -> Tensor:
        location = params[:, :, 0]
        log_scale = params[:, :, 1].clamp(min=self.min_log_scale)
        return discretized_logistic_log_mass(
            x, location, log_scale, low=0.0, high=1.0, n_levels=self.n_levels
        )


LIKELIHOODS: dict[str, type[PixelLikelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "categorical": CategoricalLikelihood,
    "logistic": DiscretizedLogisticLikelihood,
}
