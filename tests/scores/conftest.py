"""Shared fixture: a ScoreInput from hand-made statistics."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pytest
import torch

from dgmood.scores.base import ScoreInput


def _make_input(
    stats: Mapping[str, np.ndarray],
    aux_stats: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    images: torch.Tensor | None = None,
    label: str = "set",
) -> ScoreInput:
    n = len(next(iter(stats.values())))
    if images is None:
        images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    return ScoreInput(
        stats={k: np.asarray(v, dtype=np.float64) for k, v in stats.items()},
        images=images,
        labels=torch.full((n,), -1, dtype=torch.int64),
        aux_stats={k: dict(v) for k, v in (aux_stats or {}).items()},
        label=label,
    )


@pytest.fixture
def make_input() -> Callable[..., ScoreInput]:
    """``make_input(stats, aux_stats=None, images=None)``; images are placeholders unless given."""
    return _make_input
