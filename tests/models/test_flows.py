"""Flow bijections: log-determinants against brute-force Jacobians, inverses, presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgmood.config import DataConfig
from dgmood.models.flows.actnorm import ActNorm
from dgmood.models.flows.bijection import Bijection, Compose, Squeeze
from dgmood.models.flows.conv1x1 import InvertibleConv1x1, LUInvertibleConv1x1
from dgmood.models.flows.coupling import (
    Additive,
    AffineSigmoid,
    AffineTanh,
    ChannelCoupling,
    MaskedCoupling,
    checkerboard_mask,
)
from dgmood.models.registry import build_model, resolve_model
from dgmood.nn.layers import GlowConditioner, ResNetConditioner

SHAPE = (4, 4, 4)  # C, H, W: small enough for a dense Jacobian


def perturb(module: nn.Module, scale: float = 0.3) -> nn.Module:
    """Move every parameter away from its (often identity) initialisation."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return module


def brute_force_log_det(bijection: Bijection, x: torch.Tensor) -> torch.Tensor:
    """log|det d forward(x_i) / d x_i| for each sample, from the dense Jacobian."""
    out = []
    for sample in x:

        def f(flat: torch.Tensor) -> torch.Tensor:
            return bijection(flat.view(1, *x.shape[1:]))[0].reshape(-1)

        jacobian = torch.autograd.functional.jacobian(f, sample.reshape(-1))
        out.append(torch.linalg.slogdet(jacobian)[1])
    return torch.stack(out)


def make_bijections() -> dict[str, Bijection]:
    c, h, w = SHAPE
    return {
        "actnorm": ActNorm(c),
        "conv1x1": InvertibleConv1x1(c),
        "conv1x1_lu": LUInvertibleConv1x1(c),
        "coupling_affine_sigmoid": ChannelCoupling(c, GlowConditioner(2, 4, 8), AffineSigmoid()),
        "coupling_additive": ChannelCoupling(c, GlowConditioner(2, 2, 8), Additive()),
        "coupling_affine_tanh": ChannelCoupling(c, GlowConditioner(2, 4, 8), AffineTanh(2)),
        "coupling_checkerboard": MaskedCoupling(
            checkerboard_mask(h, w, 0), ResNetConditioner(c, 2 * c, 8, 1), AffineTanh(c)
        ),
        "squeeze": Squeeze(),
        "glow_step": Compose(
            [
                ActNorm(c),
                LUInvertibleConv1x1(c),
                ChannelCoupling(c, GlowConditioner(2, 4, 8), AffineSigmoid()),
            ]
        ),
    }


@pytest.mark.parametrize("name", list(make_bijections()))
def test_log_det_matches_brute_force_jacobian(name: str) -> None:
    torch.manual_seed(0)
    bijection = make_bijections()[name].double()
    x = torch.randn(3, *SHAPE, dtype=torch.float64)
    bijection.train()
    bijection(x)  # data-dependent init where there is one
    perturb(bijection)
    bijection.eval()
    _, log_det = bijection(x)
    assert log_det.shape == (3,)
    torch.testing.assert_close(log_det, brute_force_log_det(bijection, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(make_bijections()))
def test_inverse_round_trip_and_inverse_log_det(name: str) -> None:
    torch.manual_seed(0)
    bijection = make_bijections()[name].double()
    x = torch.randn(5, *SHAPE, dtype=torch.float64)
    bijection(x)
    perturb(bijection)
    z, log_det = bijection(x)
    x_back, inverse_log_det = bijection.inverse(z)
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(inverse_log_det, -log_det, rtol=1e-9, atol=1e-9)


def test_actnorm_data_dependent_init_standardises_first_batch() -> None:
    x = 3.0 + 2.0 * torch.randn(64, 4, 8, 8)
    z, _ = ActNorm(4)(x)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        z.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("name", ["glow", "glow-additive", "cv-glow", "realnvp"])
def test_whole_flow_log_prob_matches_change_of_variables(name: str) -> None:
    """log p(x) of the assembled multiscale model equals log N(f(x)) + brute-force log|det|."""
    torch.manual_seed(0)
    data = DataConfig(channels=1, image_size=8)
    model = build_model(resolve_model(name, "tiny"), data).double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) - 0.5
    model.train()
    model.log_prob(x)
    perturb(model, 0.05)
    model.eval()
    terms = model.log_prob_terms(x)
    torch.testing.assert_close(terms["log_prob"], terms["log_pz"] + terms["log_abs_det_jacobian"])

    # Treat the whole flow (all latents concatenated) as one bijection.
    class Flat(Bijection):
        def forward(self, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            latents, _, log_det = model.encode(inp)
            return torch.cat([z.flatten(1) for z in latents], 1), log_det

    torch.testing.assert_close(
        terms["log_abs_det_jacobian"], brute_force_log_det(Flat(), x), rtol=1e-8, atol=1e-8
    )


@pytest.mark.parametrize("name", ["glow", "cv-glow", "realnvp"])
def test_flow_decode_inverts_encode(name: str) -> None:
    # float64: a randomly perturbed flow can be badly conditioned (activations ~1e3)
    model = build_model(resolve_model(name, "tiny"), DataConfig(channels=3, image_size=16))
    model = model.double()
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64) - 0.5
    model.train()
    model.log_prob(x)
    perturb(model, 0.05)
    model.eval()
    with torch.no_grad():
        latents, _, _ = model.encode(x)
        x_back = model.decode(latents, 4)
        samples = model.sample(3)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=1e-8)
    assert samples.shape == (3, 3, 16, 16) and torch.isfinite(samples).all()


def test_cv_glow_volume_term_is_constant_but_glow_is_not() -> None:
    data = DataConfig(channels=1, image_size=8)
    x = torch.rand(6, 1, 8, 8) - 0.5
    volumes = {}
    for name in ("cv-glow", "glow"):
        torch.manual_seed(0)
        model = build_model(resolve_model(name, "tiny"), data)
        model.train()
        model.log_prob(x)
        perturb(model, 0.1)
        model.eval()
        with torch.no_grad():
            volumes[name] = model.log_prob_terms(x)["log_abs_det_jacobian"]
    assert torch.allclose(volumes["cv-glow"], volumes["cv-glow"][0].expand(6), atol=1e-4)
    assert volumes["glow"].std() > 1e-2


def test_conditional_split_prior_counts_in_density_term() -> None:
    """Glow's conditional split priors are part of log p(z), never of log|det J|."""
    model = build_model(resolve_model("glow", "tiny"), DataConfig(channels=1, image_size=8))
    x = torch.rand(4, 1, 8, 8) - 0.5
    model.train()
    model.log_prob(x)
    model.eval()
    before = model.log_prob_terms(x)
    with torch.no_grad():
        for split in model.splits:
            split.prior.net.conv.bias.add_(0.5)
    after = model.log_prob_terms(x)
    torch.testing.assert_close(after["log_abs_det_jacobian"], before["log_abs_det_jacobian"])
    assert not torch.allclose(after["log_pz"], before["log_pz"])
