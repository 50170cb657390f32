"""The one discretized logistic: normalised, exact in the tails, shared by PixelCNN++ and VAE."""

from __future__ import annotations

import math

import pytest
import torch

from dgmood.models.autoregressive.pixelcnnpp import discretized_mix_logistic_log_prob
from dgmood.models.latent.likelihoods import DiscretizedLogisticLikelihood
from dgmood.nn.distributions import discretized_logistic_log_mass


def brute_force_log_mass(x: float, mean: float, scale: float, half_bin: float) -> float:
    """float64 ``log(sigmoid(b) - sigmoid(a))`` of an interior bin; accurate off the far tail."""
    upper = 1.0 / (1.0 + math.exp(-(x + half_bin - mean) / scale))
    lower = 1.0 / (1.0 + math.exp(-(x - half_bin - mean) / scale))
    return math.log(upper - lower)


def test_pixelcnnpp_tail_bin_is_exact_where_the_old_pdf_fallback_was_two_nats_off() -> None:
    # scale e^-7 (PixelCNN++'s floor), bin 20 scales from the mean: mass ~1.5e-7 < 1e-5, where
    # the old code used pdf(centre) * width and was 2.1 nats too low
    log_scale = -7.0
    scale = math.exp(log_scale)
    x = 0.0
    mean = x - 20 * scale
    params = torch.tensor([0.0, mean, log_scale], dtype=torch.float64).view(1, 3, 1, 1)
    log_prob = discretized_mix_logistic_log_prob(
        torch.zeros(1, 1, 1, 1, dtype=torch.float64), params
    )
    expected = brute_force_log_mass(x, mean, scale, 1.0 / 255.0)
    assert expected == pytest.approx(-15.70, abs=0.01)
    assert log_prob.item() == pytest.approx(expected, abs=1e-9)


GRID = {"pixelcnnpp": (-1.0, 1.0), "vae": (0.0, 1.0)}


@pytest.mark.parametrize("grid", sorted(GRID))
@pytest.mark.parametrize(
    ("mean", "log_scale"),
    [
        (0.3, -10.0),  # scale far below one bin: nearly all mass in one bin
        (0.0, -7.0),
        (25.0, -7.0),  # mean far above the range: everything in the top bin
        (-25.0, -3.0),  # far below: everything in the bottom bin
        (1e3, 2.0),
        (0.5, 5.0),  # scale far above the range: nearly uniform tails
        (0.5 / 255, -9.0),  # mean on a bin edge
    ],
)
def test_masses_over_all_256_levels_sum_to_one(grid: str, mean: float, log_scale: float) -> None:
    low, high = GRID[grid]
    x = torch.linspace(low, high, 256, dtype=torch.float64)
    log_mass = discretized_logistic_log_mass(
        x,
        torch.tensor(mean, dtype=torch.float64),
        torch.tensor(log_scale, dtype=torch.float64),
        low=low,
        high=high,
        n_levels=256,
    )
    assert torch.isfinite(log_mass).all()
    assert abs(torch.logsumexp(log_mass, 0).item()) < 1e-6


def test_interior_bins_match_float64_brute_force_where_it_is_accurate() -> None:
    generator = torch.Generator().manual_seed(0)
    n = 2000
    x = torch.randint(1, 255, (n,), generator=generator).double() / 255  # interior levels only
    mean = torch.rand(n, generator=generator, dtype=torch.float64) * 1.4 - 0.2
    log_scale = torch.rand(n, generator=generator, dtype=torch.float64) * 7 - 6.5
    log_mass = discretized_logistic_log_mass(x, mean, log_scale, low=0.0, high=1.0, n_levels=256)
    half_bin = 0.5 / 255
    scale = log_scale.exp()
    brute = torch.log(
        torch.sigmoid((x + half_bin - mean) / scale) - torch.sigmoid((x - half_bin - mean) / scale)
    )
    accurate = brute > math.log(1e-8)  # the difference keeps >= 8 significant digits here
    assert accurate.sum() > 1000
    torch.testing.assert_close(log_mass[accurate], brute[accurate], rtol=0, atol=1e-7)


def test_float32_tail_stays_finite_and_matches_float64() -> None:
    # a bin 60 scales from the mean: the float32 sigmoid difference underflows to 0
    args = {"low": 0.0, "high": 1.0, "n_levels": 256}
    x, mean, log_scale = torch.tensor(0.5), torch.tensor(0.5 - 60 * math.exp(-7.0)), -7.0
    single = discretized_logistic_log_mass(x, mean, torch.tensor(log_scale), **args)
    double = discretized_logistic_log_mass(
        x.double(), mean.double(), torch.tensor(log_scale, dtype=torch.float64), **args
    )
    assert torch.isfinite(single)
    assert single.item() == pytest.approx(double.item(), rel=1e-5)


def test_vae_likelihood_and_pixelcnnpp_use_the_same_masses() -> None:
    # one level k: VAE location m on [0, 1] equals PixelCNN++ mean 2m - 1 with scale doubled
    level = torch.arange(256, dtype=torch.float64)
    location, log_scale = 0.37, -4.0
    params = torch.tensor([location, log_scale], dtype=torch.float64).view(1, 1, 2, 1, 1)
    vae = DiscretizedLogisticLikelihood().log_mass(
        params.expand(256, 1, 2, 1, 1), (level / 255).view(256, 1, 1, 1)
    )
    mixture = torch.tensor([0.0, 2 * location - 1, log_scale + math.log(2)], dtype=torch.float64)
    pixelcnnpp = discretized_mix_logistic_log_prob(
        (level / 255 * 2 - 1).view(256, 1, 1, 1), mixture.view(1, 3, 1, 1).expand(256, 3, 1, 1)
    )
    torch.testing.assert_close(vae.flatten(), pixelcnnpp.flatten(), rtol=0, atol=1e-12)
