"""Pretrained runs: present, verified, measuring what their manifest says, never written to,
accepted wherever a run directory is; the tiny one re-trained from its recorded command."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import markupsafe
import pytest
from typer.testing import CliRunner

from dgmood import pretrained
from dgmood.cli.main import app
from dgmood.data.loading import DataSources
from dgmood.evaluation.pretrained import remeasure
from dgmood.io import file_sha256
from dgmood.presets import run_preset
from dgmood.runs import RunDirError, check_run_dir, load_run

TINY = "glow-tiny-fashion-mnist"  # trained in seconds: the test suite re-trains it
REPO = Path(__file__).resolve().parents[1]
# the same machine kind, same code: equal up to float round-off of a different thread count
TOLERANCE_BITS_PER_DIM = 1e-3


def _entries() -> list[pretrained.PretrainedRun]:
    return list(pretrained.manifest().values())


def _skip_without_data(entry: pretrained.PretrainedRun, mirror: Path) -> None:
    folder = {"cifar10": "cifar10", "mnist": "mnist", "fashion-mnist": "fashion-mnist"}
    wanted = mirror / folder.get(entry.dataset, entry.dataset)
    if not wanted.is_dir():
        pytest.skip(f"{entry.dataset} is not in the mirror ({wanted}): cannot measure {entry.name}")


def _close(measured: pretrained.Measurement, recorded: pretrained.Measurement) -> bool:
    if recorded.metric == "accuracy":  # one image more or less right
        return abs(measured.value - recorded.value) <= 1.0 / recorded.n + 1e-12
    return abs(measured.value - recorded.value) <= TOLERANCE_BITS_PER_DIM


def test_the_manifest_ships_the_promised_runs() -> None:
    runs = pretrained.manifest()
    assert TINY in runs, "the tiny run the suite re-trains must be shipped"
    for entry in runs.values():
        assert re.fullmatch(r"[0-9a-f]{40}", entry.commit), entry.name
        assert entry.argv[0] == "train" and "--run-dir" not in entry.argv, entry.name
        assert entry.command.startswith("dgmood train "), entry.name
        assert entry.machine.get("flags"), f"{entry.name}: CPU flags not recorded"
        assert entry.test.n > 0 and entry.check is not None, entry.name


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e.name)
def test_each_run_is_present_and_matches_its_checksum(entry: pretrained.PretrainedRun) -> None:
    files = sorted(p.name for p in entry.path.iterdir())
    assert files == sorted(pretrained.SHIPPED_FILES), f"{entry.name}: ship only the run files"
    assert file_sha256(entry.path / "model.safetensors") == entry.sha256
    size = sum((entry.path / name).stat().st_size for name in pretrained.SHIPPED_FILES)
    assert size == entry.size_bytes
    assert pretrained.verified_path(entry.name) == entry.path


def test_the_shipped_runs_stay_small() -> None:
    total = sum(e.size_bytes for e in _entries())
    assert total < 30e6, f"pretrained runs take {total / 1e6:.1f} MB; the budget is ~30 MB"


@pytest.mark.slow
@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e.name)
def test_each_run_measures_its_recorded_check_set(
    entry: pretrained.PretrainedRun, mirror: Path
) -> None:
    _skip_without_data(entry, mirror)
    assert entry.check is not None
    run = load_run(f"pretrained:{entry.name}")
    measured = remeasure(run, entry.check, DataSources())
    assert measured.n == entry.check.n
    assert _close(measured, entry.check), (entry.name, measured.value, entry.check.value)


@pytest.mark.slow
def test_the_tiny_run_retrains_from_its_recorded_command(tmp_path: Path, mirror: Path) -> None:
    entry = pretrained.get(TINY)
    run_dir = tmp_path / "retrained"
    result = CliRunner().invoke(app, [*entry.argv, "--run-dir", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert entry.check is not None
    retrained = load_run(run_dir)
    assert retrained.step == entry.steps
    assert retrained.config.same_run(load_run(entry.path).config)
    measured = remeasure(retrained, entry.check, DataSources())
    assert abs(measured.value - entry.check.value) <= TOLERANCE_BITS_PER_DIM, (
        measured.value,
        entry.check.value,
    )


# --- resolution, verification, never written to -------------------------------------------


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the tiny run as the only shipped run, in a folder this test may alter."""
    entry = pretrained.get(TINY)
    runs = tmp_path / "package" / "runs"
    shutil.copytree(entry.path, runs / TINY)
    manifest = tmp_path / "package" / "MANIFEST.json"
    raw = json.loads(pretrained.MANIFEST_FILE.read_text())
    manifest.write_text(json.dumps({"format": 1, "runs": {TINY: raw["runs"][TINY]}}))
    monkeypatch.setattr(pretrained, "RUNS_DIR", runs)
    monkeypatch.setattr(pretrained, "MANIFEST_FILE", manifest)
    pretrained.manifest.cache_clear()
    yield runs / TINY
    pretrained.manifest.cache_clear()


def test_altered_weights_are_refused_on_load(fake_package: Path) -> None:
    weights = fake_package / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="altered"):
        load_run(f"pretrained:{TINY}")
    with pytest.raises(pretrained.PretrainedError, match="altered"):
        load_run(fake_package)  # its folder, named directly, is checked too


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(pretrained.PretrainedError, match=TINY):
        load_run("pretrained:no-such-run")
    result = CliRunner().invoke(app, ["score", "pretrained:no-such-run", "--limit", "4"])
    assert result.exit_code == 2 and "no pretrained run named" in result.output


def test_scores_of_a_pretrained_run_are_cached_in_the_data_dir(
    fake_package: Path, mirror: Path, data_dir: Path
) -> None:
    before = sorted(p.name for p in fake_package.iterdir())
    args = ["score", f"pretrained:{TINY}", "--dataset", "mnist", "--limit", "16"]
    result = CliRunner().invoke(app, [*args, "--mirror", str(mirror)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in fake_package.iterdir()) == before  # nothing written there
    cache = pretrained.writable_run_dir(fake_package)
    assert cache.is_relative_to(data_dir / pretrained.CACHE_DIR)
    assert list((cache / "scores").glob("*.npz")), "the statistics were cached in the data dir"


def test_a_pretrained_run_is_never_trained_into(fake_package: Path) -> None:
    for ref in (f"pretrained:{TINY}", fake_package):
        with pytest.raises(RunDirError, match="never written to"):
            check_run_dir(Path(ref), resume=True)


def test_studies_obtain_a_pretrained_run_by_name(tmp_path: Path) -> None:
    from dgmood.studies import StudyContext

    ctx = StudyContext(out_dir=tmp_path, progress=False)
    run = ctx.obtain_model(f"pretrained:{TINY}", "fashion-mnist")
    assert run.run_dir == pretrained.get(TINY).path
    assert ctx.model_run_dir(f"pretrained:{TINY}", "fashion-mnist") == run.run_dir
    assert not (tmp_path / "runs").exists()  # nothing was trained
    with pytest.raises(ValueError, match="trained on fashion-mnist, not mnist"):
        ctx.obtain_model(f"pretrained:{TINY}", "mnist")
    with pytest.raises(ValueError, match="not a classifier"):
        ctx.obtain_model(f"pretrained:{TINY}", "fashion-mnist", kind="classifier")


def test_the_python_api_loads_a_pretrained_run() -> None:
    import dgmood

    run = dgmood.load_run(f"pretrained:{TINY}")
    assert run.spec.name == "glow" and run.step == pretrained.get(TINY).steps


# --- what `dgmood pretrained` prints is what docs/RESULTS.md holds -------------------------


def test_the_cli_lists_every_run_with_its_provenance() -> None:
    result = CliRunner().invoke(app, ["pretrained"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for entry in _entries():
        assert entry.name in result.output
        assert entry.sha256[:16] in result.output
        assert entry.commit[:12] in result.output


def test_results_md_holds_the_table_dgmood_pretrained_prints() -> None:
    results = (REPO / "docs" / "RESULTS.md").read_text()
    table = pretrained.markdown_table()
    assert table in results, "regenerate it: dgmood pretrained --markdown"


def test_the_recorded_command_parses_back_to_its_argv() -> None:
    for entry in _entries():
        assert shlex.split(entry.command)[1:-2] == list(entry.argv)
        assert dataclasses.asdict(entry.test)["metric"] in ("bits_per_dim", "accuracy")


def test_a_study_step_given_a_pretrained_name_uses_it_as_shipped(
    fake_package: Path, mirror: Path, tmp_path: Path
) -> None:
    """Studies that build a config first (run_config -> run_dir -> obtain, as cifar10,
    benchmark and pairs do) take ``pretrained:NAME`` too: the shipped run, nothing trained,
    nothing written into the package; the decomposition study runs on it end to end."""
    from dgmood.studies import StudyContext, run_study

    before = {p: p.stat().st_mtime_ns for p in fake_package.rglob("*")}
    ctx = StudyContext(
        out_dir=tmp_path / "out", sources=DataSources(mirror=mirror), limit=32, progress=False
    )
    config = ctx.run_config(f"pretrained:{TINY}", "fashion-mnist")
    assert ctx.run_dir(config) == fake_package
    assert ctx.obtain(config).run_dir == fake_package
    result = run_study("decomposition", ctx, model=f"pretrained:{TINY}", train_limit=32, samples=4)
    assert result.runs["model"] == f"pretrained:{TINY}"  # by name: the folder is this machine's
    assert not (tmp_path / "out" / "runs").exists()  # nothing was trained
    assert {p: p.stat().st_mtime_ns for p in fake_package.rglob("*")} == before
    run_study(
        "cifar10",
        dataclasses.replace(ctx, out_dir=tmp_path / "colour"),
        models=(f"pretrained:{TINY}",),
        in_dataset="fashion-mnist",
        ood=("mnist",),
        train_limit=32,
        samples=0,
    )
    run_study(
        "benchmark",
        dataclasses.replace(ctx, out_dir=tmp_path / "grid"),
        models=(f"pretrained:{TINY}",),
        in_datasets=("fashion-mnist",),
        ood=("mnist",),
        scores=("nll",),
        train_limit=32,
        samples=0,
    )
    written = [p.relative_to(tmp_path) for p in (tmp_path / "colour").rglob("*")]
    assert any(p.name.startswith("bpd_") for p in written)
    assert not [p for p in written if ":" in str(p)]  # portable names, safe links in the report
    assert {p: p.stat().st_mtime_ns for p in fake_package.rglob("*")} == before
    with pytest.raises(ValueError, match="trained on fashion-mnist, not mnist"):
        ctx.run_config(f"pretrained:{TINY}", "mnist")


def test_a_shipped_glow_gets_the_papers_glow_numbers_in_the_cifar10_tables() -> None:
    from dgmood.studies.cifar10 import published_bpd

    # Nalisnick et al.'s Glow: CIFAR-10 train 3.386 bits/dim (seeds/004, the talk's slide)
    assert published_bpd("pretrained:glow-cifar10", "cifar10", "cifar10", "train") == 3.386
    assert published_bpd("glow", "cifar10", "cifar10", "train") == 3.386
    assert published_bpd("pretrained:vae-cifar10", "cifar10", "cifar10", "train") is None


# --- a study asking for exactly a shipped run's model, data and training uses it -----------


def test_the_colour_cpu_runs_a_study_asks_for_are_the_shipped_ones(tmp_path: Path) -> None:
    """`reproduce cifar10 --preset cpu` asks for Glow, PixelCNN++, VAE and RealNVP at the cpu
    preset; the shipped CIFAR-10 runs were trained by exactly those commands (their recorded
    argv sets execution settings only), so the study uses them and trains none of the four."""
    from dgmood.studies import StudyContext

    ctx = StudyContext(out_dir=tmp_path, progress=False)
    for model in ("glow", "pixelcnnpp", "vae", "realnvp"):
        entry = pretrained.get(f"{model}-cifar10")
        argv = list(entry.argv)
        assert argv[:6] == ["train", model, "--preset", "cpu", "--dataset", "cifar10"]
        assert all(a.startswith("execution.") for a in argv[7::2]), argv  # no training change
        assert ctx.run_dir(ctx.run_config(model, "cifar10")) == entry.path
        # a config a step builds itself (as the benchmark's auxiliary runs are) is found too
        built = ctx.configure(run_preset(model, "cpu", "cifar10"))
        assert ctx.shipped_run(built) == f"pretrained:{model}-cifar10"
    # anything that changes what the run is trains it: steps, a config value, or asked not to
    changed = [
        StudyContext(out_dir=tmp_path, steps=10),
        StudyContext(out_dir=tmp_path, overrides=("train.lr=0.002",)),
        StudyContext(out_dir=tmp_path, use_pretrained=False),
    ]
    for other in changed:
        assert other.run_dir(other.run_config("glow", "cifar10")).parent == tmp_path / "runs"
    # execution settings are not what a run is: still the shipped run
    fast = StudyContext(out_dir=tmp_path, overrides=("execution.precision=auto",))
    assert fast.run_dir(fast.run_config("glow", "cifar10")) == pretrained.get("glow-cifar10").path


def test_a_study_uses_a_shipped_run_of_the_same_identity_and_its_report_names_it(
    fake_package: Path, mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny run was trained as `train glow --preset tiny --dataset fashion-mnist --set
    train.steps=200`: a study at the tiny preset with --steps 200 gets it (nothing trained,
    nothing written into the package) and its report says which shipped run it was."""
    from dgmood.reporting.html import render_report
    from dgmood.studies import StudyContext, run_study

    before = {p: p.stat().st_mtime_ns for p in fake_package.rglob("*")}
    ctx = StudyContext(
        out_dir=tmp_path / "out",
        sources=DataSources(mirror=mirror),
        preset="tiny",
        steps=200,
        limit=32,
        progress=False,
    )
    result = run_study("decomposition", ctx, train_limit=32, samples=0)
    assert result.runs["model"] == f"pretrained:{TINY}"
    said = capsys.readouterr().err
    assert said.count(f"using pretrained:{TINY}") == 1, said  # said once, on stderr
    assert not (tmp_path / "out" / "runs").exists()  # nothing was trained
    assert {p: p.stat().st_mtime_ns for p in fake_package.rglob("*")} == before
    page = render_report(result, tmp_path / "out")
    assert f"pretrained:{TINY}" in page
    assert str(markupsafe.escape((fake_package / "config.yaml").read_text())) in page
    assert "was not read" not in page and "is missing" not in page
