"""VAE family: likelihood normalisation, KL, flow posterior log-density, ELBO/IWAE, round trip."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from dgmood.config import DataConfig, RunConfig
from dgmood.data.dequantize import to_model_input
from dgmood.models.base import bits_per_dim
from dgmood.models.latent.likelihoods import (
    BernoulliLikelihood,
    CategoricalLikelihood,
    DiscretizedLogisticLikelihood,
    PixelLikelihood,
)
from dgmood.models.latent.posteriors import (
    AffineCoupling,
    GaussianPosterior,
    RealNVPPosterior,
    standard_normal_log_prob,
)
from dgmood.models.latent.vae import VAE, VAEConfig, build_vae
from dgmood.models.registry import build_model, model_preset, model_presets, resolve_model

TINY = VAEConfig(latent_dim=8, base_channels=8, feature_dim=32)


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    """Move every parameter away from its (often identity or zero) initialisation."""
    generator = _seeded(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(scale * noise)


def _bars_uint8(n: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Structured 32x32 uint8 images: 1-3 random horizontal or vertical bars on black."""
    generator = _seeded(seed)
    images = torch.zeros(n, channels, 32, 32, dtype=torch.uint8)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            start = int(torch.randint(2, 26, (1,), generator=generator))
            width = int(torch.randint(2, 5, (1,), generator=generator))
            if torch.rand(1, generator=generator) < 0.5:
                images[i, :, start : start + width, 4:28] = 255
            else:
                images[i, :, 4:28, start : start + width] = 255
    return images


def _all_level_log_masses(likelihood: PixelLikelihood, params: torch.Tensor) -> torch.Tensor:
    """log_mass evaluated at every level, independently of ``level_log_masses``."""
    n, c, _, h, w = params.shape
    masses = []
    for k in range(likelihood.n_levels):
        x = torch.full((n, c, h, w), float(k), dtype=params.dtype) / (likelihood.n_levels - 1)
        masses.append(likelihood.log_mass(params, x))
    return torch.stack(masses, dim=2)


def _random_params(likelihood: PixelLikelihood, dtype: torch.dtype) -> torch.Tensor:
    generator = _seeded(1)
    shape = (3, 2, likelihood.params_per_subpixel, 4, 5)
    params = 5.0 * torch.randn(shape, generator=generator, dtype=dtype)
    if isinstance(likelihood, DiscretizedLogisticLikelihood):
        # locations inside and outside [0, 1], scales from far below one bin to wider than [0, 1]
        params[:, :, 0] = torch.empty(shape[:2] + shape[3:], dtype=dtype).uniform_(
            -0.5, 1.5, generator=generator
        )
        params[:, :, 1] = torch.empty(shape[:2] + shape[3:], dtype=dtype).uniform_(
            -12.0, 1.0, generator=generator
        )
    return params


LIKELIHOOD_CLASSES = [BernoulliLikelihood, CategoricalLikelihood, DiscretizedLogisticLikelihood]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("likelihood_class", LIKELIHOOD_CLASSES)
def test_likelihood_masses_sum_to_one_over_support(likelihood_class, dtype):
    likelihood = likelihood_class()
    params = _random_params(likelihood, dtype)
    log_masses = _all_level_log_masses(likelihood, params)
    assert log_masses.shape[2] == 2**likelihood.n_bits
    assert torch.isfinite(log_masses).all()
    total = torch.logsumexp(log_masses, dim=2)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(total, torch.zeros_like(total), atol=tolerance, rtol=0)
    torch.testing.assert_close(likelihood.level_log_masses(params), log_masses)


def test_discretized_logistic_matches_cdf_differences():
    likelihood = DiscretizedLogisticLikelihood()
    location, log_scale = 0.4, -3.0
    params = torch.tensor([location, log_scale], dtype=torch.float64).view(1, 1, 2, 1, 1)
    edges = (torch.arange(257, dtype=torch.float64) - 0.5) / 255
    cdf_values = torch.sigmoid((edges - location) / math.exp(log_scale))
    cdf_values[0], cdf_values[-1] = 0.0, 1.0
    expected = (cdf_values[1:] - cdf_values[:-1]).log()
    actual = _all_level_log_masses(likelihood, params).flatten()
    torch.testing.assert_close(actual, expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("likelihood_class", LIKELIHOOD_CLASSES)
def test_likelihood_sampler_matches_its_masses(likelihood_class):
    likelihood = likelihood_class()
    params = _random_params(likelihood, torch.float32)[:1, :1, :, :1, :1]
    probs = likelihood.level_log_masses(params).exp().flatten()
    draws = likelihood.sample(params.expand(20000, -1, -1, -1, -1), _seeded(3)).flatten()
    levels = likelihood.level_index(draws)
    expected_mean_level = (probs * torch.arange(likelihood.n_levels)).sum()
    level_std = (probs * torch.arange(likelihood.n_levels) ** 2).sum() - expected_mean_level**2
    standard_error = level_std.clamp(min=1e-6).sqrt() / math.sqrt(draws.numel())
    assert abs(levels.float().mean() - expected_mean_level) < 5 * standard_error + 1e-3
    mean = likelihood.mean(params).flatten()
    torch.testing.assert_close(mean, (probs * likelihood.level_values(probs)).sum().view(1))


def test_input_specs_map_pixels_onto_the_likelihood_support():
    pixels = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8).view(1, 1, 1, 6)
    bernoulli_spec = BernoulliLikelihood().input_spec((1, 1, 6))
    assert to_model_input(pixels, bernoulli_spec).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    categorical = CategoricalLikelihood()
    x = to_model_input(pixels, categorical.input_spec((1, 1, 6)))
    assert categorical.level_index(x).flatten().tolist() == [0, 1, 127, 128, 254, 255]
    for likelihood_class in LIKELIHOOD_CLASSES:
        spec = likelihood_class().input_spec((3, 32, 32))
        assert spec.discrete and spec.log_bin_volume() == 0.0


def test_gaussian_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    posterior = GaussianPosterior(feature_dim=5, latent_dim=4).double()
    _perturb(posterior, 0.5)
    features = torch.randn(3, 5, dtype=torch.float64)
    z, log_q = posterior.rsample_and_log_prob(features, n_samples=200_000, generator=_seeded(1))
    mean, log_std = posterior.mean_and_log_std(features)
    reference = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q, reference)
    kl_samples = log_q - standard_normal_log_prob(z)
    monte_carlo = kl_samples.mean(0)
    standard_error = kl_samples.std(0) / math.sqrt(z.shape[0])
    analytic = posterior.analytic_kl(features)
    assert (analytic > 0.1).all(), "perturbed posterior should be far from the prior"
    assert ((analytic - monte_carlo).abs() < 4 * standard_error).all()


def test_affine_coupling_inverse_undoes_forward_after_perturbation():
    coupling = AffineCoupling(torch.arange(6) % 2 == 0, context_dim=3, hidden_dim=16).double()
    _perturb(coupling, 0.5)
    z, context = torch.randn(7, 6, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    y, forward_log_det = coupling(z, context)
    assert not torch.allclose(y, z)
    recovered, inverse_log_det = coupling.inverse(y, context)
    torch.testing.assert_close(recovered, z)
    torch.testing.assert_close(inverse_log_det, -forward_log_det)


def test_realnvp_posterior_log_q_matches_brute_force_change_of_variables():
    posterior = RealNVPPosterior(
        feature_dim=6, latent_dim=5, n_flows=3, hidden_dim=16, context_dim=4
    ).double()
    _perturb(posterior, 0.3)
    features = torch.randn(3, 6, dtype=torch.float64, generator=_seeded(2))
    noise = torch.randn(1, 3, 5, dtype=torch.float64, generator=_seeded(3))
    z, log_q = posterior.transform_noise(features, noise)
    for b in range(3):

        def noise_to_latent(eps: torch.Tensor, b: int = b) -> torch.Tensor:
            return posterior.transform_noise(features[b : b + 1], eps.view(1, 1, 5))[0]

        jacobian = torch.autograd.functional.jacobian(noise_to_latent, noise[0, b])
        _, log_abs_det = torch.linalg.slogdet(jacobian.view(5, 5))
        expected = standard_normal_log_prob(noise[0, b]) - log_abs_det
        torch.testing.assert_close(log_q[0, b], expected)
    # the flow posterior's KL is the single-sample estimate at the drawn z
    kl = posterior.kl_to_prior(features, z, log_q)
    torch.testing.assert_close(kl, log_q - standard_normal_log_prob(z))


@pytest.mark.parametrize(
    ("likelihood", "expected_bits"), [("categorical", 8.0), ("bernoulli", 1.0)]
)
def test_uniform_decoder_gives_known_bits_per_dim(likelihood, expected_bits):
    model = build_vae(replace(TINY, likelihood=likelihood), DataConfig(channels=3))
    with torch.no_grad():
        model.decoder.output_layer.weight.zero_()
        model.decoder.output_layer.bias.zero_()
    x = to_model_input(_bars_uint8(4, channels=3), model.input_spec)
    loss, terms = model.training_loss(x)
    spec = model.input_spec
    torch.testing.assert_close(
        bits_per_dim(terms["reconstruction"], spec), torch.full((4,), expected_bits)
    )
    kl_bits = terms["kl"] / (spec.num_dims * math.log(2.0))
    assert (terms["kl"] > 0).all()
    torch.testing.assert_close(bits_per_dim(terms["elbo"], spec), expected_bits + kl_bits)
    torch.testing.assert_close(loss, (expected_bits + kl_bits).mean())


def test_beta_weights_only_the_kl_in_the_training_loss():
    model = build_vae(replace(TINY, beta=0.25), DataConfig(channels=1))
    x = to_model_input(_bars_uint8(4), model.input_spec)
    torch.manual_seed(0)
    loss, terms = model.training_loss(x)
    expected = bits_per_dim(terms["reconstruction"] - 0.25 * terms["kl"], model.input_spec)
    torch.testing.assert_close(loss, expected.mean())
    torch.testing.assert_close(terms["log_prob"], terms["reconstruction"] - terms["kl"])


@pytest.mark.parametrize("posterior", ["gaussian", "realnvp"])
def test_iwae_is_exact_when_posterior_is_prior_and_decoder_ignores_z(posterior):
    model = build_vae(replace(TINY, posterior=posterior), DataConfig(channels=1))
    _perturb(model, 0.05)
    with torch.no_grad():
        model.decoder.layers[0].weight.zero_()  # p(x | z) no longer depends on z
        for parameter in model.posterior.parameters():
            parameter.zero_()  # q(z | x) = N(0, I) = p(z)
    x = to_model_input(_bars_uint8(5), model.input_spec)
    with torch.no_grad():
        terms = model.log_prob_terms(x, generator=_seeded(0))
        # here log p(x) = log p(x | z) exactly, so every importance weight equals it
        torch.testing.assert_close(terms["kl"], torch.zeros(5), atol=1e-5, rtol=0)
        for k in (1, 7, 300):
            iwae = model.iwae_log_prob(x, k, max_decoded_images=64, generator=_seeded(k))
            torch.testing.assert_close(iwae, terms["reconstruction"], atol=1e-3, rtol=1e-6)


@pytest.fixture(scope="module")
def trained_bernoulli_vae() -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    model = build_vae(replace(TINY, likelihood="bernoulli"), DataConfig(channels=1))
    images = to_model_input(_bars_uint8(512, seed=1), model.input_spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(0)
    for _ in range(200):
        batch = images[torch.randint(0, len(images), (16,), generator=order)]
        loss, _ = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out = to_model_input(_bars_uint8(16, seed=2), model.input_spec)
    return model.eval(), held_out


def test_training_lowers_the_negative_elbo(trained_bernoulli_vae):
    model, x = trained_bernoulli_vae
    untrained = build_vae(replace(TINY, likelihood="bernoulli"), DataConfig(channels=1))
    with torch.no_grad():
        trained_bpd = bits_per_dim(model.log_prob(x), model.input_spec).mean()
        untrained_bpd = bits_per_dim(untrained.log_prob(x), untrained.input_spec).mean()
    assert trained_bpd < 0.5 * untrained_bpd


def test_iwae_bound_is_above_elbo_and_grows_with_k(trained_bernoulli_vae):
    model, x = trained_bernoulli_vae
    with torch.no_grad():
        elbo_per_image = model.log_prob_terms(x, n_samples=100, generator=_seeded(0))["elbo"]
        elbo = elbo_per_image.mean()
        iwae = {k: model.iwae_log_prob(x, k, generator=_seeded(k)).mean() for k in (1, 5, 50)}
        # many independent single-sample bounds average to the ELBO, image by image
        iwae_1_repeated = model.iwae_log_prob(x.repeat(50, 1, 1, 1), 1, generator=_seeded(9))
    differences = iwae_1_repeated.view(50, len(x)) - elbo_per_image
    assert differences.mean().abs() < 4 * differences.std() / math.sqrt(differences.numel())
    assert elbo < iwae[5] < iwae[50]
    assert iwae[1] < iwae[5]
    assert iwae[50] - elbo > 0.1, "trained posterior should leave a visible IWAE gap"


def test_reconstruct_and_sample_stay_on_the_pixel_support(trained_bernoulli_vae):
    model, x = trained_bernoulli_vae
    mean = model.reconstruct(x)
    mode = model.reconstruct(x, statistic="mode")
    assert mean.shape == x.shape and ((mean >= 0) & (mean <= 1)).all()
    assert set(mode.unique().tolist()) <= {0.0, 1.0}
    # each reconstruction is closer to its own input than to another image's
    other = x.roll(1, dims=0)
    assert (mean - x).abs().mean() < 0.7 * (mean - other).abs().mean()
    samples = model.sample(6, generator=_seeded(0))
    assert samples.shape == (6, 1, 32, 32)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}


def test_wrong_image_shape_raises_a_clear_error():
    model = build_vae(TINY, DataConfig(channels=3))
    with pytest.raises(ValueError, match="expects"):
        model.log_prob(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="32x32"):
        build_vae(TINY, DataConfig(image_size=28))
    with pytest.raises(ValueError, match="k >= 1"):
        model.iwae_log_prob(torch.zeros(2, 3, 32, 32), 0)


def test_presets_and_aliases_pick_the_right_parts():
    assert {"tiny", "cpu", "paper"} <= set(model_presets("vae"))
    assert isinstance(
        build_vae(model_preset("vae", "tiny"), DataConfig()).posterior, GaussianPosterior
    )
    realnvp = build_vae(resolve_model("vae-realnvp", "tiny"), DataConfig())
    assert isinstance(realnvp.posterior, RealNVPPosterior)
    for alias, likelihood_class in [
        ("vae-bernoulli", BernoulliLikelihood),
        ("vae-categorical", CategoricalLikelihood),
        ("vae-logistic", DiscretizedLogisticLikelihood),
    ]:
        assert isinstance(
            build_vae(resolve_model(alias, "tiny"), DataConfig()).likelihood, likelihood_class
        )
    with pytest.raises(ValueError, match="unknown likelihood"):
        build_vae(replace(TINY, likelihood="gaussian"), DataConfig())  # type: ignore[arg-type]


def test_tiny_preset_runs_forward_and_backward():
    model = build_model(model_preset("vae", "tiny"), DataConfig(channels=3))
    x = to_model_input(_bars_uint8(4, channels=3), model.input_spec)
    loss, _ = model.training_loss(x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("posterior", ["gaussian", "realnvp"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, posterior):
    config = RunConfig(
        model=replace(TINY, posterior=posterior, likelihood="logistic", n_posterior_flows=2),
        data=DataConfig(channels=3),
    )
    model = build_model(config.model, config.data)
    _perturb(model, 0.02)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.yaml").write_text(config.to_yaml())

    loaded_config = RunConfig.from_yaml((tmp_path / "config.yaml").read_text())
    assert loaded_config == config
    loaded = build_model(loaded_config.model, loaded_config.data)
    loaded.load_state_dict(load_file(str(tmp_path / "model.safetensors")))

    x = to_model_input(_bars_uint8(3, channels=3), model.input_spec)
    with torch.no_grad():
        for key, value in model.log_prob_terms(x, generator=_seeded(5)).items():
            assert torch.equal(value, loaded.log_prob_terms(x, generator=_seeded(5))[key])
        assert torch.equal(
            model.iwae_log_prob(x, 4, generator=_seeded(6)),
            loaded.iwae_log_prob(x, 4, generator=_seeded(6)),
        )
        assert torch.equal(model.reconstruct(x), loaded.reconstruct(x))
        assert torch.equal(
            model.sample(2, generator=_seeded(7)), loaded.sample(2, generator=_seeded(7))
        )
        # a different seed gives different noise: the comparison above is not vacuous
        assert not torch.equal(
            model.log_prob_terms(x, generator=_seeded(5))["reconstruction"],
            model.log_prob_terms(x, generator=_seeded(8))["reconstruction"],
        )
