"""Variational autoencoders under the :class:`DensityModel` contract: ELBO and IWAE bound.

``log_prob`` is the ELBO, a lower bound on the log *mass* of the quantized image (every
decoder likelihood here is discrete), with its breakdown ``reconstruction - kl``;
:meth:`VAE.iwae_log_prob` gives the tighter importance-weighted bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from dgmood.config import DataConfig, ModelConfig
from dgmood.models.base import Capability, DensityModel, FamilySpec, Term, bits_per_dim
from dgmood.models.latent.likelihoods import LIKELIHOODS, PixelLikelihood
from dgmood.models.latent.networks import ConvDecoder, ConvEncoder
from dgmood.models.latent.posteriors import (
    GaussianPosterior,
    Generators,
    LatentPosterior,
    RealNVPPosterior,
    standard_normal_log_prob,
    standard_normal_noise,
)
from dgmood.models.registry import register_family


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    family: ClassVar[str] = "vae"
    latent_dim: int = 32  # size of the latent vector z
    base_channels: int = 32  # conv channels at 32x32 and 16x16; x2 at 8x8, x4 at 4x4
    feature_dim: int = 256  # width of the fully connected layer between encoder convs and q(z|x)
    likelihood: Literal["bernoulli", "categorical", "logistic"] = "logistic"  # p(x|z) per sub-pixel
    posterior: Literal["gaussian", "realnvp"] = "gaussian"  # family of q(z|x)
    n_posterior_flows: int = 4  # affine couplings on z after the Gaussian (posterior="realnvp")
    flow_hidden_dim: int = 128  # width of each coupling's MLP and of its encoder context vector
    n_samples: int = 1  # latent samples per image in the ELBO (training and log_prob)
    beta: float = 1.0  # weight of the KL in the training loss (<1 for warm-up); ELBO always uses 1


class VAE(DensityModel):
    """Conv encoder -> q(z | x) -> conv decoder -> discrete p(x | z), prior p(z) = N(0, I).

    ``log_prob_terms`` returns per-sample ``log_prob`` (= ``elbo``), ``reconstruction``
    (E_q log p(x | z), Monte Carlo over ``n_samples`` latents) and ``kl`` (analytic for a
    Gaussian posterior, the single-sample estimate ``log q - log p`` for a flow posterior).

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014;
        Burda et al., "Importance Weighted Autoencoders", ICLR 2016.
    """

    def __init__(
        self,
        encoder: ConvEncoder,
        posterior: LatentPosterior,
        decoder: ConvDecoder,
        likelihood: PixelLikelihood,
        image_shape: tuple[int, int, int],
        n_samples: int = 1,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.encoder = encoder
        self.posterior = posterior
        self.decoder = decoder
        self.likelihood = likelihood
        self.input_spec = likelihood.input_spec(image_shape)
        self.n_samples = n_samples
        # a plain attribute so a training loop can anneal it (KL warm-up)
        self.beta = beta

    @property
    def latent_dim(self) -> int:
        return self.posterior.latent_dim

    def _check_input(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_spec.shape:
            raise ValueError(
                f"images have shape {tuple(x.shape[1:])}, the VAE expects "
                f"{self.input_spec.shape} (channels, height, width)"
            )

    def encode(self, x: Tensor) -> Tensor:
        """Encoder features ``[B, feature_dim]`` that parameterise q(z | x)."""
        self._check_input(x)
        result: Tensor = self.encoder(x)
        return result

    def decode(self, z: Tensor) -> Tensor:
        """Likelihood parameters ``[N, C, P, H, W]`` of p(x | z) for latents ``[N, L]``."""
        result: Tensor = self.decoder(z)
        return result

    def _reconstruction_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) for latents ``z [S, B, L]``, shape ``[S, B]``."""
        n_samples, batch, latent_dim = z.shape
        params = self.decode(z.reshape(n_samples * batch, latent_dim))
        repeated = x.expand(n_samples, *x.shape).reshape(n_samples * batch, *x.shape[1:])
        return self.likelihood.log_prob(params, repeated).view(n_samples, batch)

    def log_prob_terms(
        self, x: Tensor, n_samples: int | None = None, generator: Generators = None
    ) -> dict[str, Tensor]:
        """Per-sample ELBO and its breakdown; ``n_samples`` defaults to the config's.

        ``generator``: one for the batch, or one per image (see
        :func:`~dgmood.models.latent.posteriors.standard_normal_noise`).
        """
        features = self.encode(x)
        z, log_q = self.posterior.rsample_and_log_prob(
            features, n_samples or self.n_samples, generator
        )
        reconstruction = self._reconstruction_log_prob(x, z).mean(0)
        kl = self.posterior.kl_to_prior(features, z, log_q).mean(0)
        elbo = reconstruction - kl
        return {"log_prob": elbo, "elbo": elbo, "reconstruction": reconstruction, "kl": kl}

    def network_evaluations(self) -> int:
        """The encoder once and the decoder for each of the ``n_samples`` latents."""
        return 1 + self.n_samples

    def iwae_log_prob(
        self,
        x: Tensor,
        k: int,
        max_decoded_images: int = 128,
        generator: Generators = None,
    ) -> Tensor:
        """Importance-weighted bound ``log (1/k) sum_i p(x, z_i) / q(z_i | x)``, shape ``[B]``.

        The ``k`` samples are decoded in chunks of at most ``max_decoded_images`` images, so
        memory does not grow with ``k``. ``k = 1`` is an unbiased single-sample ELBO.

        References:
            Burda et al., "Importance Weighted Autoencoders", ICLR 2016.
        """
        if k < 1:
            raise ValueError(f"the IWAE bound needs k >= 1 importance samples, got {k}")
        features = self.encode(x)
        samples_per_chunk = max(1, max_decoded_images // x.shape[0])
        # one generator per image: all k draws of an image at once, so that they do not
        # depend on the chunking (which depends on the batch size)
        per_image = generator is not None and not isinstance(generator, torch.Generator)
        noise = (
            standard_normal_noise((k, x.shape[0], self.latent_dim), features, generator)
            if per_image
            else None
        )
        chunk_log_sum_exps = []
        for start in range(0, k, samples_per_chunk):
            n_samples = min(samples_per_chunk, k - start)
            if noise is not None:
                z, log_q = self.posterior.transform_noise(
                    features, noise[start : start + n_samples]
                )
            else:
                z, log_q = self.posterior.rsample_and_log_prob(features, n_samples, generator)
            log_weights = self._reconstruction_log_prob(x, z) + standard_normal_log_prob(z) - log_q
            chunk_log_sum_exps.append(torch.logsumexp(log_weights, dim=0))
        return torch.logsumexp(torch.stack(chunk_log_sum_exps), dim=0) - math.log(k)

    def seeded_log_prob_terms(
        self, x: Tensor, generators: Sequence[torch.Generator], iwae_k: int = 0
    ) -> dict[str, Tensor]:
        """:meth:`log_prob_terms` (and the IWAE bound with ``iwae_k`` samples) with image
        ``b``'s latent draws from ``generators[b]`` alone."""
        terms = self.log_prob_terms(x, generator=generators)
        if iwae_k > 0:
            terms["iwae_log_prob"] = self.iwae_log_prob(x, iwae_k, generator=generators)
        return terms

    def training_loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative ``reconstruction - beta * kl`` in bits/dim (the negative ELBO at beta=1)."""
        terms = self.log_prob_terms(x)
        objective = terms["reconstruction"] - self.beta * terms["kl"]
        return bits_per_dim(objective, self.input_spec).mean(), terms

    @torch.no_grad()
    def reconstruct(self, x: Tensor, statistic: Literal["mean", "mode"] = "mean") -> Tensor:
        """Decode the posterior's location: the decoder's mean (or mode) image on [0, 1]."""
        params = self.decode(self.posterior.location(self.encode(x)))
        if statistic == "mean":
            return self.likelihood.mean(params)
        if statistic == "mode":
            return self.likelihood.mode(params)
        raise ValueError(f"unknown statistic {statistic!r}; use 'mean' or 'mode'")

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` images drawn from p(x | z), z ~ N(0, temperature^2 I), on the [0, 1] scale."""
        like = next(self.parameters())
        z = temperature * standard_normal_noise((n, self.latent_dim), like, generator)
        return self.likelihood.sample(self.decode(z), generator)


_POSTERIOR_BUILDERS: dict[str, Callable[[VAEConfig], LatentPosterior]] = {
    "gaussian": lambda config: GaussianPosterior(config.feature_dim, config.latent_dim),
    "realnvp": lambda config: RealNVPPosterior(
        config.feature_dim,
        config.latent_dim,
        n_flows=config.n_posterior_flows,
        hidden_dim=config.flow_hidden_dim,
        context_dim=config.flow_hidden_dim,
    ),
}


def build_vae(config: VAEConfig, data: DataConfig) -> VAE:
    """The VAE described by ``config`` for ``data``'s image shape (32x32, 1 or 3 channels)."""
    if data.image_size != 32:
        raise ValueError(
            f"the conv VAE is built for 32x32 images, got image_size={data.image_size}"
        )
    if config.likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {config.likelihood!r}; known: {sorted(LIKELIHOODS)}")
    if config.posterior not in _POSTERIOR_BUILDERS:
        raise ValueError(
            f"unknown posterior {config.posterior!r}; known: {sorted(_POSTERIOR_BUILDERS)}"
        )
    likelihood = LIKELIHOODS[config.likelihood]()
    return VAE(
        encoder=ConvEncoder(data.channels, config.base_channels, config.feature_dim),
        posterior=_POSTERIOR_BUILDERS[config.posterior](config),
        decoder=ConvDecoder(
            config.latent_dim, config.base_channels, data.channels, likelihood.params_per_subpixel
        ),
        likelihood=likelihood,
        image_shape=(data.channels, data.image_size, data.image_size),
        n_samples=config.n_samples,
        beta=config.beta,
    )


# Nalisnick et al. 2019 show conv VAEs trained on CIFAR-10 (Fig. 2b "VAE with RNVP as encoder",
# Fig. 2c "VAE conv-categorical likelihood"), but our sources give no layer widths or latent size,
# nor the likelihood of 2b; the "paper" size is a larger conv VAE in that spirit, not a copy.
register_family(
    FamilySpec(
        name="vae",
        config=VAEConfig,
        build=build_vae,
        kind="density",
        description="a conv VAE: ELBO and IWAE bound of a discrete decoder likelihood",
        presets={
            # smoke tests: forward + backward of 4 images well under a second
            "tiny": VAEConfig(latent_dim=8, base_channels=8, feature_dim=32),
            # FashionMNIST with the cpu TrainConfig (1500 steps x 64): ~250 ms/step on one
            # core, so roughly 5-7 minutes on 2 cores including validation
            "cpu": VAEConfig(latent_dim=32, base_channels=24, feature_dim=256),
            # CIFAR-10, Fig. 2c; needs a GPU
            "paper": VAEConfig(
                latent_dim=64,
                base_channels=64,
                feature_dim=512,
                likelihood="categorical",
                n_posterior_flows=6,  # used by the vae-realnvp alias (Fig. 2b)
                flow_hidden_dim=256,
            ),
        },
        capabilities=frozenset(
            {
                Capability.LIKELIHOOD_BOUND,
                Capability.STOCHASTIC_LOG_PROB,
                Capability.IWAE,
                Capability.LATENT_POSTERIOR,
                Capability.RECONSTRUCTION,
                Capability.SAMPLING,
                Capability.TERM_DECOMPOSITION,
            }
        ),
        # the ELBO = E_q log p(x|z) - KL(q(z|x) || p(z))
        decomposition=(
            Term("reconstruction", "reconstruction E_q log p(x|z)"),
            Term("kl", "KL(q(z|x) || p(z))", sign=-1.0),
        ),
        train_overrides={"cpu": {"steps": 1500, "eval_every": 500, "checkpoint_every": 250}},
        # CIFAR-10 at the cpu size: ~0.09 CPU-seconds per step of 64 (fp32, one thread), so
        # ~9 minutes of one core; its ELBO has levelled off by then (docs/RESULTS.md, CIFAR-10)
        colour_train_overrides={
            "cpu": {"steps": 6000, "eval_every": 1000, "checkpoint_every": 500}
        },
        # architecture variants on top of any size preset: `dgmood train vae-realnvp --preset paper`
        aliases={
            "vae-bernoulli": {"likelihood": "bernoulli"},  # the chicken post (binarised)
            "vae-categorical": {"likelihood": "categorical"},  # Fig. 2c at any size
            "vae-logistic": {"likelihood": "logistic"},
            "vae-realnvp": {"posterior": "realnvp"},  # Fig. 2b: "RNVP as encoder"
        },
    )
)
