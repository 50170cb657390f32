"""Memory-light backprop, evaluation-time folding and cached weights give the same numbers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from dgmood.config import DataConfig
from dgmood.models.flows.bijection import Compose
from dgmood.models.flows.multiscale import MultiscaleFlow
from dgmood.models.flows.presets import GlowConfig, RealNVPConfig
from dgmood.models.registry import build_model
from dgmood.nn.layers import GlowConditioner

DATA = DataConfig(channels=1, image_size=8)
CONFIGS = {
    "glow": GlowConfig(n_levels=2, n_steps=3, hidden_channels=8),
    "glow-additive-plain-conv": GlowConfig(
        n_levels=2, n_steps=2, hidden_channels=8, coupling="additive", lu_decomposed=False
    ),
    "realnvp": RealNVPConfig(n_levels=2, hidden_channels=8, n_blocks=1),
}


def perturb(module: nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    """Move every parameter away from its (often identity or zero) initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def make_flow(name: str, memory_light: bool = False, seed: int = 0) -> MultiscaleFlow:
    torch.manual_seed(seed)
    model = build_model(CONFIGS[name], DATA).double()
    assert isinstance(model, MultiscaleFlow)
    model.set_memory_light(memory_light)
    model.train()
    with torch.no_grad():  # data-dependent actnorm init
        model.log_prob(torch.rand(16, 1, 8, 8, dtype=torch.float64) - 0.5)
    perturb(model)
    return model


@contextlib.contextmanager
def unfolded() -> Iterator[None]:
    """Run the flows layer by layer (no actnorm folding), as the reference."""
    Compose.fold = GlowConditioner.fold = False
    try:
        yield
    finally:
        Compose.fold = GlowConditioner.fold = True


def images(n: int = 6, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=generator, dtype=torch.float64) - 0.5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_memory_light_gradients_equal_ordinary_backprop(name: str) -> None:
    plain = make_flow(name)
    light = make_flow(name, memory_light=True)
    light.load_state_dict(plain.state_dict())
    assert all(level.memory_light for level in light.levels if isinstance(level, Compose))
    grads = {}
    for label, model in (("plain", plain), ("light", light)):
        x = images().requires_grad_(True)
        log_prob = model.log_prob(x)
        # a weighting that is not the same for every sample, so per-sample terms matter
        (log_prob * torch.linspace(0.5, 1.5, len(log_prob), dtype=log_prob.dtype)).sum().backward()
        assert x.grad is not None
        grads[label] = (
            log_prob.detach(),
            x.grad.clone(),
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        )
    (lp_plain, gx_plain, gp_plain), (lp_light, gx_light, gp_light) = grads["plain"], grads["light"]
    torch.testing.assert_close(lp_light, lp_plain, rtol=0, atol=1e-10)
    torch.testing.assert_close(gx_light, gx_plain, rtol=1e-8, atol=1e-10)
    assert gp_light.keys() == gp_plain.keys()
    assert len(gp_plain) == sum(1 for _ in plain.parameters())
    for key in gp_plain:
        torch.testing.assert_close(gp_light[key], gp_plain[key], rtol=1e-8, atol=1e-10, msg=key)
    nonzero = sum(float(g.abs().sum()) > 0 for g in gp_plain.values())
    assert nonzero > 0.9 * len(gp_plain)  # the comparison is not between zeros


def graph_nodes(loss: torch.Tensor) -> list[str]:
    """Names of the autograd nodes behind ``loss`` (each node once)."""
    seen: dict[int, str] = {}
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node.name()
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return list(seen.values())


def test_memory_light_keeps_no_per_step_graph() -> None:
    """Each level is one autograd node; only the split priors' convs stay in the graph."""
    light = graph_nodes(-make_flow("glow", memory_light=True).log_prob(images()).sum())
    plain = graph_nodes(-make_flow("glow").log_prob(images()).sum())
    assert sum("ReversibleFunction" in name for name in light) == 2  # one per level
    assert light.count("ConvolutionBackward0") == 1  # the one conditional prior
    assert plain.count("ConvolutionBackward0") > 10

    def computing(nodes: list[str]) -> int:
        return sum("AccumulateGrad" not in name for name in nodes)

    assert computing(light) < computing(plain) / 4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_folded_evaluation_equals_step_by_step(name: str) -> None:
    model = make_flow(name).eval()
    x = images()
    with torch.no_grad():
        folded = model.log_prob_terms(x)
        with unfolded():
            plain = model.log_prob_terms(x)
    for key in plain:
        torch.testing.assert_close(folded[key], plain[key], rtol=0, atol=1e-9, msg=key)


def test_cached_weights_follow_parameter_changes() -> None:
    """An optimiser step, load_state_dict or train()/eval() never leaves a stale weight."""
    model = make_flow("glow").eval()
    x = images()
    with torch.no_grad():
        before = model.log_prob(x)
        again = model.log_prob(x)
    torch.testing.assert_close(again, before, rtol=0, atol=0)

    other = make_flow("glow", seed=5)
    perturb(other, seed=7)
    model.load_state_dict(other.state_dict())
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), other.log_prob(x), rtol=0, atol=1e-9)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss = -model.log_prob(x).mean()
    loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after_step = model.log_prob(x)
        with unfolded():
            reference = model.log_prob(x)
    torch.testing.assert_close(after_step, reference, rtol=0, atol=1e-9)
    assert not torch.allclose(after_step, before)


def test_sampling_round_trips_with_cached_inverse() -> None:
    model = make_flow("glow").eval()
    x = images()
    with torch.no_grad():
        latents, _, _ = model.encode(x)
        restored = model.decode(latents, len(x))
        restored_again = model.decode(latents, len(x))
    torch.testing.assert_close(restored, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(restored_again, x, rtol=0, atol=1e-9)


def gradients(model: MultiscaleFlow) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    x = images().requires_grad_(True)
    log_prob = model.log_prob(x)
    (log_prob * torch.linspace(0.5, 1.5, len(log_prob), dtype=log_prob.dtype)).sum().backward()
    assert x.grad is not None
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return log_prob.detach(), x.grad.clone(), grads


@pytest.mark.parametrize("name", list(CONFIGS))
def test_folded_training_gradients_equal_unfolded(name: str) -> None:
    model = make_flow(name)
    folded = gradients(model)
    with unfolded():
        plain = gradients(model)
    torch.testing.assert_close(folded[0], plain[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(folded[1], plain[1], rtol=1e-9, atol=1e-11)
    assert folded[2].keys() == plain[2].keys()
    assert len(plain[2]) == sum(1 for _ in model.parameters())
    for key in plain[2]:
        torch.testing.assert_close(folded[2][key], plain[2][key], rtol=1e-9, atol=1e-11, msg=key)


def test_first_training_pass_initialises_actnorm_unfolded() -> None:
    """Data-dependent init sees the real activations: unit variance after init."""
    torch.manual_seed(0)
    model = build_model(CONFIGS["glow"], DATA).double().train()
    x = images(32) * 3 + 1
    with torch.no_grad():
        model.log_prob(x)
    first = model.levels[0]
    assert isinstance(first, Compose)
    actnorm = first.bijections[1]
    squeezed, _ = first.bijections[0](x)
    with torch.no_grad():
        out, _ = actnorm(squeezed)
    torch.testing.assert_close(
        out.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=out.dtype), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(
        out.std(dim=(0, 2, 3), unbiased=False), torch.ones(4, dtype=out.dtype), atol=1e-5, rtol=0
    )


def test_memory_light_recomputes_at_the_forward_precision() -> None:
    """Under bf16 autocast the backward's re-forward runs in bf16 too, as the forward did."""
    from dgmood.nn.precision import has_native_bf16

    if not has_native_bf16():
        pytest.skip("no native bf16 on this CPU")
    results = {}
    for light in (False, True):
        model = make_flow("glow", memory_light=light).float()
        x = images().float().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            log_prob = model.log_prob(x)
        log_prob.sum().backward()
        assert x.grad is not None
        results[light] = x.grad
    # recomputing in fp32 instead would differ by the bf16 rounding (~1e-2 relative)
    torch.testing.assert_close(results[True], results[False], rtol=1e-3, atol=1e-3)
