"""Likelihood ratio against a background model trained on randomly mutated inputs.

References: Ren, Liu, Fertig, Snoek, Poplin, DePristo, Dillon & Lakshminarayanan,
"Likelihood Ratios for Out-of-Distribution Detection", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dgmood.config import RunConfig
from dgmood.scores.base import Score, ScoreInput, register_score

DEFAULT_MUTATION_RATE = 0.2  # middle of Ren et al.'s grid {0.1, 0.2, 0.3}
# L2 on the background's weights as torch's coupled weight_decay (a mild value of our own, not
# converted from Ren et al.'s lambda: see weight_decay_from_l2_coefficient)
DEFAULT_WEIGHT_DECAY = 1e-4


def weight_decay_from_l2_coefficient(l2_coefficient: float, num_dims: int) -> float:
    """torch's coupled ``weight_decay`` equal to Ren et al.'s penalty ``lambda |theta|^2``.

    Ren et al. add ``lambda |theta|^2`` to a loss in nats per image (Keras's ``l2(lambda)``);
    our loss is in bits per dimension, the same loss divided by ``D ln 2``, so the penalty
    becomes ``lambda / (D ln 2) |theta|^2``. Coupled weight decay ``wd`` adds ``wd * theta``
    to the gradient, the gradient of ``wd / 2 |theta|^2``; hence ``wd = 2 lambda / (D ln 2)``.
    """
    if l2_coefficient < 0 or num_dims < 1:
        raise ValueError(f"need lambda >= 0 and num_dims >= 1, got {l2_coefficient}, {num_dims}")
    return 2.0 * l2_coefficient / (num_dims * math.log(2.0))


def background_config(config: RunConfig, mutation_rate: float, weight_decay: float) -> RunConfig:
    """The main run's config, trained on mutated inputs with L2 weight decay."""
    if not 0.0 < mutation_rate <= 1.0:
        raise ValueError(f"mutation_rate must lie in (0, 1], got {mutation_rate}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    train = dataclasses.replace(
        config.train, mutation_rate=mutation_rate, weight_decay=weight_decay
    )
    return dataclasses.replace(config, train=train)


def background_run_name(mutation_rate: float, weight_decay: float) -> str:
    """Auxiliary run name, unique per hyperparameter setting (studies key run dirs by it)."""
    return f"background-mu{mutation_rate:g}-wd{weight_decay:g}"


def log_likelihood_ratio(
    model_bits_per_dim: np.ndarray, background_bits_per_dim: np.ndarray
) -> np.ndarray:
    """``log p_background(x) - log p_model(x)`` in bits per dimension (higher = more OOD).

    Both models see the same input scale, so the bits/dim constants cancel:
    ``bpd_model - bpd_background = (log p_bg - log p_model) / (D ln 2)``.
    """
    model = np.asarray(model_bits_per_dim, dtype=np.float64)
    background = np.asarray(background_bits_per_dim, dtype=np.float64)
    if model.shape != background.shape:
        raise ValueError(f"shapes differ: model {model.shape}, background {background.shape}")
    return model - background


@register_score
class LikelihoodRatio(Score):
    """Log-likelihood ratio of a background model (mutated inputs) to the model.

    The background model has the main run's family and config, trained on inputs whose
    sub-pixels are each replaced by a uniform random level with probability
    ``mutation_rate`` (fresh per batch) and with L2 weight decay, so that it learns the
    population-level background statistics but not the semantics. Scores are in bits/dim.

    References: Ren, Liu, Fertig, Snoek, Poplin, DePristo, Dillon & Lakshminarayanan,
    "Likelihood Ratios for Out-of-Distribution Detection", NeurIPS 2019.
    """

    name = "likelihood-ratio"
    needs_stats = ("bits_per_dim",)

    def __init__(
        self,
        mutation_rate: float = DEFAULT_MUTATION_RATE,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
    ) -> None:
        if not 0.0 < mutation_rate <= 1.0:
            raise ValueError(f"mutation_rate must lie in (0, 1], got {mutation_rate}")
        self.mutation_rate, self.weight_decay = mutation_rate, weight_decay

    @property
    def background_name(self) -> str:
        return background_run_name(self.mutation_rate, self.weight_decay)

    def aux_runs(self, config: RunConfig) -> dict[str, RunConfig]:
        return {
            self.background_name: background_config(config, self.mutation_rate, self.weight_decay)
        }

    def score(self, data: ScoreInput) -> np.ndarray:
        return log_likelihood_ratio(
            data.stat("bits_per_dim"), data.stat("bits_per_dim", run=self.background_name)
        )
