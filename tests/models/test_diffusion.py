"""The variational diffusion model: its bound against closed forms, a float64 recomputation,
the contract every density model keeps, and sampling.

The bound is checked where the optimal denoiser is known exactly: Gaussian data (the I-MMSE
closed form of the diffusion term) and a Gaussian quantized to the 256 levels (exact
entropy; the bound of the optimal model must lie above it and approach it as T grows).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import Tensor, nn

from dgmood.config import DataConfig, RunConfig
from dgmood.data.dequantize import to_model_input
from dgmood.inference import score_images
from dgmood.models.base import bits_per_dim
from dgmood.models.diffusion.ode import ode_log_density
from dgmood.models.diffusion.schedule import FixedLinearSchedule, alpha_sigma
from dgmood.models.diffusion.vdm import (
    BoundNoise,
    DiffusionConfig,
    VariationalDiffusion,
    build_diffusion,
)
from dgmood.models.registry import build_model, resolve_model
from dgmood.presets import run_preset
from dgmood.runs import LoadedRun, load_run, save_model
from dgmood.scores import ScoreInput, make_score

GAMMA_0, GAMMA_1 = -13.3, 5.0  # VDM's schedule end points


class GaussianOptimalDenoiser(nn.Module):
    """``eps_hat = E[eps | z]`` for ``x ~ N(mean, cov)`` (a flattened vector per image)."""

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("cov", cov)

    def forward(self, z: Tensor, gamma: Tensor) -> Tensor:
        shape, z = z.shape, z.flatten(1)
        alpha, sigma = alpha_sigma(gamma.reshape(-1, 1))
        eye = torch.eye(len(self.mean), dtype=z.dtype)
        # E[x | z] = m + alpha C (alpha^2 C + sigma^2 I)^-1 (z - alpha m), batched over images
        gain = (
            alpha[:, :, None]
            * self.cov
            @ torch.linalg.inv(alpha[:, :, None] ** 2 * self.cov + sigma[:, :, None] ** 2 * eye)
        )
        x_hat = self.mean + (gain @ (z - alpha * self.mean)[:, :, None])[:, :, 0]
        return ((z - alpha * x_hat) / sigma).view(shape)


def quantized_gaussian_masses(means: list[float], stds: list[float]) -> Tensor:
    """P(level k) per dimension ``[d, 256]`` of N(mean, std^2) rounded to the 256 levels of
    [-1, 1] (bins split halfway between levels; the end bins take the tails)."""
    levels = np.linspace(-1.0, 1.0, 256)
    edges = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
    rows = [np.diff(norm.cdf(edges, loc=m, scale=s)) for m, s in zip(means, stds, strict=True)]
    return torch.tensor(np.array(rows), dtype=torch.float64)


class DiscreteOptimalDenoiser(nn.Module):
    """``eps_hat = E[eps | z]`` for independent dimensions with level masses ``P [d, 256]``."""

    def __init__(self, masses: Tensor) -> None:
        super().__init__()
        self.register_buffer("log_masses", masses.clamp_min(1e-300).log())
        self.register_buffer(
            "levels", torch.linspace(-1.0, 1.0, masses.shape[1], dtype=masses.dtype)
        )

    def forward(self, z: Tensor, gamma: Tensor) -> Tensor:
        shape, z = z.shape, z.flatten(1)
        alpha, sigma = alpha_sigma(gamma.reshape(-1, 1))
        residual = z[:, :, None] - alpha[:, :, None] * self.levels  # [B, d, 256]
        log_posterior = self.log_masses - 0.5 * (residual / sigma[:, :, None]) ** 2
        x_hat = (torch.softmax(log_posterior, dim=-1) * self.levels).sum(-1)
        return ((z - alpha * x_hat) / sigma).view(shape)


def diffusion_model(denoiser: nn.Module, dims: int, eval_timesteps: int) -> VariationalDiffusion:
    model = VariationalDiffusion(
        denoiser, FixedLinearSchedule(GAMMA_0, GAMMA_1), (dims, 1, 1), eval_timesteps
    )
    return model.double()


def test_diffusion_term_of_the_optimal_gaussian_denoiser_matches_the_closed_form() -> None:
    """E[L_T] = 1/2 sum_i (SNR(s_i) - SNR(t_i)) mmse(t_i) and, as T -> inf, 1/2 sum_j
    log((1 + SNR_0 l_j) / (1 + SNR_1 l_j)) for x ~ N(m, C) with eigenvalues l_j, where
    mmse(snr) = sum_j l_j / (1 + snr l_j) (Guo, Shamai & Verdu 2005)."""
    generator = torch.Generator().manual_seed(0)
    dims, n_images = 4, 4000
    rotation, _ = torch.linalg.qr(torch.randn(dims, dims, generator=generator, dtype=torch.float64))
    eigenvalues = torch.tensor([0.8, 0.3, 0.05, 0.01], dtype=torch.float64)
    cov = rotation @ torch.diag(eigenvalues) @ rotation.T
    mean = torch.tensor([0.2, -0.1, 0.0, 0.3], dtype=torch.float64)
    model = diffusion_model(GaussianOptimalDenoiser(mean, cov), dims, eval_timesteps=8)
    x = (
        mean
        + torch.randn(n_images, dims, generator=generator, dtype=torch.float64)
        @ torch.linalg.cholesky(cov).T
    ).view(n_images, dims, 1, 1)
    noise = model.draw_bound_noise(n_images, generator=generator)

    def snr(t: Tensor) -> Tensor:
        return torch.exp(-(GAMMA_0 + (GAMMA_1 - GAMMA_0) * t))

    def mmse(s: Tensor) -> Tensor:
        return (eigenvalues / (1 + s[:, None] * eigenvalues)).sum(-1)

    expected = {
        0: 0.5
        * torch.log(
            (1 + snr(torch.tensor(0.0)) * eigenvalues) / (1 + snr(torch.tensor(1.0)) * eigenvalues)
        ).sum(),
    }
    for depth in (10, 100, 1000):
        t = torch.arange(1, depth + 1, dtype=torch.float64) / depth
        expected[depth] = 0.5 * ((snr(t - 1 / depth) - snr(t)) * mmse(snr(t))).sum()
    measured = {}
    for depth, value in expected.items():
        with torch.no_grad():
            diffusion_loss = -model.bound_terms(x, noise, depth=depth)["diffusion"]
        stderr = float(diffusion_loss.std() / math.sqrt(n_images))
        measured[depth] = float(diffusion_loss.mean())
        assert stderr < 0.02 * float(value)  # the check below has teeth
        assert abs(measured[depth] - float(value)) < 4 * stderr, (depth, measured, expected)
    # more steps, a lower (tighter) loss; continuous time is the limit
    assert expected[10] > expected[100] > expected[1000] > expected[0]
    assert float(expected[1000] - expected[0]) < 0.01 * float(expected[0])


def quantized_gaussian_bound_gaps(
    depths: tuple[int, ...], n_images: int = 3000, eval_timesteps: int = 8
) -> dict[int, Tensor]:
    """Per image ``-ELBO_T(x) - (-log P(x))`` (nats) under the optimal denoiser of a quantized
    3-dimensional Gaussian, x ~ P, for each T (0 = continuous time), all T with the same x,
    timesteps and noise (so that differences between T are measured precisely)."""
    generator = torch.Generator().manual_seed(1)
    masses = quantized_gaussian_masses([0.1, -0.2, 0.0], [0.15, 0.3, 0.5])
    model = diffusion_model(DiscreteOptimalDenoiser(masses), 3, eval_timesteps)
    index = torch.multinomial(masses, n_images, replacement=True, generator=generator).T
    x = (-1.0 + 2.0 * index.double() / 255).view(n_images, 3, 1, 1)
    log_mass = masses.log().gather(1, index.T).T.sum(1)  # exact log P(x), nats
    noise = model.draw_bound_noise(n_images, generator=generator)
    with torch.no_grad():
        return {d: log_mass - model.bound_terms(x, noise, depth=d)["log_prob"] for d in depths}


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def test_bound_of_the_optimal_model_is_above_the_exact_nll_and_tightens_with_more_steps() -> None:
    """E_P[-ELBO_T] - H(P) = KL(P || p_model) + E KL(q(z|x) || p(z|x)) >= 0 for any model; for
    the optimal denoiser it shrinks as T grows (VDM Sec. 4.1), towards the small remainder of
    the schedule's end points (prior at gamma_1 = 5, decoder at gamma_0 = -13.3).

    Measured with 64 timesteps per image (nats per 3-dim image; H = 14.8): T = 10: 26.7,
    T = 100: 1.39, T = 1000: 0.10, continuous: -0.04 +- 0.03 (zero within its Monte Carlo
    error); T = 1000 minus continuous, paired: 0.137 +- 0.002."""
    gaps = quantized_gaussian_bound_gaps((10, 100, 1000, 0))
    for depth, gap in gaps.items():
        mean, stderr = mean_and_stderr(gap)
        assert mean > -3 * stderr, (depth, mean, stderr)
    # each step of T tightens the bound, by far more than the (paired) Monte Carlo error
    for coarse, fine in ((10, 100), (100, 1000), (1000, 0)):
        mean, stderr = mean_and_stderr(gaps[coarse] - gaps[fine])
        assert mean > 5 * stderr and mean > 0, (coarse, fine, mean, stderr)
    assert mean_and_stderr(gaps[10])[0] > 20 and mean_and_stderr(gaps[1000])[0] < 0.5
    mean, stderr = mean_and_stderr(gaps[0])
    assert mean < 0.05 + 3 * stderr  # the continuous-time bound reaches the entropy


# ----- a tiny trained model -----

IMAGE_SIZE = 16  # the tiny tests train on 16x16 images: 3x faster than 32x32


def bars(n: int, generator: torch.Generator) -> Tensor:
    """Dark 16x16 images (level 10) with one bright horizontal bar (level 240) 3 rows high."""
    images = torch.full((n, 1, IMAGE_SIZE, IMAGE_SIZE), 10, dtype=torch.uint8)
    rows = torch.randint(2, IMAGE_SIZE - 5, (n,), generator=generator)
    for i, row in enumerate(rows.tolist()):
        images[i, 0, row : row + 3] = 240
    return images


def tiny_model(seed: int = 0) -> VariationalDiffusion:
    torch.manual_seed(seed)
    model = build_model(
        resolve_model("diffusion", "tiny"), DataConfig(channels=1, image_size=IMAGE_SIZE)
    )
    assert isinstance(model, VariationalDiffusion)
    return model


@pytest.fixture(scope="module")
def untrained() -> VariationalDiffusion:
    return tiny_model().eval()


@pytest.fixture(scope="module")
def trained() -> VariationalDiffusion:
    """The tiny preset after 300 Adam steps on bars (~20 s on one core)."""
    model = tiny_model()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss, _ = model.training_loss(to_model_input(bars(16, generator), model.input_spec))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def held_out_bars(model: VariationalDiffusion, n: int = 32) -> Tensor:
    return to_model_input(bars(n, torch.Generator().manual_seed(5)), model.input_spec)


def reference_bound_float64(
    model: VariationalDiffusion, x: Tensor, noise: BoundNoise
) -> dict[str, Tensor]:
    """The VDM bound recomputed in float64 from the paper's formulas, with the model's network
    as a black box: gamma(t) = b + |w| t (the learned linear schedule), alpha^2 = sigmoid(-gamma),
    sigma^2 = sigmoid(gamma);
      prior     = -1/2 sum(alpha_1^2 x^2 + sigma_1^2 - log sigma_1^2 - 1)            (Eq. 11)
      diffusion = -1/K sum_j 1/2 gamma'(t_j) ||eps_j - eps_hat(alpha_j x + sigma_j eps_j)||^2
                  with t_j = (j + u_j) / K                                             (Eq. 17)
      reconstruction = sum log softmax_k(-(x + e^{gamma_0/2} eps_0 - x_k)^2 / (2 e^{gamma_0}))[x]
    """
    network = model.denoiser
    originals = {k: v.detach().clone() for k, v in network.state_dict().items()}
    network.double()
    x64 = x.double()
    b, w = model.schedule.bias.double().detach(), model.schedule.scale.double().detach().abs()
    gamma_0, gamma_1 = b, b + w

    def alpha_sq(g: Tensor) -> Tensor:
        return 1.0 / (1.0 + torch.exp(g))

    def sigma_sq(g: Tensor) -> Tensor:
        return 1.0 / (1.0 + torch.exp(-g))

    prior = -0.5 * (
        alpha_sq(gamma_1) * x64**2 + sigma_sq(gamma_1) - torch.log(sigma_sq(gamma_1)) - 1
    ).sum((1, 2, 3))
    k = noise.uniforms.shape[1]
    diffusion = torch.zeros(len(x), dtype=torch.float64)
    with torch.no_grad():
        for j in range(k):
            t = (j + noise.uniforms[:, j].double()) / k
            g = (b + w * t).view(-1, 1, 1, 1)
            eps = noise.eps[j].double()
            z = alpha_sq(g).sqrt() * x64 + sigma_sq(g).sqrt() * eps
            eps_hat = network(z, g.flatten())
            diffusion -= 0.5 * w * ((eps - eps_hat) ** 2).sum((1, 2, 3)) / k
    network.load_state_dict(originals)
    network.float()
    levels = torch.tensor([-1.0 + 2.0 * i / 255 for i in range(256)], dtype=torch.float64)
    z_0_rescaled = x64 + torch.exp(gamma_0 / 2) * noise.eps_0.double()
    logits = -((z_0_rescaled[..., None] - levels) ** 2) / (2 * torch.exp(gamma_0))
    observed = torch.round((x64 + 1) * 127.5).long()
    chosen = logits.gather(-1, observed[..., None])[..., 0]
    reconstruction = (chosen - torch.logsumexp(logits, dim=-1)).sum((1, 2, 3))
    log_prob = prior + diffusion + reconstruction
    return {
        "prior": prior,
        "diffusion": diffusion,
        "reconstruction": reconstruction,
        "log_prob": log_prob,
    }


def test_trained_bits_per_dim_equals_a_float64_recomputation_with_the_same_noise(
    trained: VariationalDiffusion, untrained: VariationalDiffusion
) -> None:
    x = held_out_bars(trained)
    noise = trained.draw_bound_noise(
        len(x), n_timesteps=8, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        terms = trained.bound_terms(x, noise)
    reference = reference_bound_float64(trained, x, noise)
    for key, value in reference.items():
        torch.testing.assert_close(terms[key].double(), value, rtol=1e-4, atol=1e-3)
    bpd = bits_per_dim(terms["log_prob"], trained.input_spec)
    expected_bpd = -reference["log_prob"] / (IMAGE_SIZE**2 * math.log(2))
    torch.testing.assert_close(bpd.double(), expected_bpd, rtol=1e-5, atol=1e-5)
    # the terms add up, and training lowered the bound far below the untrained model's
    torch.testing.assert_close(
        terms["prior"] + terms["diffusion"] + terms["reconstruction"], terms["log_prob"]
    )
    with torch.no_grad():
        before = bits_per_dim(untrained.bound_terms(x, noise)["log_prob"], untrained.input_spec)
    assert float(bpd.mean()) < 0.3 * float(before.mean()), (bpd.mean(), before.mean())


def test_training_loss_is_an_unbiased_estimate_of_the_bound(trained: VariationalDiffusion) -> None:
    """One antithetic timestep per image (training) and 16 stratified ones (evaluation)
    estimate the same batch-mean bound: their means over many draws agree within MC error."""
    x = held_out_bars(trained, 64)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        train_draws = torch.stack([trained.training_loss(x)[0] for _ in range(60)])
        eval_draws = torch.stack(
            [
                bits_per_dim(trained.log_prob_terms(x)["log_prob"], trained.input_spec).mean()
                for _ in range(15)
            ]
        )
    stderr = math.sqrt(float(train_draws.var()) / 60 + float(eval_draws.var()) / 15)
    assert abs(float(train_draws.mean() - eval_draws.mean())) < 4 * stderr


def test_stderr_matches_the_spread_of_repeated_estimates(trained: VariationalDiffusion) -> None:
    """log_prob_stderr (second differences of neighbouring strata) is of the right size: with
    16 timesteps it is 1.0-1.5x the observed spread of independent re-estimates of an image's
    bound on this barely trained model (measured; 1.03x on average on a trained cpu model)."""
    x = held_out_bars(trained, 4)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1)
        draws = [trained.bound_terms(x, trained.draw_bound_noise(4, 16)) for _ in range(40)]
    spread = torch.stack([d["log_prob"] for d in draws]).std(0)
    reported = torch.stack([d["log_prob_stderr"] for d in draws]).pow(2).mean(0).sqrt()
    assert (reported > 0.8 * spread).all() and (reported < 2.5 * spread).all(), (reported, spread)


def nearest_distance(samples: Tensor, data: Tensor) -> float:
    """Mean over samples of the L2 distance to the nearest data image."""
    return float(torch.cdist(samples.flatten(1), data.flatten(1)).min(1).values.mean())


def test_samples_of_the_trained_model_are_closer_to_the_data_than_noise(
    trained: VariationalDiffusion, untrained: VariationalDiffusion
) -> None:
    data = to_model_input(bars(256, torch.Generator().manual_seed(9)), trained.input_spec)
    samples = trained.sample(16, generator=torch.Generator().manual_seed(3))
    assert samples.shape == (16, 1, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(samples).all()
    assert samples.min() >= -1 and samples.max() <= 1
    on_grid = (samples + 1) * 127.5
    torch.testing.assert_close(on_grid, on_grid.round())  # decoded onto the 256 levels
    noise = torch.rand(16, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(4))
    noise_distance = nearest_distance(noise * 2 - 1, data)
    trained_distance = nearest_distance(samples, data)
    untrained_distance = nearest_distance(
        untrained.sample(16, generator=torch.Generator().manual_seed(3)), data
    )
    assert trained_distance < 0.75 * noise_distance and trained_distance < untrained_distance
    deterministic = trained.sample(
        4, generator=torch.Generator().manual_seed(3), deterministic=True
    )
    again = trained.sample(4, generator=torch.Generator().manual_seed(3), deterministic=True)
    assert torch.equal(deterministic, again) and torch.isfinite(deterministic).all()


def test_ddim_steps_follow_the_probability_flow_of_the_optimal_gaussian_denoiser() -> None:
    """For x ~ N(m, c I) the probability-flow ODE keeps xi = (z - alpha m) / sqrt(alpha^2 c +
    sigma^2) fixed, so z_s = alpha_s m + (r_s / r_t)(z_t - alpha_t m) with r^2 = alpha^2 c +
    sigma^2. Many small DDIM steps converge to it; one large step does not (DDIM is a
    first-order solver)."""
    c = 0.25
    mean = torch.tensor([0.3, -0.2], dtype=torch.float64)
    model = diffusion_model(
        GaussianOptimalDenoiser(mean, c * torch.eye(2, dtype=torch.float64)), 2, eval_timesteps=4
    )
    z_t = torch.randn(5, 2, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def exact(z: Tensor, gamma_t: Tensor, gamma_s: Tensor) -> Tensor:
        (alpha_t, sigma_t), (alpha_s, sigma_s) = alpha_sigma(gamma_t), alpha_sigma(gamma_s)
        r_t, r_s = (alpha_t**2 * c + sigma_t**2).sqrt(), (alpha_s**2 * c + sigma_s**2).sqrt()
        m = mean.view(1, 2, 1, 1)
        return alpha_s * m + r_s / r_t * (z - alpha_t * m)

    def ddim(n_steps: int) -> Tensor:
        gammas = torch.linspace(-2.0, 3.0, n_steps + 1, dtype=torch.float64)  # to more noise
        z = z_t
        with torch.no_grad():
            for gamma_a, gamma_b in zip(gammas[:-1], gammas[1:], strict=True):
                z, _ = model.ddim_step(z, gamma_a, gamma_b)
        return z

    target = exact(z_t, torch.tensor(-2.0), torch.tensor(3.0)).to(torch.float64)
    errors = {n: float((ddim(n) - target).abs().max()) for n in (1, 250, 500)}
    assert errors[500] < 2e-3 * float(target.abs().max())
    assert 1.7 < errors[250] / errors[500] < 2.3  # first order: twice the steps, half the error
    assert errors[1] > 50 * errors[500]
    gamma = torch.tensor(-2.0, dtype=torch.float64)
    alpha, sigma = alpha_sigma(gamma)
    m = mean.view(1, 2, 1, 1)
    posterior_mean = m + alpha * c / (alpha**2 * c + sigma**2) * (z_t - alpha * m)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_data(z_t, gamma), posterior_mean)


# ----- the contract every density model keeps -----


@pytest.mark.parametrize("channels", [1, 3])
def test_every_preset_builds_and_scores_finite_bits_per_dim(channels: int) -> None:
    for preset in ("tiny", "cpu", "paper"):
        config = run_preset("diffusion", preset, "cifar10" if channels == 3 else "fashion-mnist")
        model = build_model(config.model, config.data)
        assert isinstance(model, VariationalDiffusion) and model.input_spec.discrete
        assert model.input_spec.shape == (channels, 32, 32)
    images = torch.randint(0, 256, (5, channels, 32, 32), dtype=torch.uint8)
    model = build_model(resolve_model("diffusion", "tiny"), DataConfig(channels=channels))
    stats = score_images(model, images, batch_size=5, seed=0)
    assert set(stats) >= {"log_prob", "prior", "diffusion", "reconstruction", "log_prob_stderr"}
    assert all(np.isfinite(v).all() and v.shape == (5,) for v in stats.values())
    torch.testing.assert_close(
        torch.from_numpy(stats["bits_per_dim"]),
        bits_per_dim(torch.from_numpy(stats["log_prob"]), model.input_spec),
    )
    assert 0.5 < float(stats["bits_per_dim"].mean()) < 20  # near "no knowledge"


def test_scores_do_not_depend_on_batch_size_and_follow_the_seed() -> None:
    model = tiny_model()
    images = bars(70, torch.Generator().manual_seed(1))
    small = score_images(model, images, batch_size=7, seed=3)
    large = score_images(model, images, batch_size=256, seed=3)
    np.testing.assert_allclose(small["log_prob"], large["log_prob"], rtol=1e-5)
    other = score_images(model, images, batch_size=256, seed=4)
    assert not np.allclose(other["log_prob"], large["log_prob"])


def test_seeded_terms_of_an_image_depend_only_on_its_generator() -> None:
    model = tiny_model().eval()
    x = held_out_bars(model, 3)

    def generators(seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    with torch.no_grad():
        batch = model.seeded_log_prob_terms(x, generators([11, 12, 13]))
        alone = model.seeded_log_prob_terms(x[2:], generators([13]))
        swapped = model.seeded_log_prob_terms(x[[2, 0]], generators([13, 11]))
    for key in ("log_prob", "diffusion", "log_prob_stderr"):
        torch.testing.assert_close(alone[key][0], batch[key][2])
        torch.testing.assert_close(swapped[key], batch[key][[2, 0]])
    with pytest.raises(ValueError, match="importance"):
        model.seeded_log_prob_terms(x, generators([1, 2, 3]), iwae_k=4)


def test_checkpoint_round_trip_and_float64_move(tmp_path: Path) -> None:
    model = tiny_model().eval()
    config = RunConfig(model=resolve_model("diffusion", "tiny"), data=DataConfig(image_size=16))
    (tmp_path / "run").mkdir()
    save_model(model, tmp_path / "run" / "model.safetensors", config, step=3)
    loaded = load_run(tmp_path / "run")
    assert loaded.config == config and isinstance(loaded.model, VariationalDiffusion)
    x = held_out_bars(model, 3)
    noise = model.draw_bound_noise(3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.bound_terms(x, noise)["log_prob"]
        torch.testing.assert_close(loaded.model.bound_terms(x, noise)["log_prob"], reference)
        model64 = tiny_model().double().eval()
        for name, buffer in model64.named_buffers():
            if buffer.is_floating_point():
                assert buffer.dtype == torch.float64, name
        noise64 = BoundNoise(noise.uniforms.double(), noise.eps.double(), noise.eps_0.double())
        log_prob64 = model64.bound_terms(x.double(), noise64)["log_prob"]
    torch.testing.assert_close(log_prob64.float(), reference, rtol=1e-4, atol=1e-2)


def test_config_rejects_too_few_evaluation_timesteps_for_a_standard_error() -> None:
    with pytest.raises(ValueError, match=">= 3"):
        build_diffusion(DiffusionConfig(eval_timesteps=2), DataConfig())


def test_the_generic_nll_score_reads_the_bound_in_bits_per_dim() -> None:
    model = tiny_model()
    images = bars(6, torch.Generator().manual_seed(0))
    stats = score_images(model, images, seed=0)
    config = RunConfig(model=resolve_model("diffusion", "tiny"), data=DataConfig(image_size=16))
    run = LoadedRun(config=config, model=model, step=0, run_dir=Path("unused"))
    data = ScoreInput(stats=stats, images=images, labels=torch.full((6,), -1), run=run)
    nll = make_score("nll")
    assert nll.applies_to(run)
    np.testing.assert_array_equal(nll.score(data), stats["bits_per_dim"].astype(np.float64))


# ----- the probability-flow ODE likelihood -----


def test_ode_log_density_of_the_optimal_gaussian_model_matches_its_closed_form() -> None:
    """For x ~ N(m, C) the flow keeps xi = A_t^-1 (z_t - alpha_t m) fixed, A_t = (alpha_t^2 C
    + sigma_t^2 I)^1/2, so the model (prior N(0, I) at t = 1) puts x_tilde_0 = z_0 / alpha_0 ~
    N(m - A_0 alpha_1 A_1^-1 m / alpha_0, (A_0 A_1^-1 / alpha_0)^2): exact trace + 50 RK4 steps
    reproduce that density (fourth order: half the steps, ~16x the error); Hutchinson's
    estimate is unbiased around the exact-trace value."""
    generator = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    eigenvalues = torch.tensor([0.5, 0.1, 0.02], dtype=torch.float64)
    cov = rotation @ torch.diag(eigenvalues) @ rotation.T
    mean = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    model = diffusion_model(GaussianOptimalDenoiser(mean, cov), 3, eval_timesteps=4)
    x = (mean + torch.randn(4, 3, generator=generator, dtype=torch.float64) * 0.5).view(4, 3, 1, 1)

    (alpha_0, sigma_0), (alpha_1, sigma_1) = (
        alpha_sigma(torch.tensor(g, dtype=torch.float64)) for g in (GAMMA_0, GAMMA_1)
    )
    a_0 = (alpha_0**2 * eigenvalues + sigma_0**2).sqrt()
    a_1 = (alpha_1**2 * eigenvalues + sigma_1**2).sqrt()
    gain = rotation @ torch.diag(a_0 / (alpha_0 * a_1)) @ rotation.T
    exact = torch.distributions.MultivariateNormal(mean - alpha_1 * gain @ mean, gain @ gain.T)
    expected = exact.log_prob(x.flatten(1))

    with torch.no_grad():
        measured = ode_log_density(model, x, steps=50, exact_trace=True)
        coarse = ode_log_density(model, x, steps=25, exact_trace=True)
        hutchinson = torch.stack(
            [ode_log_density(model, x, steps=8, generator=generator) for _ in range(48)]
        )
        exact_8 = ode_log_density(model, x, steps=8, exact_trace=True)
    torch.testing.assert_close(measured, expected, rtol=0, atol=1e-3)
    ratio = (coarse - expected).abs().max() / (measured - expected).abs().max()
    assert 8 < float(ratio) < 24
    stderr = hutchinson.std(0) / math.sqrt(len(hutchinson))
    assert ((hutchinson.mean(0) - exact_8).abs() < 4 * stderr).all()
    assert (hutchinson.std(0) > 0).all()  # the estimator does draw probes
