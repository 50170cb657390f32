"""A likelihood ratio across noise levels of a diffusion model's bound: its coarse part only.

A variational diffusion model's bound spends its bits level by level: in continuous time
``-log p(x) <= KL_prior + 1/2 int_{gamma_0}^{gamma_1} ||eps - eps_hat(z_gamma)||^2 d gamma
+ reconstruction``. Most of the bits of a natural image go to the low-noise levels, which
encode local pixel detail; that is the "complexity" that lets simple OOD images (MNIST under
a FashionMNIST model, SVHN under CIFAR-10) look likely, as for every likelihood model
(Serra et al. 2020). Dividing the bound's likelihood by that of its fine-detail part (the
levels below a cutoff, plus the reconstruction term) leaves the coarse part:

    score(x) = [KL_prior + 1/2 int_{gamma_c}^{gamma_1} ||eps - eps_hat||^2 d gamma] / (D ln 2)

in bits/dim, higher = more OOD: the complexity-corrected likelihood. It is estimated with
``n_timesteps`` stratified levels in ``[gamma_c, gamma_1]`` (uniform in gamma, which VDM shows
is the invariant form of the continuous-time loss), seeded per image.

Goodier & Campbell build a "complexity corrected likelihood ratio" from ELBO evaluations of
one diffusion model at several noising levels; their exact equation and code were not
available to us, so this module implements the idea in the form above (one cutoff level;
the numerator and denominator of their ratio both come from the same bound), not a copy.

References: Goodier & Campbell, "Likelihood-based Out-of-Distribution Detection with
Denoising Diffusion Probabilistic Models", BMVC 2023; Kingma et al., "Variational Diffusion
Models", NeurIPS 2021 (Sec. 5.1, the loss in gamma); Serra et al., "Input complexity and
out-of-distribution detection with likelihood-based generative models", ICLR 2020.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dgmood.models.diffusion.bound import per_image_sum, prior_kl, stratified_times
from dgmood.models.diffusion.vdm import VariationalDiffusion
from dgmood.scores.base import ScoreInput, register_score
from dgmood.scores.diffusion_base import DiffusionScore


def coarse_band_loss(
    model: VariationalDiffusion, x: Tensor, gamma_cut: float, uniforms: Tensor, eps: Tensor
) -> Tensor:
    """``1/2 int_{gamma_cut}^{gamma_1} |eps - eps_hat(z_gamma; gamma)|^2 d gamma`` per image (nats).

    ``uniforms [B, K]`` place one level in each of K equal strata of ``[gamma_cut, gamma_1]``;
    ``eps [K, B, C, H, W]`` is the noise at each.
    """
    gamma_low, gamma_high = model.gamma_range()
    if not gamma_low <= gamma_cut < gamma_high:
        raise ValueError(
            f"cutoff gamma = {gamma_cut:.3f} (log SNR {-gamma_cut:.3f}) lies outside the "
            f"model's trained range [{gamma_low:.3f}, {gamma_high:.3f})"
        )
    gammas = gamma_cut + (gamma_high - gamma_cut) * stratified_times(uniforms)
    losses = []
    for j in range(gammas.shape[1]):
        gamma = gammas[:, j]
        eps_hat = model.denoise(model.diffuse(x, gamma, eps[j]), gamma)
        losses.append(0.5 * per_image_sum((eps[j] - eps_hat).square()))
    return (gamma_high - gamma_cut) * torch.stack(losses, dim=1).mean(1)


def coarse_bits_per_dim(
    model: VariationalDiffusion, x: Tensor, gamma_cut: float, uniforms: Tensor, eps: Tensor
) -> Tensor:
    """``(KL_prior + coarse band loss) / (D ln 2)`` per image: the bound above ``gamma_cut``."""
    _, gamma_high = model.schedule.endpoints()
    nats = prior_kl(x, gamma_high) + coarse_band_loss(model, x, gamma_cut, uniforms, eps)
    return nats / (model.input_spec.num_dims * math.log(2.0))


@register_score
class NoiseLevelRatio(DiffusionScore):
    """Bits/dim of the diffusion bound above a noise level: its likelihood over its fine part's.

    The log-ratio of the full bound's likelihood to that of its fine-detail part (the levels
    below the cutoff and the decoder): a complexity correction across noise levels.

    References: Goodier & Campbell, "Likelihood-based Out-of-Distribution Detection with
    Denoising Diffusion Probabilistic Models", BMVC 2023 (the idea; our form, see the module).
    """

    name = "noise-level-ratio"

    def __init__(
        self,
        cutoff_log_snr: float = 0.0,
        n_timesteps: int = 16,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if n_timesteps < 1:
            raise ValueError(f"n_timesteps must be >= 1, got {n_timesteps}")
        self.cutoff_log_snr, self.n_timesteps = cutoff_log_snr, n_timesteps

    @property
    def nfe(self) -> int:
        return self.n_timesteps

    def score(self, data: ScoreInput) -> np.ndarray:
        def compute(model: VariationalDiffusion, x: Tensor, seeds: list[int]) -> Tensor:
            uniforms, eps = [], []
            for row in range(len(x)):
                generator = torch.Generator().manual_seed(seeds[row])
                uniforms.append(torch.rand(self.n_timesteps, generator=generator, dtype=x.dtype))
                eps.append(
                    torch.randn(
                        (self.n_timesteps, *x.shape[1:]), generator=generator, dtype=x.dtype
                    )
                )
            return coarse_bits_per_dim(
                model,
                x,
                -self.cutoff_log_snr,
                torch.stack(uniforms).to(x.device),
                torch.stack(eps, dim=1).to(x.device),
            )

        return self.per_image(data, compute)
