"""What the scores that run a diffusion model share: the model of a run, seeded noise, batching.

Each such score states its cost as ``nfe``: network evaluations per scored image (fit
excluded), since a diffusion score costs tens of network passes where a flow's likelihood
costs one.

References: Kingma, Salimans, Poole & Ho, "Variational Diffusion Models", NeurIPS 2021.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from dgmood.data.dequantize import to_model_input
from dgmood.models.diffusion.vdm import VariationalDiffusion
from dgmood.runs import LoadedRun
from dgmood.scores.base import Score, ScoreInput


def diffusion_model_of(run: LoadedRun, score: str) -> VariationalDiffusion:
    """The run's model as a diffusion model, or one clear error naming the score and run."""
    model = run.density_model()
    if not isinstance(model, VariationalDiffusion):
        raise ValueError(
            f"score {score!r} runs a diffusion model's denoiser; {run.run_dir} holds a "
            f"{type(model).__name__} (train one with `dgmood train diffusion`)"
        )
    return model


def image_noise(start: int, count: int, shape: tuple[int, ...], seed: int, like: Tensor) -> Tensor:
    """Standard normal noise ``[count, *shape]`` for images ``start .. start+count-1``.

    Image ``i`` always gets the same noise for a given seed, whatever the batch it is in.
    """
    out = torch.empty((count, *shape), dtype=like.dtype)
    for row in range(count):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start + row)
        out[row] = torch.randn(shape, generator=generator, dtype=like.dtype)
    return out.to(like.device)


class DiffusionScore(Score):
    """Base of the scores that run a :class:`VariationalDiffusion` on the images themselves."""

    uses_model = True

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed = batch_size, seed

    @property
    @abstractmethod
    def nfe(self) -> int:
        """Network evaluations per scored image (fit excluded)."""

    def applies_to(self, run: LoadedRun) -> bool:
        return isinstance(run.model, VariationalDiffusion)

    def per_image(
        self, data: ScoreInput, compute: Callable[[VariationalDiffusion, Tensor, int], Tensor]
    ) -> np.ndarray:
        """``compute(model, x, start)`` over batches of ``data``'s images, concatenated.

        ``x`` is a batch on the model's input scale and device; ``start`` the index of its
        first image (to seed per-image noise); ``compute`` returns one row per image.
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
                    out.append(compute(model, x, start).double().cpu().numpy())
        finally:
            model.train(was_training)
        return np.concatenate(out) if out else np.zeros(0)
