from __future__ import annotations

import pytest

from dgmood.reporting.result import StudyResult
from dgmood.studies import StudyContext, run_study
from tests.run_dirs import find_run


def test_meta_study_runs_each_study_into_its_folder(tiny_ctx: StudyContext) -> None:
    result = run_study("nalisnick2019", tiny_ctx, studies=("moments", "graying"))
    assert result.table("studies").column("study") == ["moments", "graying"]
    out = tiny_ctx.out_dir
    assert StudyResult.load(out / "moments").study == "moments"
    assert StudyResult.load(out / "graying").study == "graying"
    # runs are shared by every sub-study, in OUT_DIR/runs
    # moments trains nothing; graying's Glow lives in the shared OUT_DIR/runs
    assert (find_run(out / "runs", "glow-tiny-fashion-mnist") / "model.safetensors").exists()
    assert "moments: Per-dimension moments" in result.finding
    assert (out / "summary.md").exists()


def test_meta_study_refuses_an_unknown_study(tiny_ctx: StudyContext) -> None:
    with pytest.raises(ValueError, match="unknown study"):
        run_study("nalisnick2019", tiny_ctx, studies=("moments", "nope"))
