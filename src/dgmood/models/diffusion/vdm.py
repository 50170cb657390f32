"""A variational diffusion model under the :class:`DensityModel` contract.

``log_prob`` is the variational lower bound (ELBO) on the log *mass* of the quantized image
(the decoder is a softmax over the 256 levels of each sub-pixel), estimated per image with
``eval_timesteps`` stratified timesteps, and broken down into its ``prior``,
``diffusion`` and ``reconstruction`` log-terms (they sum to ``log_prob``), with the Monte
Carlo standard error of the diffusion term (``log_prob_stderr``). Bits/dim therefore come
from :func:`dgmood.models.base.bits_per_dim` exactly as for PixelCNN++ and the VAEs.

The methods scores need (``gamma``, ``alpha_sigma``, ``denoise``, ``predict_data``,
``ddim_step``) are explicit, so that reconstruction- and path-based OOD scores run on any
model of this family without knowing its network.

References: Kingma, Salimans, Poole & Ho, "Variational Diffusion Models", NeurIPS 2021.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from dgmood.config import DataConfig, ModelConfig
from dgmood.models.base import (
    Capability,
    DensityModel,
    FamilySpec,
    InputSpec,
    Term,
    bits_per_dim,
)
from dgmood.models.diffusion.bound import (
    diffusion_loss_weight,
    level_index,
    per_image_sum,
    prior_kl,
    reconstruction_log_mass,
    stratified_stderr,
    stratified_times,
)
from dgmood.models.diffusion.schedule import (
    FixedLinearSchedule,
    LearnedLinearSchedule,
    NoiseSchedule,
)
from dgmood.models.diffusion.schedule import alpha_sigma as _alpha_sigma
from dgmood.models.diffusion.unet import NoisePredictionUNet
from dgmood.models.registry import register_family


@dataclass(frozen=True)
class DiffusionConfig(ModelConfig):
    family: ClassVar[str] = "diffusion"
    channels: int = 32  # U-Net width at full resolution
    channel_multipliers: tuple[int, ...] = (1, 2, 2)  # width factor per level (32, 16, 8 px)
    blocks_per_level: int = 2  # residual blocks per level going down (one more going up)
    attention_resolutions: tuple[int, ...] = ()  # image sides (px) whose blocks get attention
    middle_attention: bool = True  # self-attention between the two middle blocks (VDM)
    dropout: float = 0.0  # dropout inside every residual block
    fourier_exponents: tuple[int, ...] = (6, 7)  # input features sin/cos(2^n 2pi z); () = none
    schedule: Literal["learned", "fixed"] = "learned"  # gamma(t) linear; "learned" trains its ends
    # end points of gamma(t) = -log SNR(t), both positive: gamma(0) = -max_log_snr (least
    # noise: sigma_0 = 1.3e-3, a sixth of one level's 2/255) and gamma(1) = max_log_nsr (most
    # noise: alpha_1^2 = 6.7e-3, so the prior term is small); VDM's gamma_min, gamma_max
    max_log_snr: float = 13.3  # -gamma(0), nats
    max_log_nsr: float = 5.0  # gamma(1), nats
    eval_timesteps: int = 16  # T_eval: stratified timesteps per image for log_prob (>= 3)
    bound_depth: int = 0  # T of a discrete-time model and bound; 0 = continuous time (VDM)
    sample_steps: int = 256  # ancestral sampling steps of sample()


@dataclass(frozen=True)
class BoundNoise:
    """The random numbers of one evaluation of the bound, so that it can be recomputed.

    Timestep ``j`` of image ``b`` is ``t = (j + uniforms[b, j]) / K`` (one draw per stratum).
    """

    uniforms: Tensor  # [B, K] in [0, 1)
    eps: Tensor  # [K, B, C, H, W]: the diffusion noise at each timestep
    eps_0: Tensor  # [B, C, H, W]: the noise of z_0 in the reconstruction term


def _per_image(value: Tensor) -> Tensor:
    """A per-image ``[B]`` (or scalar) value shaped to broadcast against ``[B, C, H, W]``."""
    return value.reshape(-1, 1, 1, 1) if value.dim() > 0 else value


class VariationalDiffusion(DensityModel):
    """Continuous-time (or T-step) variational diffusion model on 8-bit images in [-1, 1].

    ``input_spec`` is discrete: level ``k`` sits at ``-1 + 2k/255``, and ``log_prob_terms``
    returns a lower bound on the log mass of those levels. Stochastic: it draws timesteps and
    noise (``stochastic_log_prob``), so scoring seeds it per block of images.

    References: Kingma, Salimans, Poole & Ho, "Variational Diffusion Models", NeurIPS 2021.
    """

    stochastic_log_prob = True
    levels: Tensor

    def __init__(
        self,
        denoiser: nn.Module,
        schedule: NoiseSchedule,
        image_shape: tuple[int, int, int],
        eval_timesteps: int = 16,
        bound_depth: int = 0,
        sample_steps: int = 256,
        max_network_batch: int = 512,
    ) -> None:
        super().__init__()
        if eval_timesteps < 3:
            raise ValueError(
                f"eval_timesteps must be >= 3 (its standard error compares neighbouring "
                f"strata), got {eval_timesteps}"
            )
        if bound_depth < 0 or sample_steps < 1:
            raise ValueError(
                f"need bound_depth >= 0 and sample_steps >= 1, got {bound_depth}, {sample_steps}"
            )
        self.denoiser = denoiser
        self.schedule = schedule
        self.input_spec = InputSpec(image_shape, n_bits=8, low=-1.0, high=1.0, discrete=True)
        self.register_buffer(
            "levels", torch.linspace(-1.0, 1.0, self.input_spec.n_levels), persistent=False
        )
        self.eval_timesteps = eval_timesteps
        self.bound_depth = bound_depth
        self.sample_steps = sample_steps
        self.max_network_batch = max_network_batch  # images per network call inside log_prob

    # ----- what scores use: the noise process and the denoiser -----

    def gamma(self, t: Tensor) -> Tensor:
        """``gamma(t) = -log SNR(t)`` of the model's schedule."""
        result: Tensor = self.schedule(t)
        return result

    @staticmethod
    def alpha_sigma(gamma: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha, sigma)`` at noise level ``gamma``: ``z = alpha x + sigma eps``."""
        return _alpha_sigma(gamma)

    def gamma_range(self) -> tuple[float, float]:
        """``(gamma(0), gamma(1))``: the noise levels the network was trained on."""
        gamma_0, gamma_1 = self.schedule.endpoints()
        return float(gamma_0), float(gamma_1)

    def diffuse(self, x: Tensor, gamma: Tensor, eps: Tensor) -> Tensor:
        """``z = alpha x + sigma eps`` (``gamma``: per image ``[B]`` or a scalar)."""
        alpha, sigma = self.alpha_sigma(_per_image(gamma))
        return alpha * x + sigma * eps

    def denoise(self, z: Tensor, gamma: Tensor) -> Tensor:
        """The network's noise prediction ``eps_hat(z; gamma)``."""
        if not torch.is_tensor(gamma):
            gamma = torch.tensor(float(gamma), dtype=z.dtype, device=z.device)
        eps_hat: Tensor = self.denoiser(z, gamma.to(z.dtype).expand(z.shape[0]))
        return eps_hat

    def predict_data(self, z: Tensor, gamma: Tensor) -> Tensor:
        """``x_hat = (z - sigma eps_hat) / alpha``: the network's estimate of ``E[x | z]``."""
        alpha, sigma = self.alpha_sigma(_per_image(gamma))
        return (z - sigma * self.denoise(z, gamma)) / alpha

    def ddim_step(self, z_t: Tensor, gamma_t: Tensor, gamma_s: Tensor) -> tuple[Tensor, Tensor]:
        """One deterministic DDIM step from level ``gamma_t`` to ``gamma_s`` (either direction).

        ``z_s = alpha_s x_hat + sigma_s eps_hat`` with ``eps_hat = eps_hat(z_t; gamma_t)`` and
        ``x_hat = (z_t - sigma_t eps_hat) / alpha_t``; returns ``(z_s, eps_hat)``. Towards more
        noise it is the DDIM inversion that DiffPath follows.

        References: Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, Eq. 12.
        """
        eps_hat = self.denoise(z_t, gamma_t)
        alpha_t, sigma_t = self.alpha_sigma(_per_image(gamma_t))
        alpha_s, sigma_s = self.alpha_sigma(_per_image(gamma_s))
        x_hat = (z_t - sigma_t * eps_hat) / alpha_t
        return alpha_s * x_hat + sigma_s * eps_hat, eps_hat

    # ----- the bound -----

    def draw_bound_noise(
        self, batch: int, n_timesteps: int | None = None, generator: torch.Generator | None = None
    ) -> BoundNoise:
        """Fresh timesteps and noise for :meth:`bound_terms` (global RNG unless ``generator``)."""
        k = n_timesteps or self.eval_timesteps
        like = self.levels
        shape = (batch, *self.input_spec.shape)

        def normal(size: tuple[int, ...]) -> Tensor:
            noise = torch.randn(size, generator=generator, dtype=like.dtype)
            return noise.to(like.device)

        uniforms = torch.rand((batch, k), generator=generator, dtype=like.dtype).to(like.device)
        return BoundNoise(uniforms=uniforms, eps=normal((k, *shape)), eps_0=normal(shape))

    def bound_terms(
        self, x: Tensor, noise: BoundNoise, depth: int | None = None
    ) -> dict[str, Tensor]:
        """The ELBO of ``x`` and its log-terms per image, for given noise.

        Returns ``log_prob = prior + diffusion + reconstruction`` (nats), where ``prior =
        -KL(q(z_1|x) || N(0, I))``, ``diffusion = -L_diffusion`` (mean over the K stratified
        timesteps of ``noise``), ``reconstruction = log p(x | z_0)``, and ``log_prob_stderr``,
        the standard error of the diffusion term's K-sample mean (:func:`stratified_stderr`).
        ``depth`` (default: the model's ``bound_depth``) = T for the T-step bound, 0 for
        continuous time.
        """
        self._check_input(x)
        depth = self.bound_depth if depth is None else depth
        gamma_0, gamma_1 = self.schedule.endpoints()
        prior = -prior_kl(x, gamma_1)
        z_0_rescaled = x + torch.exp(0.5 * gamma_0) * noise.eps_0
        reconstruction = reconstruction_log_mass(x, z_0_rescaled, gamma_0, self.levels)
        losses = self._diffusion_losses(x, stratified_times(noise.uniforms), noise.eps, depth)
        diffusion = -losses.mean(1)
        return {
            "log_prob": prior + diffusion + reconstruction,
            "prior": prior,
            "diffusion": diffusion,
            "reconstruction": reconstruction,
            "log_prob_stderr": stratified_stderr(losses),
        }

    def _diffusion_losses(self, x: Tensor, times: Tensor, eps: Tensor, depth: int) -> Tensor:
        """``w_t ||eps - eps_hat(z_t; t)||^2`` for every image and timestep, shape ``[B, K]``."""
        batch, k = times.shape
        per_call = max(1, self.max_network_batch // batch)  # timesteps per network call
        columns = []
        for start in range(0, k, per_call):
            stop = min(k, start + per_call)
            t = times[:, start:stop].T.reshape(-1)  # timestep-major, like eps
            gamma_t, weight = diffusion_loss_weight(self.schedule, t, depth)
            repeated = x.repeat(stop - start, 1, 1, 1)
            eps_chunk = eps[start:stop].reshape(-1, *x.shape[1:])
            eps_hat = self.denoise(self.diffuse(repeated, gamma_t, eps_chunk), gamma_t)
            loss = weight * per_image_sum((eps_chunk - eps_hat).square())
            columns.append(loss.view(stop - start, batch).T)
        return torch.cat(columns, dim=1)

    def network_evaluations(self) -> int:
        """One denoiser pass per stratified timestep of the bound (``eval_timesteps``)."""
        return self.eval_timesteps

    def log_prob_terms(self, x: Tensor) -> dict[str, Tensor]:
        """The ELBO and its terms with ``eval_timesteps`` fresh stratified timesteps per image."""
        return self.bound_terms(x, self.draw_bound_noise(x.shape[0]))

    def seeded_log_prob_terms(
        self, x: Tensor, generators: Sequence[torch.Generator], iwae_k: int = 0
    ) -> dict[str, Tensor]:
        """:meth:`log_prob_terms` with image ``b``'s timesteps and noise from ``generators[b]``
        alone, so that an image's bound depends neither on its batch nor on its position."""
        if iwae_k:
            raise ValueError("a diffusion model has no importance-weighted bound (iwae_k > 0)")
        if len(generators) != len(x):
            raise ValueError(f"need one generator per image: {len(generators)} for {len(x)}")
        draws = [self.draw_bound_noise(1, generator=generator) for generator in generators]
        noise = BoundNoise(
            uniforms=torch.cat([d.uniforms for d in draws]),
            eps=torch.cat([d.eps for d in draws], dim=1),
            eps_0=torch.cat([d.eps_0 for d in draws]),
        )
        return self.bound_terms(x, noise)

    def training_loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The negative ELBO in bits/dim with one timestep per image (VDM's objective).

        Timesteps are spread evenly over the batch, ``t_b = (u + b/B) mod 1`` with one shared
        ``u`` (VDM's antithetic / low-discrepancy sampling): an unbiased estimate of the
        batch-mean bound with less variance than independent draws.
        """
        self._check_input(x)
        batch = x.shape[0]
        gamma_0, gamma_1 = self.schedule.endpoints()
        eps_0, eps = torch.randn_like(x), torch.randn_like(x)
        shift = torch.rand((), dtype=x.dtype, device=x.device)
        t = torch.remainder(shift + torch.arange(batch, dtype=x.dtype, device=x.device) / batch, 1)
        gamma_t, weight = diffusion_loss_weight(self.schedule, t, self.bound_depth)
        eps_hat = self.denoise(self.diffuse(x, gamma_t, eps), gamma_t)
        prior = -prior_kl(x, gamma_1)
        diffusion = -weight * per_image_sum((eps - eps_hat).square())
        reconstruction = reconstruction_log_mass(
            x, x + torch.exp(0.5 * gamma_0) * eps_0, gamma_0, self.levels
        )
        log_prob = prior + diffusion + reconstruction
        terms = {
            "log_prob": log_prob,
            "prior": prior,
            "diffusion": diffusion,
            "reconstruction": reconstruction,
        }
        return bits_per_dim(log_prob, self.input_spec).mean(), terms

    def _check_input(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_spec.shape:
            raise ValueError(
                f"images have shape {tuple(x.shape[1:])}, the diffusion model expects "
                f"{self.input_spec.shape} (channels, height, width)"
            )

    # ----- sampling -----

    def decode(self, z_0: Tensor) -> Tensor:
        """The most probable level of every sub-pixel given ``z_0`` (the one nearest to
        ``z_0 / alpha_0``: the decoder's logits fall with the squared distance), on [-1, 1]."""
        gamma_0, _ = self.schedule.endpoints()
        alpha_0, _ = self.alpha_sigma(gamma_0)
        n_levels = self.input_spec.n_levels
        return self.levels[level_index(z_0 / alpha_0, -1.0, 1.0, n_levels)]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        deterministic: bool = False,
    ) -> Tensor:
        """``n`` images on the [-1, 1] level grid, from ``z_1 ~ N(0, temperature^2 I)``.

        ``steps`` (default ``sample_steps``) ancestral steps ``p(z_s | z_t)`` of VDM, or DDIM
        steps when ``deterministic``; the last latent ``z_0`` is decoded to its most
        probable level per sub-pixel.

        References: Kingma et al., "Variational Diffusion Models", NeurIPS 2021, Eq. 27-29;
        Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021.
        """
        steps = steps or self.sample_steps
        like = self.levels

        def normal() -> Tensor:
            return torch.randn(
                (n, *self.input_spec.shape), generator=generator, dtype=like.dtype
            ).to(like.device)

        z = temperature * normal()
        times = torch.linspace(1.0, 0.0, steps + 1, dtype=like.dtype, device=like.device)
        gammas = self.gamma(times)
        for gamma_t, gamma_s in zip(gammas[:-1], gammas[1:], strict=True):
            if deterministic:
                z, _ = self.ddim_step(z, gamma_t, gamma_s)
                continue
            eps_hat = self.denoise(z, gamma_t)
            alpha_sq_s, alpha_sq_t = torch.sigmoid(-gamma_s), torch.sigmoid(-gamma_t)
            c = -torch.expm1(gamma_s - gamma_t)
            sigma_t = torch.sigmoid(gamma_t).sqrt()
            mean = (alpha_sq_s / alpha_sq_t).sqrt() * (z - sigma_t * c * eps_hat)
            z = mean + ((1.0 - alpha_sq_s) * c).sqrt() * normal()
        return self.decode(z)


def _schedule(config: DiffusionConfig) -> NoiseSchedule:
    if config.schedule == "learned":
        return LearnedLinearSchedule(-config.max_log_snr, config.max_log_nsr)
    if config.schedule == "fixed":
        return FixedLinearSchedule(-config.max_log_snr, config.max_log_nsr)
    raise ValueError(f"unknown schedule {config.schedule!r}; use 'learned' or 'fixed'")


def build_diffusion(config: DiffusionConfig, data: DataConfig) -> VariationalDiffusion:
    """The variational diffusion model described by ``config`` for ``data``'s image shape."""
    network = NoisePredictionUNet(
        in_channels=data.channels,
        image_size=data.image_size,
        channels=config.channels,
        channel_multipliers=config.channel_multipliers,
        blocks_per_level=config.blocks_per_level,
        attention_resolutions=config.attention_resolutions,
        middle_attention=config.middle_attention,
        dropout=config.dropout,
        fourier_exponents=config.fourier_exponents,
        gamma_range=(-config.max_log_snr, config.max_log_nsr),
    )
    return VariationalDiffusion(
        denoiser=network,
        schedule=_schedule(config),
        image_shape=(data.channels, data.image_size, data.image_size),
        eval_timesteps=config.eval_timesteps,
        bound_depth=config.bound_depth,
        sample_steps=config.sample_steps,
    )


PRESETS: dict[str, DiffusionConfig] = {
    # smoke tests: forward + backward of a few images in well under a second
    "tiny": DiffusionConfig(
        channels=8,
        channel_multipliers=(1, 2),
        blocks_per_level=1,
        middle_attention=False,
        eval_timesteps=4,
        sample_steps=16,
    ),
    # FashionMNIST / CIFAR-10 on 2 CPU cores (1.06M parameters): see TRAIN_OVERRIDES
    "cpu": DiffusionConfig(
        channels=32,
        channel_multipliers=(1, 2, 2),
        blocks_per_level=1,
        eval_timesteps=16,
        sample_steps=128,
    ),
    # VDM's CIFAR-10 network (configs/cifar10.py of google-research/vdm): 128 channels, no
    # downsampling, 32 residual blocks down and 33 up, attention only in the middle, dropout
    # 0.1, Fourier features 2^6 and 2^7, learned linear schedule in [-13.3, 5]; a GPU model
    "paper": DiffusionConfig(
        channels=128,
        channel_multipliers=(1,),
        blocks_per_level=32,
        middle_attention=True,
        dropout=0.1,
        eval_timesteps=64,
        sample_steps=1000,
    ),
}

# Training settings per preset, for the family spec (TrainConfig field -> value). VDM trains
# CIFAR-10 with AdamW (b2 = 0.99, weight decay 0.01), lr 2e-4 after 100 warm-up steps, batch
# 128, 10M steps, and evaluates an EMA of the weights (rate 0.9999); our loop has Adam with
# coupled L2 and no EMA, so "paper" is the nearest setting, not a copy.
TRAIN_OVERRIDES: dict[str, dict[str, Any]] = {
    "tiny": {},
    # one step of batch 32 took 1.2-1.3 s on one core of our shared 2-core machine (under
    # load), so 3000 steps are ~30-40 minutes on 2 free cores; validation costs eval_timesteps
    # network passes per image: keep data.val_size small (500 images: ~2 min per validation)
    "cpu": {
        "steps": 3000,
        "batch_size": 32,
        "lr": 1e-3,
        "warmup_steps": 200,
        "eval_every": 1000,
        "checkpoint_every": 500,
        "log_every": 50,
    },
    "paper": {
        "optimizer": "adam",
        "lr": 2e-4,
        "batch_size": 128,
        "steps": 10_000_000,
        "warmup_steps": 100,
        "grad_clip": 1.0,
    },
}

register_family(
    FamilySpec(
        name="diffusion",
        config=DiffusionConfig,
        build=build_diffusion,
        kind="density",
        description="a variational diffusion model (Kingma et al. 2021): bound on the log mass",
        presets=PRESETS,
        capabilities=frozenset(
            {
                Capability.LIKELIHOOD_BOUND,
                Capability.STOCHASTIC_LOG_PROB,
                Capability.SAMPLING,
                Capability.DENOISER,
                Capability.TERM_DECOMPOSITION,
            }
        ),
        # the bound = prior + diffusion + reconstruction terms (Kingma et al. 2021, Eq. 11),
        # each a log-term per image: the analogue of a flow's density and volume terms
        decomposition=(
            Term("prior", "prior term -KL(q(z_1|x) || p(z_1))"),
            Term("diffusion", "diffusion term -L_infinity(x)"),
            Term("reconstruction", "reconstruction term log p(x|z_0)"),
        ),
        train_overrides=TRAIN_OVERRIDES,
        # validation costs eval_timesteps network passes per image: a smaller set
        data_overrides={"cpu": {"val_size": 500}},
    )
)
