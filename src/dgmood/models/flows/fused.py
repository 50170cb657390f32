"""Evaluation-time fusion: actnorm followed by an invertible 1x1 conv as one convolution.

``W ((x + b) * s) = (W diag(s)) x + W (b * s)`` and ``log|det| = H W (sum log s + log|det W|)``,
so the pair costs one pass over the activations instead of two. The folded weight, bias and
log-determinant are cached (:mod:`dgmood.nn.eval_cache`) and rebuilt when a parameter changes.
In training, gradients flow through the (C x C) folding to the original parameters; the
result equals the unfolded pair to round-off (:class:`~dgmood.models.flows.bijection.Compose`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dgmood.models.flows.actnorm import ActNorm
from dgmood.models.flows.bijection import Bijection, spatial_size
from dgmood.models.flows.conv1x1 import InvertibleConv1x1, mix_channels
from dgmood.nn.eval_cache import eval_cached


def fold_actnorm_conv(actnorm: ActNorm, conv: InvertibleConv1x1) -> tuple[Tensor, Tensor, Tensor]:
    """``(weight [C, C], bias [C], log|det| per pixel)`` of ``conv(actnorm(x))``."""
    scale = torch.exp(actnorm.layer.log_scale).flatten()
    shift = actnorm.layer.bias.flatten() * scale
    matrix = conv.matrix()
    weight = matrix * scale[None, :]
    bias = matrix @ shift
    log_det = actnorm.layer.log_scale.sum() + conv.log_abs_det()
    return weight, bias, log_det


def _folded(actnorm: ActNorm, conv: InvertibleConv1x1) -> tuple[Tensor, Tensor, Tensor]:
    sources = [*actnorm.parameters(), *conv.sources()]
    return eval_cached(conv, "folded_actnorm", sources, lambda: fold_actnorm_conv(actnorm, conv))


def fused_forward(steps: Sequence[Bijection], x: Tensor) -> tuple[Tensor, Tensor]:
    """``steps`` applied in order, each (actnorm, 1x1 conv) pair as one cached conv."""
    total = x.new_zeros(x.shape[0])
    i = 0
    while i < len(steps):
        step = steps[i]
        following = steps[i + 1] if i + 1 < len(steps) else None
        if (
            isinstance(step, ActNorm)
            and isinstance(following, InvertibleConv1x1)
            # in training, the first pass initialises actnorm from its unfolded input
            and (not step.training or step.layer.ready)
        ):
            weight, bias, log_det = _folded(step, following)
            x = mix_channels(x, weight, bias)
            total = total + spatial_size(x) * log_det
            i += 2
            continue
        x, log_abs_det_jacobian = step(x)
        total = total + log_abs_det_jacobian
        i += 1
    return x, total


class FoldedActNormConv(Bijection):
    """An (actnorm, 1x1 conv) pair as one bijection: one conv forward, both inverses back.

    Built on the fly around a model's own layers (it holds no parameters of its own), so that
    step-by-step procedures such as memory-light backprop get the folded forward too.
    """

    def __init__(self, actnorm: ActNorm, conv: InvertibleConv1x1) -> None:
        super().__init__()
        self.actnorm = actnorm
        self.conv = conv

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.actnorm.training and not self.actnorm.layer.ready:
            h, log_det_norm = self.actnorm(x)  # data-dependent init sees the real input
            z, log_det_conv = self.conv(h)
            return z, log_det_norm + log_det_conv
        weight, bias, log_det = _folded(self.actnorm, self.conv)
        z = mix_channels(x, weight, bias)
        return z, (spatial_size(x) * log_det).expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        h, log_det_conv = self.conv.inverse(z)
        x, log_det_norm = self.actnorm.inverse(h)
        return x, log_det_conv + log_det_norm


def fold_pairs(steps: Sequence[Bijection]) -> list[Bijection]:
    """``steps`` with every (actnorm, invertible 1x1 conv) pair as one folded bijection."""
    out: list[Bijection] = []
    i = 0
    while i < len(steps):
        step = steps[i]
        following = steps[i + 1] if i + 1 < len(steps) else None
        if isinstance(step, ActNorm) and isinstance(following, InvertibleConv1x1):
            out.append(FoldedActNormConv(step, following))
            i += 2
        else:
            out.append(step)
            i += 1
    return out
