"""Bits per dimension, derived in one place, against numbers computed by hand."""

from __future__ import annotations

import math

import torch

from dgmood.data.dequantize import to_model_input, to_uint8
from dgmood.models.base import InputSpec, bits_per_dim


def test_uniform_density_on_unit_cube_is_eight_bits() -> None:
    # p(x) = 1 on [-0.5, 0.5)^D  =>  every 8-bit image has mass 256^-D  =>  8 bits/dim
    spec = InputSpec(shape=(1, 32, 32))
    torch.testing.assert_close(bits_per_dim(torch.zeros(3), spec), torch.full((3,), 8.0))


def test_five_bit_data_and_other_ranges() -> None:
    spec = InputSpec(shape=(3, 8, 8), n_bits=5, low=-1.0, high=1.0)
    # uniform density on [-1, 1)^D is 2^-D; each 5-bit bin has width 2/32 => mass 32^-D
    log_p = torch.tensor([-spec.num_dims * math.log(2.0)])
    torch.testing.assert_close(bits_per_dim(log_p, spec), torch.tensor([5.0]))


def test_hand_computed_gaussian_case() -> None:
    spec = InputSpec(shape=(1, 2, 2))
    log_p = torch.tensor([-4.0])  # nats for the whole image
    expected = -(-4.0 - 4 * math.log(256)) / (4 * math.log(2))
    assert abs(float(bits_per_dim(log_p, spec)[0]) - expected) < 1e-6


def test_discrete_spec_has_no_scaling_term() -> None:
    spec = InputSpec(shape=(1, 1, 1), discrete=True, low=-1.0, high=1.0)
    torch.testing.assert_close(
        bits_per_dim(torch.tensor([-math.log(256.0)]), spec), torch.tensor([8.0])
    )


def test_dequantization_is_seeded_pure_and_inside_the_bin() -> None:
    spec = InputSpec(shape=(1, 4, 4))
    images = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    original = images.clone()
    a = to_model_input(images, spec, "uniform", torch.Generator().manual_seed(3))
    b = to_model_input(images, spec, "uniform", torch.Generator().manual_seed(3))
    c = to_model_input(images, spec, "uniform", torch.Generator().manual_seed(4))
    assert torch.equal(images, original)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(to_uint8(a, spec), images)
    center = to_model_input(images, spec, "center")
    torch.testing.assert_close(center, (images.float() + 0.5) / 256 - 0.5)
    assert (a >= -0.5).all() and (a < 0.5).all()
