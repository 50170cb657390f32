"""The discretized logistic: a logistic integrated over the bins of quantized pixel values.

One implementation, used by PixelCNN++ (as the components of its mixture, on ``[-1, 1]``) and
by the VAE decoder (on ``[0, 1]``). Everything is computed in log space, so tiny bin masses
keep full relative precision: no small-probability fallback is needed.

References:
    Salimans et al. 2017, "PixelCNN++: Improving the PixelCNN with Discretized Logistic
    Mixture Likelihood and Other Modifications", ICLR (https://arxiv.org/abs/1701.05517);
    Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS; Maechler 2012, "Accurately Computing log(1 - exp(-|a|))".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def log1mexp(a: Tensor) -> Tensor:
    """``log(1 - exp(-a))`` for ``a > 0``, accurate for small and large ``a``.

    References:
        Maechler, "Accurately Computing log(1 - exp(-|a|))", 2012.
    """
    return torch.where(a < math.log(2.0), torch.log(-torch.expm1(-a)), torch.log1p(-torch.exp(-a)))


_TINY_LOG_WIDTH = -20.0  # below, log(1 - exp(-w)) = log(w) - w/2 + O(w^2) is log(w) in float


def _log1mexp_of_width(log_scale: Tensor, bin_width: float) -> Tensor:
    """``log(1 - exp(-w))`` of the bin width in scale units, ``w = bin_width / scale``.

    For a very wide logistic, ``w`` underflows to 0 (log(0) = -inf); ``log w`` computed from
    ``log_scale`` stays exact there, so a mass that tiny is a very negative number, never
    -inf: an image far from anything a model has seen gets a finite, extreme log p.
    """
    log_width = math.log(bin_width) - log_scale
    tiny = log_width < _TINY_LOG_WIDTH
    width = torch.exp(-log_scale) * bin_width
    # the branch not taken gets a harmless value, so its gradient is not NaN
    regular = log1mexp(torch.where(tiny, torch.ones_like(width), width))
    return torch.where(tiny, log_width, regular)


def discretized_logistic_log_mass(
    x: Tensor,
    mean: Tensor,
    log_scale: Tensor,
    *,
    low: float,
    high: float,
    n_levels: int,
) -> Tensor:
    """Log mass of the bin of ``x`` under a logistic(``mean``, ``exp(log_scale)``); broadcasts.

    The ``n_levels`` levels lie evenly on ``[low, high]`` and each owns the interval of one
    level spacing around it. The lowest level's bin extends to -inf and the highest's to
    +inf, so the masses of all levels sum to one. An interior bin ``(a, b]`` uses
    ``sigmoid(b) - sigmoid(a) = sigmoid(b) sigmoid(-a) (1 - exp(-(b - a)))``, whose three
    factors are each computed in log space without cancellation.

    References:
        Salimans et al. 2017, PixelCNN++, section 2.1.
    """
    bin_width = (high - low) / (n_levels - 1)
    inverse_scale = torch.exp(-log_scale)
    centered = x - mean
    upper = inverse_scale * (centered + 0.5 * bin_width)
    lower = inverse_scale * (centered - 0.5 * bin_width)
    log_cdf_upper = F.logsigmoid(upper)  # mass of (-inf, upper]: the lowest level's bin
    log_survival_lower = F.logsigmoid(-lower)  # mass of (lower, inf): the highest level's bin
    # the width in scale units directly, not upper - lower, which cancels for large |x - mean|
    interior = log_cdf_upper + log_survival_lower + _log1mexp_of_width(log_scale, bin_width)
    return torch.where(
        x < low + 0.5 * bin_width,
        log_cdf_upper,
        torch.where(x > high - 0.5 * bin_width, log_survival_lower, interior),
    )
