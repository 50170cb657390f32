"""The report's pictures: image strips, seeded and cached samples, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dgmood.reporting.pictures import GAP, ImageRow, montage, plot_image_rows
from dgmood.runs import SCORES_DIR, read_metrics
from dgmood.studies import StudyContext
from dgmood.studies.pictures import draw_samples, run_pictures


def test_montage_places_each_tile_with_white_gaps() -> None:
    gray = np.stack([np.full((1, 2, 2), 10, np.uint8), np.full((1, 2, 2), 20, np.uint8)])
    canvas = montage(gray, columns=2)
    assert canvas.shape == (2, 2 * 2 + GAP, 3)
    assert (canvas[:, :2] == 10).all() and (canvas[:, 2 + GAP :] == 20).all()
    assert (canvas[:, 2 : 2 + GAP] == 255).all()  # the gap
    colour = np.zeros((3, 3, 2, 2), np.uint8)
    colour[:, 0] = 200  # red
    wrapped = montage(colour, columns=2)  # 3 tiles on 2 columns: two lines, one blank tile
    assert wrapped.shape == (2 * 2 + GAP, 2 * 2 + GAP, 3)
    assert (wrapped[:2, :2] == [200, 0, 0]).all() and (wrapped[-2:, -2:] == 255).all()


def test_image_rows_refuse_what_they_cannot_draw(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageRow("floats", np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="captions"):
        ImageRow("short", np.zeros((2, 3, 4, 4), np.uint8), ["one"])
    with pytest.raises(ValueError, match="at least one row"):
        plot_image_rows([], tmp_path / "none.png")


@pytest.mark.slow
def test_samples_are_seeded_cached_and_leave_the_global_rng_alone(
    tiny_ctx: StudyContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tiny_ctx.obtain_model("glow", "fashion-mnist")
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first = draw_samples(run, n=4)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is untouched
    assert first.dtype == torch.uint8 and tuple(first.shape) == (4, 1, 32, 32)
    cached = run.run_dir / SCORES_DIR / f"samples-n4-seed0-step{run.step}.npz"
    assert cached.exists()

    def no_sampling(n: int, temperature: float = 1.0) -> torch.Tensor:
        raise AssertionError("the cached samples should have been used")

    monkeypatch.setattr(run.model, "sample", no_sampling)
    assert torch.equal(draw_samples(run, n=4), first)
    monkeypatch.undo()
    cached.write_bytes(b"not an npz")  # a damaged cache is drawn again, identically
    assert torch.equal(draw_samples(run, n=4), first)

    figures = run_pictures(tiny_ctx, run, samples=4, tag="glow")
    assert [f.name for f in figures] == ["samples_glow", "training_glow"]
    records = read_metrics(run.run_dir)
    assert any("loss" in r for r in records)  # what the training curve was drawn from
    for figure in figures:
        assert (tiny_ctx.out_dir / figure.path).stat().st_size > 5_000
    assert run_pictures(tiny_ctx, run, samples=0, tag="glow")[0].name == "training_glow"
