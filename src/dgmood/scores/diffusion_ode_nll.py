"""Bits/dim of a diffusion model's probability-flow ODE likelihood: ``nll`` without the bound's gap.

References: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR 2021 (Sec. 4.3).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dgmood.models.diffusion.ode import ode_log_mass_bound, rademacher
from dgmood.models.diffusion.vdm import VariationalDiffusion
from dgmood.scores.base import ScoreInput, register_score
from dgmood.scores.diffusion_base import DiffusionScore


@register_score
class DiffusionODENegativeLogLikelihood(DiffusionScore):
    """Bits/dim of the probability-flow ODE likelihood of a diffusion run (dequantized).

    ``-(log p_ODE(x + width (u - 1/2)) + D log width) / (D ln 2)`` with one uniform offset per
    sub-pixel and one Rademacher trace probe per image, both seeded per image (``seed *
    1_000_003 + index``), integrated with ``steps`` RK4 steps. A near-exact likelihood where
    ``nll`` gives the variational bound; 4 network evaluations and vector-Jacobian products
    per step (``steps = 25``: ~300 forward passes' work per image).

    References: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative
    Modeling through Stochastic Differential Equations", ICLR 2021; Grathwohl et al.,
    "FFJORD", ICLR 2019 (Hutchinson's trace estimator).
    """

    name = "ode-nll"

    def __init__(self, steps: int = 25, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = steps

    @property
    def nfe(self) -> int:
        return 4 * self.steps

    def score(self, data: ScoreInput) -> np.ndarray:
        def compute(model: VariationalDiffusion, x: Tensor, seeds: list[int]) -> Tensor:
            offsets, probes = [], []
            for row in range(len(x)):
                generator = torch.Generator().manual_seed(seeds[row])
                offsets.append(torch.rand(x.shape[1:], generator=generator, dtype=x.dtype) - 0.5)
                probes.append(rademacher(x.shape[1:], generator, like=offsets[-1]))
            log_mass = ode_log_mass_bound(
                model,
                x,
                self.steps,
                offsets=torch.stack(offsets).to(x.device),
                probe=torch.stack(probes).to(x.device),
            )
            return -log_mass / (model.input_spec.num_dims * math.log(2.0))

        return self.per_image(data, compute)
