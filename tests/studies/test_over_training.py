from __future__ import annotations

import numpy as np
import pytest

from dgmood.studies import StudyContext, run_study
from dgmood.studies.over_training import stage_steps


def test_stage_steps() -> None:
    assert stage_steps((), 600) == [75, 150, 300, 600, 1200]
    assert stage_steps((4, 2, 4), 600) == [2, 4]
    with pytest.raises(ValueError, match="positive"):
        stage_steps((0, 2), 600)


def test_over_training_stages_equal_one_long_run(tiny_ctx: StudyContext) -> None:
    result = run_study("over-training", tiny_ctx, stages=(2, 4), train_limit=32)
    rows = result.table("over_training").rows
    assert [(r[0], r[1]) for r in rows] == [
        (2, "fashion-mnist-train"), (4, "fashion-mnist-train"),
        (2, "fashion-mnist-test"), (4, "fashion-mnist-test"),
        (2, "mnist-test"), (4, "mnist-test"),
    ]  # fmt: skip
    staged_final = {r[1]: r[4] for r in rows if r[0] == 4}
    # the same model trained straight to 4 steps scores the same (staged = uninterrupted)
    import dataclasses

    straight = run_study(
        "fashion-mnist",
        dataclasses.replace(tiny_ctx, out_dir=tiny_ctx.out_dir / "straight", steps=4),
        train_limit=32,
        scores=("nll",),
    )
    for label, _role, _n, mean, *_ in straight.table("bits_per_dim").rows:
        assert staged_final[label] == pytest.approx(mean, abs=1e-4)
    assert "of 2 stages" in result.finding
    # rerun: stages come from their records, with the same numbers
    again = run_study("over-training", tiny_ctx, stages=(2, 4), train_limit=32)
    np.testing.assert_allclose(
        [r[4] for r in again.table("over_training").rows], [r[4] for r in rows]
    )
    assert (tiny_ctx.out_dir / "stages" / "step2.npz").exists()
    assert (tiny_ctx.out_dir / "over_training.svg").exists()
