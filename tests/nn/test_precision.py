"""bf16 autocast selection and its fallback."""

from __future__ import annotations

import pytest
import torch

from dgmood.config import DataConfig
from dgmood.models.flows.presets import GlowConfig
from dgmood.models.registry import build_model
from dgmood.nn import precision
from dgmood.nn.precision import accelerated, autocast_context, resolve_precision


def test_bf16_falls_back_to_fp32_without_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    precision.cpu_flags.cache_clear()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_precision("bf16", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") == "fp32"
    with autocast_context("bf16", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_autocast_where_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert resolve_precision("auto", "cpu") == "bf16"
    with autocast_context("auto", "cpu"):
        assert torch.is_autocast_enabled("cpu")
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_flow_under_bf16_keeps_exact_parts_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the networks run in bf16: with them at zero, scores equal fp32's."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    torch.manual_seed(0)
    model = build_model(GlowConfig(n_levels=2, n_steps=2, hidden_channels=16), DataConfig())
    x = torch.rand(8, 1, 32, 32) - 0.5
    with torch.no_grad():
        model.train()
        model.log_prob(x)
        generator = torch.Generator().manual_seed(1)
        for name, param in model.named_parameters():
            # actnorms, 1x1 convs and the top prior move; the networks (couplings' and
            # split priors' convs, which do run in bf16) stay zero
            if "conditioner" not in name and "splits" not in name:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    model.eval()
    reference = accelerated(model.log_prob_terms, precision="fp32")(x)
    fast = accelerated(model.log_prob_terms, precision="bf16")(x)
    for key, value in fast.items():
        assert value.dtype == torch.float32, key
        # bf16 1x1 convs or priors would be off by ~1e-3 relative
        torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-4, msg=key)

    # and the conditioners really run in bf16: a perturbed coupling changes the score a little
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "conditioner" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    reference = accelerated(model.log_prob_terms, precision="fp32")(x)
    fast = accelerated(model.log_prob_terms, precision="bf16")(x)
    difference = (fast["log_prob"] - reference["log_prob"]).abs().max()
    assert 0 < difference < 1e-2 * 32 * 32
