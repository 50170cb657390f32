"""Base distributions, factoring-out (split) and the multiscale flow density model.

``log p(x) = log p(z) + log|det df/dx|``: the *density term* ``log p(z)`` collects the base
log-density of every latent (the factored-out ones under their priors, and the top one),
the *volume term* every bijection's log-determinant. Both are reported per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dgmood.models.base import DensityModel, InputSpec
from dgmood.models.flows.bijection import Bijection, Compose, sum_except_batch
from dgmood.nn.layers import ZeroConv2d

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Per-sample log N(z; mean, exp(log_std)^2), summed over all but the batch dim."""
    return sum_except_batch(
        -0.5 * (LOG_2PI + 2 * log_std + ((z - mean) * torch.exp(-log_std)) ** 2)
    )


class Prior(nn.Module):
    """A diagonal Gaussian over latents: ``params(like, context) -> (mean, log_std)``."""

    def params(self, like: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class StandardNormalPrior(Prior):
    """N(0, I), ignoring any context."""

    def params(self, like: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(like), torch.zeros_like(like)


class LearnedPrior(Prior):
    """Gaussian with a learned per-channel mean and log-std (Glow's ``learntop``)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.log_std = nn.Parameter(torch.zeros(1, num_channels, 1, 1))

    def params(self, like: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.mean.expand_as(like), self.log_std.expand_as(like)


class ConditionalPrior(Prior):
    """Gaussian whose mean and log-std come from the kept half through a zero-init conv.

    References: Kingma & Dhariwal, 2018 (``split2d_prior``).
    """

    def __init__(self, context_channels: int, num_channels: int) -> None:
        super().__init__()
        self.net = ZeroConv2d(context_channels, 2 * num_channels)

    def params(self, like: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError("ConditionalPrior needs the kept half as context")
        h = self.net(context)
        return h[:, 0::2], h[:, 1::2]


class Split(nn.Module):
    """Factor out the last ``floor(C/2)`` channels as latents with a (conditional) prior."""

    def __init__(self, num_channels: int, prior: Prior) -> None:
        super().__init__()
        self.keep = num_channels - num_channels // 2
        self.prior: Prior = prior

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(kept, factored_out, log p(factored_out | kept))``."""
        kept, factored = h[:, : self.keep], h[:, self.keep :]
        mean, log_std = self.prior.params(factored, kept)
        # a prior network run under bf16 autocast still gives a float32 log-density
        mean, log_std = mean.to(factored.dtype), log_std.to(factored.dtype)
        return kept, factored, gaussian_log_prob(factored, mean, log_std)


class MultiscaleFlow(DensityModel):
    """``levels[i]`` bijections, each followed by a split except the last, then a top prior.

    References: Dinh et al., "Density estimation using Real NVP", 2017; Kingma & Dhariwal,
    "Glow", 2018.
    """

    # bf16-safe (its family spec says so): under bf16 autocast only the networks drop
    # precision; 1x1 convs, coupling transforms, log-determinants and prior log-densities stay
    # float32 (docs/RESULTS.md, Speed)

    def __init__(
        self,
        input_spec: InputSpec,
        levels: Sequence[Bijection],
        splits: Sequence[Split],
        top_prior: Prior,
    ) -> None:
        super().__init__()
        if len(splits) != len(levels) - 1:
            raise ValueError("a multiscale flow needs one split between consecutive levels")
        self.input_spec = input_spec
        self.levels = nn.ModuleList(levels)
        self.splits = nn.ModuleList(splits)
        self.top_prior: Prior = top_prior
        self._latent_shapes: list[tuple[int, ...]] | None = None

    def set_memory_light(self, enabled: bool) -> None:
        """Recompute each level's activations in backward instead of storing them.

        Same function, parameters and gradients (to the inverse's round-off); activation
        memory flat in the number of steps, ~1.5-2x the step time. An execution choice of
        the training loop (``execution.memory_light``), not part of the model's config, so a
        run can be resumed with it switched either way.
        """
        for level in self.levels:
            if isinstance(level, Compose):
                level.memory_light = enabled

    def encode(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """``x -> (latents, log p(z), log|det J|)``; latents from first factored to top."""
        latents: list[Tensor] = []
        log_pz = x.new_zeros(x.shape[0])
        log_abs_det_jacobian = x.new_zeros(x.shape[0])
        h = x
        for i, level in enumerate(self.levels):
            h, level_log_det = level(h)
            log_abs_det_jacobian = log_abs_det_jacobian + level_log_det
            if i < len(self.splits):
                h, factored, log_p_factored = self.splits[i](h)
                latents.append(factored)
                log_pz = log_pz + log_p_factored
        mean, log_std = self.top_prior.params(h)
        log_pz = log_pz + gaussian_log_prob(h, mean, log_std)
        latents.append(h)
        return latents, log_pz, log_abs_det_jacobian

    def log_prob_terms(self, x: Tensor) -> dict[str, Tensor]:
        _, log_pz, log_abs_det_jacobian = self.encode(x)
        return {
            "log_prob": log_pz + log_abs_det_jacobian,
            "log_pz": log_pz,
            "log_abs_det_jacobian": log_abs_det_jacobian,
        }

    def decode(self, latents: Sequence[Tensor | None], n: int, temperature: float = 1.0) -> Tensor:
        """Latents (``None`` entries are sampled from their priors) -> x."""
        shapes = self.latent_shapes()
        top = latents[-1]
        if top is None:
            like = torch.zeros(n, *shapes[-1], **self._factory())
            mean, log_std = self.top_prior.params(like)
            top = mean + temperature * torch.exp(log_std) * torch.randn_like(mean)
        h = top
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                factored = latents[i]
                if factored is None:
                    like = torch.zeros(n, *shapes[i], **self._factory())
                    split = self.splits[i]
                    assert isinstance(split, Split)
                    mean, log_std = split.prior.params(like, h)
                    factored = mean + temperature * torch.exp(log_std) * torch.randn_like(mean)
                h = torch.cat([h, factored], dim=1)
            level = self.levels[i]
            assert isinstance(level, Bijection)
            h, _ = level.inverse(h)
        return h

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        return self.decode([None] * len(self.levels), n, temperature)

    def latent_shapes(self) -> list[tuple[int, ...]]:
        """Shapes (without batch) of the latents that :meth:`encode` returns."""
        if self._latent_shapes is None:
            was_training = self.training
            self.eval()
            with torch.no_grad():
                probe = torch.zeros(1, *self.input_spec.shape, **self._factory())
                latents, _, _ = self.encode(probe)
            self.train(was_training)
            self._latent_shapes = [tuple(z.shape[1:]) for z in latents]
        return self._latent_shapes

    def _factory(self) -> dict[str, Any]:
        param = next(self.parameters())
        return {"device": param.device, "dtype": param.dtype}
