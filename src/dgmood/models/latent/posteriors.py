"""Approximate posteriors q(z | x) over a latent vector, from encoder features.

A posterior draws reparameterised latents together with their log density,
``rsample_and_log_prob(features, n_samples) -> (z [S, B, L], log_q [S, B])``, and knows its
KL divergence to the standard normal prior: analytic where it exists, otherwise the
single-sample estimate ``log q(z | x) - log p(z)`` at the drawn ``z``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.square() + math.log(2.0 * math.pi)).sum(-1)


# one generator for the whole draw, or one per image (column b of a [S, B, L] draw)
Generators = torch.Generator | Sequence[torch.Generator] | None


def standard_normal_noise(
    shape: tuple[int, ...], like: Tensor, generator: Generators = None
) -> Tensor:
    """Seeded N(0, I) noise with ``like``'s dtype and device (drawn on the generator's device).

    With one generator per image (a sequence of ``B`` for a ``[S, B, L]`` shape), image
    ``b``'s ``S x L`` values come from ``generator[b]`` alone, drawn at once: an image's draws
    do not depend on the other images of the batch.
    """
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    if isinstance(generator, torch.Generator):
        noise = torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device)
        return noise.to(like.device)
    if len(shape) != 3 or shape[1] != len(generator):
        raise ValueError(f"one generator per image needs a [S, B, L] shape, got {shape}")
    columns = [
        torch.randn((shape[0], shape[2]), generator=g, dtype=like.dtype, device=g.device)
        for g in generator
    ]
    return torch.stack(columns, dim=1).to(like.device)


class LatentPosterior(nn.Module, ABC):
    """q(z | x) over ``latent_dim`` dimensions, computed from encoder features ``[B, F]``."""

    latent_dim: int

    @abstractmethod
    def transform_noise(self, features: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Standard normal ``noise [S, B, L]`` -> latents ``z [S, B, L]`` and ``log_q [S, B]``."""

    @abstractmethod
    def location(self, features: Tensor) -> Tensor:
        """A deterministic point of q(z | x) (the image of zero noise), shape ``[B, L]``."""

    def rsample_and_log_prob(
        self, features: Tensor, n_samples: int = 1, generator: Generators = None
    ) -> tuple[Tensor, Tensor]:
        """``n_samples`` reparameterised latents per image and their log density under q."""
        shape = (n_samples, features.shape[0], self.latent_dim)
        noise = standard_normal_noise(shape, features, generator)
        return self.transform_noise(features, noise)

    def kl_to_prior(self, features: Tensor, z: Tensor, log_q: Tensor) -> Tensor:
        """KL(q(z | x) || N(0, I)) estimated at the drawn ``z``, shape ``[S, B]``."""
        return log_q - standard_normal_log_prob(z)


class GaussianPosterior(LatentPosterior):
    """Diagonal Gaussian q(z | x) = N(mu(x), diag(sigma(x)^2)), with analytic KL.

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    """

    def __init__(self, feature_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.to_mean_and_log_std = nn.Linear(feature_dim, 2 * latent_dim)

    #: bound on |log sigma|: sigma in [2e-9, 5e8], far outside what training reaches, so that
    #: exp(2 log sigma) in the KL and the sampled z stay finite for any input
    max_abs_log_std = 20.0

    def mean_and_log_std(self, features: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.to_mean_and_log_std(features).chunk(2, dim=-1)
        bound = self.max_abs_log_std
        return mean, log_std.clamp(-bound, bound)

    def transform_noise(self, features: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.mean_and_log_std(features)
        z = mean + log_std.exp() * noise
        log_q = standard_normal_log_prob(noise) - log_std.sum(-1)
        return z, log_q

    def location(self, features: Tensor) -> Tensor:
        return self.mean_and_log_std(features)[0]

    def analytic_kl(self, features: Tensor) -> Tensor:
        """KL(N(mu, sigma^2) || N(0, I)) in closed form, shape ``[B]``."""
        mean, log_std = self.mean_and_log_std(features)
        return 0.5 * (mean.square() + (2 * log_std).exp() - 1.0 - 2 * log_std).sum(-1)

    def kl_to_prior(self, features: Tensor, z: Tensor, log_q: Tensor) -> Tensor:
        return self.analytic_kl(features).expand_as(log_q)


class AffineCoupling(nn.Module):
    """RealNVP affine coupling on a vector: ``z[~mask] * exp(s) + t``, ``(s, t)`` from
    ``z[mask]`` and a context vector. Starts as the identity (zero-initialised output layer).

    References:
        Dinh et al., "Density estimation using Real NVP", ICLR 2017.
    """

    max_log_scale = 3.0  # soft bound on |log scale| per step; keeps exp(s) from overflowing

    mask: Tensor

    def __init__(self, mask: Tensor, context_dim: int, hidden_dim: int) -> None:
        super().__init__()
        dim = mask.numel()
        self.register_buffer("mask", mask.float())
        self.conditioner = nn.Sequential(
            nn.Linear(dim + context_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, 2 * dim),
        )
        last = self.conditioner[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def _shift_and_log_scale(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw_log_scale = self.conditioner(torch.cat([z * self.mask, context], -1)).chunk(
            2, -1
        )
        log_scale = self.max_log_scale * torch.tanh(raw_log_scale / self.max_log_scale)
        transformed = 1.0 - self.mask
        return shift * transformed, log_scale * transformed

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """``(z', log|det dz'/dz|)`` with ``log_abs_det_jacobian`` of shape ``[N]``."""
        shift, log_scale = self._shift_and_log_scale(z, context)
        return z * log_scale.exp() + shift, log_scale.sum(-1)

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dz'|)``: undoes :meth:`forward` (the masked half is unchanged)."""
        shift, log_scale = self._shift_and_log_scale(z, context)
        return (z - shift) * (-log_scale).exp(), -log_scale.sum(-1)


class RealNVPPosterior(LatentPosterior):
    """A diagonal Gaussian pushed through affine couplings with alternating masks, each
    conditioned on a context vector from the encoder. The KL is the single-sample estimate.

    References:
        Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015;
        Dinh et al., "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(
        self, feature_dim: int, latent_dim: int, n_flows: int, hidden_dim: int, context_dim: int
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.base = GaussianPosterior(feature_dim, latent_dim)
        self.to_context = nn.Sequential(nn.Linear(feature_dim, context_dim), nn.SiLU())
        parity = torch.arange(latent_dim) % 2
        self.couplings = nn.ModuleList(
            AffineCoupling(parity == step % 2, context_dim, hidden_dim) for step in range(n_flows)
        )

    def _flow(self, z: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        n_samples, batch, dim = z.shape
        context = self.to_context(features).expand(n_samples, -1, -1).reshape(n_samples * batch, -1)
        z = z.reshape(n_samples * batch, dim)
        total_log_abs_det_jacobian = z.new_zeros(n_samples * batch)
        for coupling in self.couplings:
            z, log_abs_det_jacobian = coupling(z, context)
            total_log_abs_det_jacobian = total_log_abs_det_jacobian + log_abs_det_jacobian
        return z.view(n_samples, batch, dim), total_log_abs_det_jacobian.view(n_samples, batch)

    def transform_noise(self, features: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        z, log_q = self.base.transform_noise(features, noise)
        z, log_abs_det_jacobian = self._flow(z, features)
        return z, log_q - log_abs_det_jacobian

    def location(self, features: Tensor) -> Tensor:
        return self._flow(self.base.location(features).unsqueeze(0), features)[0].squeeze(0)
