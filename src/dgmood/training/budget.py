"""A wall-clock budget for training: stop cleanly, with a checkpoint, when time is up."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dgmood.training.distributed import DataParallel


def budget_exceeded(
    started: float, budget_minutes: float, parallel: DataParallel | None = None
) -> bool:
    """True once ``budget_minutes`` (> 0) have passed since ``started`` (``perf_counter``).

    In a data-parallel job rank 0's clock decides for every rank, so that all stop after
    the same step.
    """
    if budget_minutes <= 0:
        return False
    over = time.perf_counter() - started >= budget_minutes * 60
    return bool(parallel.broadcast(over)) if parallel is not None else over
