from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dgmood.data.loading import DataSources
from dgmood.studies import StudyContext, run_study
from dgmood.studies.pairs import log_px_nats, parse_pair
from tests.run_dirs import find_run


def test_pairs_both_directions_tiny(tiny_ctx: StudyContext) -> None:
    result = run_study("pairs", tiny_ctx, models=("glow",), train_limit=32)
    gaps = result.table("pairs_gap")
    assert [(r[1], r[2]) for r in gaps.rows] == [
        ("fashion-mnist", "mnist"),
        ("mnist", "fashion-mnist"),
    ]
    sets = result.table("pairs_bits_per_dim")
    assert sets.column("set") == [
        "fashion-mnist-train", "fashion-mnist-test", "mnist-test",
        "mnist-train", "mnist-test", "fashion-mnist-test",
    ]  # fmt: skip
    assert sets.column("n") == [32] * 6
    assert sets.column("published bits/dim") == [None] * 6  # no published number at this scale
    # the gap is the difference of the two means in the set table
    means = sets.column("bits/dim mean")
    assert gaps.rows[0][5] == pytest.approx(means[2] - means[1])
    assert gaps.rows[1][5] == pytest.approx(means[5] - means[4])
    assert 0.0 <= gaps.rows[0][7] <= 1.0
    assert result.finding.startswith("glow on fashion-mnist: mnist gets")
    for figure in result.figures:
        assert (tiny_ctx.out_dir / figure.path).exists()
        assert (tiny_ctx.out_dir / figure.path).with_suffix(".svg").exists()
    assert (find_run(tiny_ctx.runs_dir, "glow-tiny-mnist") / "model.safetensors").exists()


def test_log_px_from_bits_per_dim() -> None:
    # 1 bit/dim over 1024 dims is a probability of 2**-1024
    np.testing.assert_allclose(log_px_nats(np.array([1.0]), 1024), [-1024 * np.log(2.0)])


def test_bad_pair_and_missing_dataset_are_clear_errors(tmp_path: Path, mirror: Path) -> None:
    with pytest.raises(ValueError, match="IN:OOD"):
        parse_pair("cifar10-svhn")
    ctx = StudyContext(
        out_dir=tmp_path / "out",
        sources=DataSources(data_dir=str(tmp_path / "nodata")),
        preset="tiny",
        progress=False,
    )
    with pytest.raises(Exception, match="svhn") as error:
        run_study("pairs", ctx, models=("glow",), pairs=("mnist:svhn",))
    assert "not found" in str(error.value)
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained
