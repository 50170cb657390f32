"""WAIC of an ensemble of independently trained density models.

References: Choi, Jang & Alemi, "WAIC, but Why? Generative Ensembles for Robust Anomaly
Detection", 2018 (arXiv:1810.01392).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dgmood.config import RunConfig
from dgmood.scores.base import Score, ScoreInput, register_score

MEMBER_PREFIX = "waic-member-seed"


def waic_score(member_log_probs: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``-(mean_k log p_k(x) - var_k log p_k(x))`` over ensemble members ``[K, N]``.

    The variance is the unbiased one (``ddof=1``), so at least two members are needed.
    """
    log_probs = np.asarray(member_log_probs, dtype=np.float64)
    if log_probs.ndim != 2 or log_probs.shape[0] < 2:
        raise ValueError(
            f"WAIC needs log-probabilities of >= 2 members as [K, N], got {log_probs.shape}"
        )
    result: np.ndarray = -(log_probs.mean(axis=0) - log_probs.var(axis=0, ddof=1))
    return result


@register_score
class WAIC(Score):
    """Negative WAIC: ensemble mean log-likelihood minus its variance across members, negated.

    The main run is one member; the other ``n_members - 1`` are the same config trained with
    seeds ``seed + 1, ...``. ``log_prob`` is in nats per image.

    References: Choi, Jang & Alemi, "WAIC, but Why? Generative Ensembles for Robust Anomaly
    Detection", 2018 (arXiv:1810.01392).
    """

    name = "waic"
    needs_stats = ("log_prob",)

    def __init__(self, n_members: int = 5) -> None:
        if n_members < 2:
            raise ValueError(f"an ensemble needs n_members >= 2, got {n_members}")
        self.n_members = n_members

    def aux_runs(self, config: RunConfig) -> dict[str, RunConfig]:
        runs = {}
        for offset in range(1, self.n_members):
            seed = config.train.seed + offset
            train = dataclasses.replace(config.train, seed=seed)
            runs[f"{MEMBER_PREFIX}{seed}"] = dataclasses.replace(config, train=train)
        return runs

    def member_names(self, data: ScoreInput) -> list[str]:
        """The auxiliary members in ``data``: from the main run's config when it is given."""
        if data.run is not None:
            return list(self.aux_runs(data.run.config))
        return sorted(k for k in data.aux_stats if k.startswith(MEMBER_PREFIX))

    def score(self, data: ScoreInput) -> np.ndarray:
        names = self.member_names(data)
        if len(names) != self.n_members - 1:
            raise ValueError(
                f"WAIC with {self.n_members} members needs {self.n_members - 1} auxiliary "
                f"runs, got {names}"
            )
        members = [data.stat("log_prob")] + [data.stat("log_prob", run=n) for n in names]
        return waic_score(members)
