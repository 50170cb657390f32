"""PixelCNN++: causality, a normalised likelihood, sampling, bits/dim, save/load, training."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import torch
from safetensors.torch import load_file, save_file

from dgmood.config import DataConfig, RunConfig
from dgmood.models.autoregressive.pixelcnnpp import (
    PixelCNNpp,
    PixelCNNppConfig,
    discretized_mix_logistic_channel_log_prob,
    discretized_mix_logistic_log_prob,
    n_mix_logistic_params,
    sample_discretized_mix_logistic,
)
from dgmood.models.base import bits_per_dim
from dgmood.models.registry import build_model, model_preset
from dgmood.nn.distributions import discretized_logistic_log_mass


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and spinning threads crawl on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def levels_to_input(levels: torch.Tensor, n_bits: int = 8) -> torch.Tensor:
    """Integer levels -> the discrete input scale, as ``to_model_input`` does."""
    return levels.to(torch.float64) / (2**n_bits - 1) * 2.0 - 1.0


def zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.float64)


def perturbed_model(shape: tuple[int, int, int], seed: int = 0, **kwargs: int) -> PixelCNNpp:
    """Random float64 model in eval mode, pushed away from its (small-residual) init."""
    torch.manual_seed(seed)
    options = {"n_resnet": 1, "n_filters": 8, "n_logistic_mix": 3, "dropout": 0.0} | kwargs
    model = PixelCNNpp(shape, **options).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.0 + 0.5 * torch.randn_like(parameter))
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def random_mixture_params(
    n_channels: int, n_mix: int, height: int, width: int, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n_params = n_mix_logistic_params(n_channels, n_mix)
    params = torch.randn(1, n_params, height, width, generator=generator, dtype=torch.float64)
    return params * 2.0  # spreads means past the edges and log-scales down to the -7 floor


# --- causality ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_channels", "size", "n_downsample"), [(1, 8, 2), (3, 8, 2), (3, 4, 1), (1, 4, 0)]
)
def test_network_output_at_a_pixel_depends_only_on_earlier_pixels(
    n_channels: int, size: int, n_downsample: int
) -> None:
    model = perturbed_model((n_channels, size, size), n_downsample=n_downsample)
    x = levels_to_input(torch.randint(0, 256, (1, n_channels, size, size)))
    x.requires_grad_(True)
    params = model.mixture_params(x)
    projection = torch.randn(params.shape[1], dtype=torch.float64)
    for row, col in [(0, 1), (1, 0), (2, size - 1), (size // 2 + 1, size // 2), (size - 1, 1)]:
        (grad,) = torch.autograd.grad(
            (params[0, :, row, col] * projection).sum(), x, retain_graph=True
        )
        grad_per_pixel = grad[0].abs().sum(dim=0)
        position = row * size + col
        assert torch.all(grad_per_pixel.flatten()[position:] == 0), (row, col)
        # no blind spot: the left, upper-left, upper and upper-right neighbours all matter
        for d_row, d_col in [(0, -1), (-1, -1), (-1, 0), (-1, 1)]:
            r, c = row + d_row, col + d_col
            if 0 <= r and 0 <= c < size:
                assert grad_per_pixel[r, c] > 0, ((row, col), (r, c))


@pytest.mark.parametrize("n_channels", [1, 3])
def test_log_prob_of_each_subpixel_depends_only_on_earlier_subpixels(n_channels: int) -> None:
    size = 4
    model = perturbed_model((n_channels, size, size), n_downsample=1)
    x = levels_to_input(torch.randint(0, 256, (1, n_channels, size, size)))
    x.requires_grad_(True)
    channel_log_prob = discretized_mix_logistic_channel_log_prob(x, model.mixture_params(x))
    for row, col in [(0, 0), (1, 2), (3, 3)]:
        for channel in range(n_channels):
            (grad,) = torch.autograd.grad(
                channel_log_prob[0, channel, row, col], x, retain_graph=True
            )
            # raster order over pixels, then R -> G -> B within a pixel
            grad_raster = grad[0].permute(1, 2, 0).flatten()
            index = (row * size + col) * n_channels + channel
            assert torch.all(grad_raster[index + 1 :] == 0), (row, col, channel)
            assert grad_raster[index] != 0  # the mass of x_d depends on x_d itself
            if index > 0:
                assert torch.any(grad_raster[:index] != 0)
            for previous in range(channel):  # the coupling: G sees R, B sees R and G
                assert grad_raster[index - channel + previous] != 0, (channel, previous)


def test_model_is_a_normalised_distribution_over_all_images() -> None:
    # 3 channels, 2 levels, 2x2 pixels: 2**12 images, whose masses must sum to exactly 1
    model = perturbed_model((3, 2, 2), n_downsample=1, n_bits=1)
    images = torch.tensor(list(itertools.product([0, 1], repeat=12))).reshape(-1, 3, 2, 2)
    with torch.no_grad():
        log_prob = model.log_prob(levels_to_input(images, n_bits=1))
    assert torch.logsumexp(log_prob, dim=0).item() == pytest.approx(0.0, abs=1e-9)


# --- discretized logistic mixture -------------------------------------------------------


def test_discretized_logistic_log_mass_matches_closed_form() -> None:
    def sigmoid(value: float) -> float:
        return 1.0 / (1.0 + math.exp(-value))

    mean, scale = 0.1, 0.05
    log_scale = torch.tensor(math.log(scale), dtype=torch.float64)
    half_bin = 1.0 / 255.0
    for level in [0, 100, 140, 255]:
        x = -1.0 + 2.0 * level / 255.0
        upper = sigmoid((x + half_bin - mean) / scale) if level < 255 else 1.0
        lower = sigmoid((x - half_bin - mean) / scale) if level > 0 else 0.0
        log_mass = pixel_log_mass(
            torch.tensor(x, dtype=torch.float64), torch.tensor(mean, dtype=torch.float64), log_scale
        )
        assert log_mass.item() == pytest.approx(math.log(upper - lower), rel=1e-9)


def pixel_log_mass(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """One component's log mass on PixelCNN++'s 8-bit ``[-1, 1]`` grid."""
    return discretized_logistic_log_mass(x, mean, log_scale, low=-1.0, high=1.0, n_levels=256)


def test_rgb_mixture_matches_explicit_formula() -> None:
    # p(x) = sum_k pi_k P(r; m_r) P(g; m_g + a r) P(b; m_b + b r + c g), tanh'd a, b, c
    params = random_mixture_params(3, n_mix=2, height=1, width=1, seed=3)[0, :, 0, 0]
    logits, means, log_scales = params[:2], params[2:8].view(3, 2), params[8:14].view(3, 2)
    coeffs = torch.tanh(params[14:20].view(3, 2))
    log_scales = log_scales.clamp(min=-7.0)
    red, green, blue = levels_to_input(torch.tensor([30, 200, 128]))
    mass = torch.zeros((), dtype=torch.float64)
    for k in range(2):
        coupled = [
            means[0, k],
            means[1, k] + coeffs[0, k] * red,
            means[2, k] + coeffs[1, k] * red + coeffs[2, k] * green,
        ]
        component = torch.softmax(logits, dim=0)[k]
        for channel, value in enumerate([red, green, blue]):
            log_mass = pixel_log_mass(value, coupled[channel], log_scales[channel, k])
            component = component * log_mass.exp()
        mass = mass + component
    x = torch.stack([red, green, blue]).view(1, 3, 1, 1)
    log_prob = discretized_mix_logistic_log_prob(x, params.view(1, -1, 1, 1))
    assert log_prob.item() == pytest.approx(mass.log().item(), rel=1e-12)


def test_one_channel_mixture_sums_to_one_over_all_levels() -> None:
    params = random_mixture_params(1, n_mix=4, height=4, width=4)
    x = levels_to_input(torch.arange(256)).reshape(256, 1, 1, 1).expand(256, 1, 4, 4)
    log_prob = discretized_mix_logistic_log_prob(x, params.expand(256, -1, -1, -1))
    assert torch.allclose(torch.logsumexp(log_prob, dim=0), zeros(4, 4), atol=1e-5)


def test_rgb_channel_conditionals_each_sum_to_one() -> None:
    params = random_mixture_params(3, n_mix=4, height=3, width=3).expand(256, -1, -1, -1)
    fixed = levels_to_input(torch.randint(0, 256, (1, 3, 3, 3))).expand(256, -1, -1, -1)
    all_levels = levels_to_input(torch.arange(256)).reshape(256, 1, 1)
    for channel in range(3):
        x = fixed.clone()
        x[:, channel] = all_levels  # vary one channel, hold the earlier ones fixed
        log_prob = discretized_mix_logistic_channel_log_prob(x, params)[:, channel]
        assert torch.allclose(torch.logsumexp(log_prob, dim=0), zeros(3, 3), atol=1e-5)


def test_rgb_joint_sums_to_one_at_three_bits() -> None:
    levels = torch.tensor(list(itertools.product(range(8), repeat=3)))  # all 512 colours
    x = levels_to_input(levels, n_bits=3).reshape(512, 3, 1, 1).expand(512, 3, 2, 2)
    params = random_mixture_params(3, n_mix=5, height=2, width=2).expand(512, -1, -1, -1)
    log_prob = discretized_mix_logistic_log_prob(x, params, n_bits=3)
    # tails below 1e-5 use the mid-bin density approximation: exact up to ~1e-9
    assert torch.allclose(torch.logsumexp(log_prob, dim=0), zeros(2, 2), atol=1e-7)
    channel_log_prob = discretized_mix_logistic_channel_log_prob(x, params, n_bits=3)
    assert torch.allclose(channel_log_prob.sum(dim=1), log_prob, atol=1e-12)


def test_uniform_mixture_gives_eight_bits_per_dim() -> None:
    # 256 equally weighted, narrow components, one per level: p(level) = 1/256 per subpixel
    model = PixelCNNpp((1, 4, 4), n_resnet=1, n_filters=4, n_logistic_mix=256, dropout=0.0)
    model = model.double().eval()
    bias = torch.cat(
        [torch.zeros(256), levels_to_input(torch.arange(256)), torch.full((256,), -10.0)]
    )
    with torch.no_grad():
        model.network.out.parametrizations.weight.original0.zero_()  # weight-norm gain
        model.network.out.bias.copy_(bias)
    x = levels_to_input(torch.randint(0, 256, (3, 1, 4, 4)))
    bpd = bits_per_dim(model.log_prob(x), model.input_spec)
    assert torch.allclose(bpd, torch.full((3,), 8.0, dtype=torch.float64), atol=1e-3)


# --- sampling ---------------------------------------------------------------------------


def test_samples_follow_the_model_distribution() -> None:
    # 3 channels, 2 levels, 1x2 pixels: compare sample frequencies with exact masses
    model = perturbed_model((3, 1, 2), n_downsample=0, n_bits=1, n_logistic_mix=2)
    with torch.no_grad():
        model.network.out.parametrizations.weight.original0.mul_(4.0)  # sharpen
        images = torch.tensor(list(itertools.product([0, 1], repeat=6))).reshape(-1, 3, 1, 2)
        probs = model.log_prob(levels_to_input(images, n_bits=1)).exp()
    # precondition: dependence between subpixels matters, so a sampler ignoring it fails
    subpixel_marginals = [
        probs[images.flatten(1)[:, d] == 1].sum().item() for d in range(images[0].numel())
    ]
    independent = torch.tensor(
        [
            math.prod(m if v else 1 - m for m, v in zip(subpixel_marginals, row, strict=True))
            for row in images.flatten(1).tolist()
        ],
        dtype=torch.float64,
    )
    assert 0.5 * (probs - independent).abs().sum() > 0.15

    torch.manual_seed(1)
    samples = model.sample(8000)
    assert samples.shape == (8000, 3, 1, 2) and not model.training
    sample_levels = torch.round((samples + 1.0) / 2.0).long().flatten(1)
    codes = sample_levels @ (2 ** torch.arange(5, -1, -1))
    frequencies = torch.bincount(codes, minlength=64).double() / 8000
    assert 0.5 * (frequencies - probs).abs().sum() < 0.06


def test_sampler_applies_channel_coupling_on_the_grid() -> None:
    # one component and a tiny temperature: the coupled means alone fix G and B
    n_mix = 1
    params = torch.zeros(1, n_mix_logistic_params(3, n_mix), 1, 1, dtype=torch.float64)
    means = torch.tensor([0.5, 0.0, -0.2])
    coeffs = torch.atanh(torch.tensor([0.5, -0.5, 0.25]))  # G<-R, B<-R, B<-G
    params[0, 1:4, 0, 0] = means
    params[0, 4:7, 0, 0] = -7.0  # log-scales
    params[0, 7:10, 0, 0] = coeffs
    x = sample_discretized_mix_logistic(params.expand(50, -1, -1, -1), 3, temperature=1e-4)
    x = x[:, :, 0, 0]

    def snap(value: float) -> float:
        return round((value + 1) / 2 * 255) / 255 * 2 - 1

    red = snap(0.5)
    green = snap(0.0 + 0.5 * red)  # coupling uses the snapped red level
    blue = snap(-0.2 - 0.5 * red + 0.25 * green)
    expected = torch.tensor([red, green, blue], dtype=torch.float64)
    assert torch.allclose(x, expected.expand(50, 3), atol=1e-12)


# --- the DensityModel contract ----------------------------------------------------------


def test_state_dict_round_trip_gives_identical_outputs(tmp_path: object) -> None:
    model = perturbed_model((3, 8, 8), seed=0)
    other = perturbed_model((3, 8, 8), seed=1)
    x = levels_to_input(torch.randint(0, 256, (2, 3, 8, 8)))
    with torch.no_grad():
        assert not torch.equal(model.log_prob(x), other.log_prob(x))
        path = f"{tmp_path}/model.safetensors"
        save_file(model.state_dict(), path)
        other.load_state_dict(load_file(path))
        assert torch.equal(model.log_prob(x), other.log_prob(x))


def test_training_on_a_fixed_batch_lowers_bits_per_dim() -> None:
    torch.manual_seed(0)
    model = PixelCNNpp((1, 8, 8), n_resnet=1, n_filters=16, n_logistic_mix=3, dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    # smooth images (horizontal ramps), so that there is structure to learn
    ramp = torch.linspace(0, 255, 8).round().reshape(1, 1, 1, 8)
    offsets = torch.randint(0, 64, (8, 1, 1, 1), generator=generator)
    x = levels_to_input((ramp * 0.7 + offsets).clamp(0, 255)).float().expand(8, 1, 8, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        loss, terms = model.training_loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert terms["log_prob"].shape == (8,)
    assert losses[-1] < losses[0] - 1.0, losses


def test_registry_builds_presets_and_config_round_trips() -> None:
    data = DataConfig(dataset="cifar10", channels=3, image_size=32)
    config = model_preset("pixelcnnpp", "tiny")
    model = build_model(config, data)
    assert isinstance(model, PixelCNNpp)
    assert model.input_spec.shape == (3, 32, 32)
    assert model.input_spec.discrete and model.input_spec.log_bin_volume() == 0.0
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    loss, terms = model.training_loss(x)
    loss.backward()
    assert terms["log_prob"].shape == (4,) and torch.isfinite(loss)

    run = RunConfig(model=config, data=data)
    assert RunConfig.from_yaml(run.to_yaml()) == run
    paper = model_preset("pixelcnnpp", "paper")
    assert (paper.n_resnet, paper.n_filters, paper.n_logistic_mix, paper.dropout) == (
        5,
        160,
        10,
        0.5,
    )
    assert isinstance(paper, PixelCNNppConfig)


def test_wrong_shapes_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        PixelCNNpp((1, 28, 28), n_resnet=1, n_filters=4, n_downsample=3)
    model = PixelCNNpp((1, 8, 8), n_resnet=1, n_filters=4)
    with pytest.raises(ValueError, match="expects"):
        model.log_prob(torch.zeros(2, 3, 8, 8))
