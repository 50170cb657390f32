"""The probability-flow ODE likelihood of a variational diffusion model.

In the variables ``x_tilde = z / alpha`` and ``eta = sigma / alpha = exp(gamma / 2)`` the
deterministic (DDIM) flow of a variance-preserving diffusion is ``d x_tilde / d eta =
eps_hat(z; gamma)`` (Song, Meng & Ermon 2021, Eq. 14); integrated in ``gamma`` it reads

    d x_tilde / d gamma = (eta / 2) eps_hat(alpha x_tilde; gamma),

a continuous normalizing flow from the data (``gamma(0)``) to the prior (``gamma(1)``, where
``z_1 = alpha_1 x_tilde_1 ~ N(0, I)``). Its log density follows from the instantaneous
change of variables (Chen et al. 2018): ``log p_0(x) = log p_1(x_tilde_1) + int div f d gamma``
with ``div f = (eta / 2) alpha tr(d eps_hat / d z)``, the trace estimated by Hutchinson's
estimator with one Rademacher vector per image (Grathwohl et al. 2019) or computed exactly
(small inputs). The integral is solved with ``steps`` fixed classical Runge-Kutta (RK4)
steps in gamma: on a Gaussian whose flow is known, 25 steps are within 2.5e-3 nats of the
exact log density and 50 within 2e-4 (Heun needs 400 steps for 2e-3).

Cost: 4 network evaluations per step, each with a vector-Jacobian product (about 3 forward
passes' work): ``steps = 25`` is 100 evaluations, ~300 forward passes per image, against
``eval_timesteps`` (16) for the bound. Exact up to the solver's and the estimator's error;
for 8-bit images :func:`ode_log_mass_bound` turns it into a bound on the log mass by uniform
dequantization.

References: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR 2021 (Sec. 4.3, the likelihood of
the probability flow); Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021;
Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018; Grathwohl et al.,
"FFJORD", ICLR 2019.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dgmood.models.diffusion.bound import per_image_sum
from dgmood.models.diffusion.vdm import VariationalDiffusion


def rademacher(shape: torch.Size, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Independent +-1 entries (Hutchinson's probe), in ``like``'s dtype and device."""
    signs = torch.randint(0, 2, shape, generator=generator, dtype=torch.int64)
    return (2 * signs - 1).to(dtype=like.dtype, device=like.device)


def _velocity_and_divergence(
    model: VariationalDiffusion, x_tilde: Tensor, gamma: Tensor, probe: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``f = (eta / 2) eps_hat(alpha x_tilde)`` and ``div f`` (exact when ``probe`` is None)."""
    alpha, _ = model.alpha_sigma(gamma)
    eta = torch.exp(0.5 * gamma)
    with torch.enable_grad():
        z = (alpha * x_tilde).detach().requires_grad_(True)
        eps_hat = model.denoise(z, gamma)
        if probe is not None:
            (vjp,) = torch.autograd.grad((eps_hat * probe).sum(), z)
            trace = per_image_sum(vjp * probe)
        else:
            flat = eps_hat.flatten(1)
            trace = torch.zeros(len(z), dtype=z.dtype, device=z.device)
            for i in range(flat.shape[1]):
                (row,) = torch.autograd.grad(flat[:, i].sum(), z, retain_graph=True)
                trace = trace + row.flatten(1)[:, i]
    return 0.5 * eta * eps_hat.detach(), 0.5 * eta * alpha * trace.detach()


def ode_log_density(
    model: VariationalDiffusion,
    x: Tensor,
    steps: int = 25,
    exact_trace: bool = False,
    generator: torch.Generator | None = None,
    probe: Tensor | None = None,
) -> Tensor:
    """``log p(x)`` per image under the probability flow, ``x`` continuous on the model's scale.

    ``x`` is the flow's starting point ``x_tilde_0`` (``z_0 = alpha_0 x``): the density is that
    of the data smoothed by the model's smallest noise, ``exp(gamma(0) / 2)`` (1.3e-3 at VDM's
    schedule, a sixth of one 8-bit level). Hutchinson's Rademacher ``probe`` (shape of ``x``)
    is drawn from ``generator`` unless given; ``exact_trace`` uses none.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    gamma_0, gamma_1 = model.schedule.endpoints()
    gammas = torch.linspace(float(gamma_0), float(gamma_1), steps + 1, dtype=x.dtype)
    gammas = gammas.to(x.device)
    if exact_trace:
        probe = None
    elif probe is None:
        probe = rademacher(x.shape, generator, like=x)
    x_tilde, log_det = x, torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for gamma_a, gamma_b in zip(gammas[:-1], gammas[1:], strict=True):
        h, gamma_mid = gamma_b - gamma_a, 0.5 * (gamma_a + gamma_b)
        v1, d1 = _velocity_and_divergence(model, x_tilde, gamma_a, probe)
        v2, d2 = _velocity_and_divergence(model, x_tilde + 0.5 * h * v1, gamma_mid, probe)
        v3, d3 = _velocity_and_divergence(model, x_tilde + 0.5 * h * v2, gamma_mid, probe)
        v4, d4 = _velocity_and_divergence(model, x_tilde + h * v3, gamma_b, probe)
        x_tilde = x_tilde + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
        log_det = log_det + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    alpha_1, _ = model.alpha_sigma(gammas[-1])
    z_1 = alpha_1 * x_tilde
    dims = x[0].numel()
    log_prior = -0.5 * per_image_sum(z_1.square()) - 0.5 * dims * math.log(2 * math.pi)
    return log_prior + dims * torch.log(alpha_1) + log_det


def ode_log_mass_bound(
    model: VariationalDiffusion,
    x: Tensor,
    steps: int = 25,
    generator: torch.Generator | None = None,
    offsets: Tensor | None = None,
    probe: Tensor | None = None,
) -> Tensor:
    """A lower bound on the log mass of 8-bit images ``x`` (on the level grid), per image.

    ``log P(x) >= E_u log p(x + width (u - 1/2)) + D log width`` with ``u ~ U[0, 1)^D`` and
    ``width = 2 / 255`` the spacing of the levels (uniform dequantization, Theis et al. 2016;
    one draw ``offsets = u - 1/2`` per image, from ``generator`` unless given), so that its
    bits/dim compare with the bound's and with other families'.
    """
    width = (model.input_spec.high - model.input_spec.low) / (model.input_spec.n_levels - 1)
    if offsets is None:
        offsets = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) - 0.5
    log_density = ode_log_density(
        model, x + width * offsets, steps, generator=generator, probe=probe
    )
    return log_density + x[0].numel() * math.log(width)
