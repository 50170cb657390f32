"""What the scores that run a diffusion model share: the model of a run, seeded noise, batching.

Each such score states its cost as ``nfe``: network evaluations per scored image (fit
excluded), since a diffusion score costs tens of network passes where a flow's likelihood
costs one.

References: Kingma, Salimans, Poole & Ho, "Variational Diffusion Models", NeurIPS 2021.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import numpy as np
import torch
from torch import Tensor

from dgmood.data.dequantize import to_model_input
from dgmood.inference import image_seeds
from dgmood.models.base import Capability
from dgmood.models.diffusion.vdm import VariationalDiffusion
from dgmood.runs import LoadedRun
from dgmood.scores.base import Score, ScoreInput


def diffusion_model_of(run: LoadedRun, score: str) -> VariationalDiffusion:
    """The run's model as a diffusion model, or one clear error naming the score and run."""
    if Capability.DENOISER not in run.capabilities:
        raise ValueError(
            f"score {score!r} runs a diffusion model's denoiser; {run.run_dir} holds a "
            f"{run.spec.name} (train one with `dgmood train diffusion`)"
        )
    return cast(VariationalDiffusion, run.density_model())


def image_noise(seeds: Sequence[int], shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Standard normal noise ``[len(seeds), *shape]``, each image's from its own seed.

    With the seeds of :func:`dgmood.inference.image_seeds` an image gets the same noise
    wherever it appears (any batch, position or company).
    """
    out = torch.empty((len(seeds), *shape), dtype=like.dtype)
    for row, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        out[row] = torch.randn(shape, generator=generator, dtype=like.dtype)
    return out.to(like.device)


class DiffusionScore(Score):
    """Base of the scores that run a :class:`VariationalDiffusion` on the images themselves."""

    uses_model = True
    requires = frozenset({Capability.DENOISER})

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed = batch_size, seed

    @property
    @abstractmethod
    def nfe(self) -> int:
        """Network evaluations per scored image (fit excluded)."""

    def network_evaluations(
        self, run: LoadedRun, aux_runs: Mapping[str, LoadedRun] | None = None
    ) -> float | None:
        return float(self.nfe)

    def per_image(
        self,
        data: ScoreInput,
        compute: Callable[[VariationalDiffusion, Tensor, list[int]], Tensor],
    ) -> np.ndarray:
        """``compute(model, x, seeds)`` over batches of ``data``'s images, concatenated.

        ``x`` is a batch on the model's input scale and device; ``seeds`` one seed per image
        from the score's seed and the image's bytes (:func:`dgmood.inference.image_seeds`),
        so an image's score depends on the model, the seed and the image only; ``compute``
        returns one row per image.
        """
        model = diffusion_model_of(data.require_run(self.name), self.name)
        device = model.levels.device
        was_training = model.training
        model.eval()
        out: list[np.ndarray] = []
        try:
            with torch.no_grad():
                for start in range(0, len(data), self.batch_size):
                    chunk = data.images[start : start + self.batch_size]
                    x = to_model_input(chunk, model.input_spec, dtype=model.levels.dtype)
                    x = x.to(device)
                    seeds = image_seeds(chunk, self.seed, self.name)
                    out.append(compute(model, x, seeds).double().cpu().numpy())
        finally:
            model.train(was_training)
        return np.concatenate(out) if out else np.zeros(0)
