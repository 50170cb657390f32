"""CV-Glow's second-order prediction against a brute-force float64 Hessian."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dgmood.config import DataConfig
from dgmood.data.datasets import load_dataset
from dgmood.data.loading import DataSources
from dgmood.data.transforms import match_format
from dgmood.inference import score_images
from dgmood.models.flows.actnorm import ActNorm
from dgmood.models.flows.bijection import Squeeze
from dgmood.models.flows.conv1x1 import LUInvertibleConv1x1
from dgmood.models.flows.multiscale import MultiscaleFlow
from dgmood.models.registry import build_model, resolve_model
from dgmood.reporting.result import StudyResult
from dgmood.runs import load_run
from dgmood.studies.base import StudyContext
from dgmood.studies.cv_glow import (
    CVGlow,
    CVGlowOptions,
    Moments,
    NotConstantVolumeError,
    log_prob_gradient_and_hessian,
    paper_second_order_gap,
    path_gains,
    taylor_terms,
)


def tiny_cv_glow(n_levels: int, image_size: int = 8) -> MultiscaleFlow:
    config = dataclasses.replace(resolve_model("cv-glow", "tiny"), n_levels=n_levels)
    flow = build_model(config, DataConfig(image_size=image_size, channels=1))
    assert isinstance(flow, MultiscaleFlow)
    return flow.double().eval()


def make_channel_diagonal(flow: MultiscaleFlow, generator: torch.Generator) -> None:
    """Random actnorm and diagonal 1x1 convs; couplings stay at their zero (identity) init."""
    with torch.no_grad():
        for module in flow.modules():
            if isinstance(module, ActNorm):
                module.layer.log_scale.copy_(
                    0.5 * torch.randn(module.layer.log_scale.shape, generator=generator)
                )
                module.layer.bias.copy_(
                    0.1 * torch.randn(module.layer.bias.shape, generator=generator)
                )
                module.layer.initialized.fill_(True)
            elif isinstance(module, LUInvertibleConv1x1):
                module.permutation.copy_(torch.eye(len(module.log_s)))
                module.lower.zero_()
                module.upper.zero_()
                module.log_s.copy_(0.4 * torch.randn(module.log_s.shape, generator=generator))


def random_moments(num_dims: int, scale: float, generator: torch.Generator) -> Moments:
    x = scale * torch.randn(200, num_dims, generator=generator, dtype=torch.float64)
    x = x * torch.rand(num_dims, generator=generator, dtype=torch.float64)
    centred = x - x.mean(0)
    return Moments(torch.zeros(num_dims, dtype=torch.float64), centred.T @ centred / 199)


def brute_force_hessian(flow: MultiscaleFlow, x0: torch.Tensor) -> torch.Tensor:
    shape = x0.shape
    return torch.autograd.functional.hessian(
        lambda v: flow.log_prob(v.reshape(1, *shape))[0], x0.flatten()
    )


@pytest.mark.parametrize("n_levels", [1, 2])
def test_formula_with_actnorm_equals_hessian_trace_for_linear_channel_diagonal_flow(
    n_levels: int,
) -> None:
    generator = torch.Generator().manual_seed(n_levels)
    flow = tiny_cv_glow(n_levels)
    make_channel_diagonal(flow, generator)
    shape = flow.input_spec.shape
    num_dims = int(torch.tensor(shape).prod())
    p = random_moments(num_dims, 0.3, generator)
    q = random_moments(num_dims, 0.2, generator)
    x0 = 0.05 * torch.randn(shape, generator=generator, dtype=torch.float64)

    exact = 0.5 * (brute_force_hessian(flow, x0) * (q.covariance - p.covariance)).sum()
    predicted = paper_second_order_gap(
        path_gains(flow, include_actnorm=True), q.variance.reshape(shape), p.variance.reshape(shape)
    )
    assert predicted == pytest.approx(float(exact), rel=1e-9)
    # without the actnorm scales, the literal formula misses them
    literal = paper_second_order_gap(
        path_gains(flow), q.variance.reshape(shape), p.variance.reshape(shape)
    )
    assert abs(literal - float(exact)) > 1e-3 * abs(float(exact))


def test_literal_formula_is_the_papers_sum_over_squeezed_channels() -> None:
    """One level, general 1x1 convs: sum_c (prod_k sum_j u_kcj)^2 sum_hw dsigma^2_hwc."""
    generator = torch.Generator().manual_seed(3)
    flow = tiny_cv_glow(1)
    shape = flow.input_spec.shape
    variance_q = torch.rand(1, *shape, generator=generator, dtype=torch.float64)
    variance_p = torch.rand(1, *shape, generator=generator, dtype=torch.float64)
    convs = [m for m in flow.modules() if isinstance(m, LUInvertibleConv1x1)]
    alpha = torch.ones(convs[0].matrix().shape[0], dtype=torch.float64)
    for conv in convs:
        alpha = alpha * conv.matrix().detach().double().sum(dim=1)
    squeezed_difference = Squeeze()(variance_q)[0] - Squeeze()(variance_p)[0]
    expected = -0.5 * (alpha**2 * squeezed_difference[0].sum(dim=(1, 2))).sum()
    got = paper_second_order_gap(path_gains(flow), variance_q[0], variance_p[0])
    assert got == pytest.approx(float(expected), rel=1e-10)


def test_chunked_hessian_matches_autograd_on_a_nonlinear_flow() -> None:
    generator = torch.Generator().manual_seed(7)
    flow = tiny_cv_glow(2)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(
                0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            )
        for module in flow.modules():
            if hasattr(module, "initialized"):
                module.initialized.fill_(True)
    x0 = 0.2 * torch.randn(flow.input_spec.shape, generator=generator, dtype=torch.float64)
    gradient, hessian = log_prob_gradient_and_hessian(flow, x0, chunk_size=24)
    expected = brute_force_hessian(flow, x0)
    assert float(expected.abs().max()) > 0
    assert torch.allclose(hessian, 0.5 * (expected + expected.T), rtol=1e-8, atol=1e-9)
    x = x0.clone().requires_grad_(True)
    (expected_gradient,) = torch.autograd.grad(flow.log_prob(x[None])[0], x)
    assert torch.allclose(gradient, expected_gradient.flatten(), rtol=1e-10, atol=1e-12)
    # a Taylor term is a trace against the moments: check the mean-shift one by hand
    p = Moments(torch.zeros_like(gradient), torch.eye(len(gradient), dtype=torch.float64))
    shift = torch.randn(len(gradient), generator=generator, dtype=torch.float64)
    q = Moments(shift, torch.eye(len(gradient), dtype=torch.float64))
    terms = taylor_terms(gradient, hessian, q, p)
    assert terms.covariance == 0.0
    assert terms.first_order == pytest.approx(float(gradient @ shift))
    assert terms.mean_shift == pytest.approx(float(0.5 * shift @ hessian @ shift))


def test_refuses_a_flow_that_is_not_constant_volume(tmp_path: Path) -> None:
    ctx = StudyContext(out_dir=tmp_path, preset="tiny", progress=False)
    with pytest.raises(NotConstantVolumeError, match="cv-glow"):
        CVGlow(CVGlowOptions(model="glow")).run(ctx)
    assert not (tmp_path / "runs").exists()  # refused before training


@pytest.mark.slow
def test_cv_glow_study_end_to_end_tiny(tmp_path: Path, mirror: Path) -> None:
    ctx = StudyContext(
        out_dir=tmp_path, sources=DataSources(mirror=str(mirror)), preset="tiny", progress=False
    )
    result = CVGlow(CVGlowOptions(limit=300, hessian_chunk=128)).run(ctx)
    (table,) = result.tables
    assert len(table.rows) == 8
    data = result.data
    assert set(data["brute_force"]) == {
        "first_order",
        "covariance",
        "covariance_diagonal",
        "mean_shift",
        "total",
    }
    for value in [data["measured_gap"], data["paper_formula"], *data["brute_force"].values()]:
        assert torch.isfinite(torch.tensor(value))
    # the model was trained on FashionMNIST's training split, not on the test set it is scored on
    assert "trained on fashion-mnist-train" in table.title, table.title

    # the values, recomputed from the run and the raw files outside the study
    run = load_run(result.runs["model"])
    flow = run.density_model()
    sets = {
        name: match_format(
            load_dataset(name, "test", mirror=mirror).head(300), 1, 32, upscale="resize"
        ).images
        for name in ("fashion-mnist", "mnist")
    }
    log_p = {name: score_images(flow, images)["log_prob"] for name, images in sets.items()}
    expected_gap = float(np.mean(log_p["mnist"]) - np.mean(log_p["fashion-mnist"]))
    assert data["measured_gap"] == pytest.approx(expected_gap, rel=1e-6)
    num_dims = 32 * 32
    expected_bpd = -(np.mean(log_p["fashion-mnist"]) - num_dims * np.log(256)) / (
        num_dims * np.log(2)
    )
    assert data["bits_per_dim_in"] == pytest.approx(expected_bpd, rel=1e-6)
    # per-pixel variances on the [-0.5, 0.5] scale at the bin centres, summed over the image
    centres = {n: (im.numpy().astype(np.float64) + 0.5) / 256 - 0.5 for n, im in sets.items()}
    variance_sum = float(
        (centres["mnist"].var(axis=0, ddof=1) - centres["fashion-mnist"].var(axis=0, ddof=1)).sum()
    )
    assert data["variance_difference_per_channel"] == pytest.approx([variance_sum], rel=1e-9)
    result.write(tmp_path / "report")
    reloaded = json.loads((tmp_path / "report" / "result.json").read_text())
    assert reloaded["study"] == "cv-glow"
    assert isinstance(result, StudyResult)


def test_cpu_long_preset_trains_the_cpu_sized_cv_glow_longer() -> None:
    from dgmood.presets import run_preset

    cpu, long = run_preset("cv-glow", "cpu"), run_preset("cv-glow", "cpu-long")
    assert long.model == cpu.model
    assert long.train.steps >= 10 * cpu.train.steps
