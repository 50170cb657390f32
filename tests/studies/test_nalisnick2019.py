from __future__ import annotations

import pytest

from dgmood.reporting.result import StudyResult
from dgmood.studies import StudyContext, run_study
from tests.run_dirs import find_run


def test_meta_study_runs_each_study_into_its_folder(tiny_ctx: StudyContext) -> None:
    result = run_study("nalisnick2019", tiny_ctx, studies=("moments", "graying"), colour=())
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
    with pytest.raises(ValueError, match="no colour version"):
        run_study("nalisnick2019", tiny_ctx, studies=(), colour=("chicken",))
    assert not (tiny_ctx.out_dir / "runs").exists()


@pytest.mark.slow
def test_meta_study_runs_the_colour_studies_on_cifar10(tiny_ctx: StudyContext) -> None:
    from dgmood.config import DataConfig
    from dgmood.data.errors import DataError
    from dgmood.data.loading import DataSources

    try:
        DataSources().load_like("cifar10", "train", DataConfig(dataset="cifar10", channels=3))
    except DataError as error:
        pytest.skip(f"CIFAR-10 is not in the data mirror: {error}")
    result = run_study("nalisnick2019", tiny_ctx, studies=(), colour=("moments", "graying"))
    table = result.table("studies")
    ran = [s for s in table.column("study") if not s.startswith("colour (set")]
    assert ran == ["colour/moments", "colour/graying"]
    out = tiny_ctx.out_dir
    moments = StudyResult.load(out / "colour" / "moments")
    assert moments.table("channel_moments").column("channel")[:3] == ["R", "G", "B"]
    graying = StudyResult.load(out / "colour" / "graying")
    assert graying.settings["in_dataset"] == "cifar10"
    assert "gtsrb-test" in graying.table("graying").column("set")
    # the colour Glow lives in the shared OUT_DIR/runs, next to nothing else
    assert (find_run(out / "runs", "glow-tiny-cifar10") / "model.safetensors").exists()
    # a colour OOD set whose files are absent is listed with the reason, never dropped
    skipped = [r for r in table.rows if str(r[0]).startswith("colour (set")]
    for row in skipped:
        assert row[1] == "skipped" and "not found" in str(row[2])
