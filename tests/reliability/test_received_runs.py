"""Run directories and result folders received from someone else never touch files outside
themselves: no write through a symlink, no file read into a report, no clickable script, no
unverified weights, no model built from a size a file merely claims, no terminal escapes.

Each test reproduces what a hostile sender can put on disk and what the receiver then runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import html.parser
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TinyData, tiny_glow, train_tiny
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import dgmood.runs
import dgmood.training
import dgmood.training.launch
from dgmood.cli.main import app
from dgmood.config import RunConfig
from dgmood.inference import score_cached
from dgmood.reporting.html import rebuild_reports, write_index
from dgmood.reporting.result import Figure, StudyResult, Table
from dgmood.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SCORES_DIR,
    RunDirError,
    load_run,
    save_tensor_file,
)

runner = CliRunner()
SECRET = "TOP-SECRET-3f9a1c"  # the text of a file outside every run and result folder


@pytest.fixture
def received(trained: Path, tmp_path: Path) -> Path:
    """A copy of a finished run, as someone sends it."""
    return Path(shutil.copytree(trained, tmp_path / "received-run"))


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of the receiver's, outside the run: must stay byte-identical."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def _cli(*args: str, mirror: Path | None = None) -> tuple[int, str]:
    extra = ["--mirror", str(mirror)] if mirror is not None else []
    result = runner.invoke(app, [*args, *extra])
    return result.exit_code, result.output


# --- 1. every file a run writes: no symlink, nothing but a regular file -------------------


@pytest.mark.parametrize(
    "name", [LOCK_FILE, METRICS_FILE, CHECKPOINT_FILE, MODEL_FILE, CONFIG_FILE]
)
def test_a_run_file_that_is_a_symlink_is_refused_and_its_target_untouched(
    received: Path, victim: Path, mirror: Path, name: str
) -> None:
    if name == CONFIG_FILE:  # the link must still read as the run's config
        victim.write_text((received / CONFIG_FILE).read_text())
    before = victim.read_bytes()
    (received / name).unlink(missing_ok=True)
    (received / name).symlink_to(victim)
    code, output = _cli(
        "train", "--resume", "--run-dir", str(received), "--set", "train.steps=5",
        "--no-progress", mirror=mirror,
    )  # fmt: skip
    assert code == 2, output
    assert "symlink" in output and name in output and "Traceback" not in output
    assert victim.read_bytes() == before
    assert (received / name).is_symlink()  # nothing replaced it either


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_lock_that_is_not_a_regular_file_is_one_clear_error(
    received: Path, tiny_data: TinyData, kind: str
) -> None:
    lock = received / LOCK_FILE
    lock.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    with pytest.raises(RunDirError, match=r"\.lock.*not a regular file"):
        train_tiny(tiny_glow(steps=5), received, tiny_data, resume=True)
    assert load_run(received).step == 3


def test_a_scores_symlink_makes_score_refuse_and_write_nothing_outside(
    received: Path, tmp_path: Path, mirror: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (received / SCORES_DIR).symlink_to(elsewhere, target_is_directory=True)
    code, output = _cli("score", str(received), "--limit", "8", mirror=mirror)
    assert code == 2 and "symlink" in output and "Traceback" not in output, output
    assert list(elsewhere.iterdir()) == []


def test_score_cached_refuses_a_scores_symlink(
    received: Path, tmp_path: Path, tiny_data: TinyData
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.npz").write_bytes(b"not a cache")  # a damaged cache would be deleted
    (received / SCORES_DIR).symlink_to(elsewhere, target_is_directory=True)
    run = load_run(received)
    with pytest.raises(RunDirError, match="symlink"):
        score_cached(run.model, tiny_data.val_set, received, step=run.step, progress=False)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.npz"]


def test_a_run_dir_named_through_the_users_own_link_is_scored(
    received: Path, tmp_path: Path, tiny_data: TinyData
) -> None:
    link = tmp_path / "latest"
    link.symlink_to(received, target_is_directory=True)
    run = load_run(link)
    stats = score_cached(run.model, tiny_data.val_set, link, step=run.step, progress=False)
    assert len(stats["bits_per_dim"]) == len(tiny_data.val_set)
    assert len(list((received / SCORES_DIR).iterdir())) == 1


def test_a_thresholds_symlink_is_refused_before_a_rule_is_written(
    received: Path, tmp_path: Path, tiny_data: TinyData
) -> None:
    from dgmood.evaluation.reject import THRESHOLDS_DIR, fit_reject_rule

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (received / THRESHOLDS_DIR).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunDirError, match="symlink"):
        fit_reject_rule(load_run(received), "nll", tiny_data.val_set)
    assert list(elsewhere.iterdir()) == []


# --- 2. a report embeds only regular files inside its result folder ------------------------


def _png(path: Path, text: str = "") -> None:
    Image.fromarray(np.full((4, 4), 128, dtype=np.uint8)).save(path)
    if text:
        with open(path, "ab") as handle:
            handle.write(text.encode())


def _result_folder(root: Path, figures: list[Figure], runs: dict[str, str]) -> Path:
    folder = root / "results"
    folder.mkdir(parents=True)
    table = Table("metrics", "Metrics", ["score", "AUROC"], [["nll", 0.1]])
    StudyResult("fashion-mnist", "Q?", "F.", [table], figures, runs).write(folder)
    return folder


def test_a_report_embeds_no_file_outside_its_result_folder(tmp_path: Path) -> None:
    secret_png = tmp_path / "secret.png"
    _png(secret_png, SECRET)
    outside_run = tmp_path / "outside-run"
    outside_run.mkdir()
    (outside_run / CONFIG_FILE).write_text(f"# {SECRET}\n")
    figures = [
        Figure("link", "A symlinked figure", "link.png"),
        Figure("absolute", "An absolute path", str(secret_png)),
        Figure("parent", "A parent path", "../secret.png"),
        Figure("fine", "A real figure", "fine.png"),
    ]
    folder = _result_folder(
        tmp_path,
        figures,
        {"outside": str(outside_run), "linked": "runs/linked", "up": "../outside-run"},
    )
    (folder / "link.png").symlink_to(secret_png)
    (folder / "runs").mkdir()
    (folder / "runs" / "linked").symlink_to(outside_run, target_is_directory=True)
    _png(folder / "fine.png")
    code, output = _cli("report", str(folder))
    assert code == 0, output
    page = (folder / "report.html").read_text()
    secret_b64 = __import__("base64").b64encode(secret_png.read_bytes()).decode()
    assert SECRET not in page and secret_b64 not in page
    assert page.count("data:image/png;base64,") == 1  # only fine.png
    assert "outside the result folder" in page


# --- 3. every href is a relative, URL-encoded path ------------------------------------------


class _Hrefs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [value or "" for key, value in attrs if key in ("href", "src")]


def _hrefs(page: Path) -> list[str]:
    parser = _Hrefs()
    parser.feed(page.read_text())
    return [h for h in parser.hrefs if not h.startswith("data:image/")]


def test_index_links_to_a_javascript_named_folder_are_relative_paths(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    study = reports / "javascript:alert(document.domain)"
    study.mkdir(parents=True)
    StudyResult("x", "Q?", "F.").write(study)
    write_index(reports)
    hrefs = _hrefs(reports / "index.html")
    assert hrefs, "the index links its study"
    for href in hrefs:
        assert href.startswith("./") and urllib.parse.urlparse(href).scheme == "", href
    assert urllib.parse.unquote(hrefs[0]) == "./javascript:alert(document.domain)/summary.md"


def test_a_tampered_table_name_becomes_no_link_and_is_named(tmp_path: Path) -> None:
    folder = _result_folder(tmp_path, [], {})
    data = json.loads((folder / "result.json").read_text())
    data["tables"][0]["name"] = "javascript:alert(1)//"
    (folder / "result.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="table name"):
        StudyResult.load(folder)
    code, output = _cli("report", str(folder))
    assert code == 2 and "table name" in output and "Traceback" not in output


def test_every_href_of_a_report_is_relative(tmp_path: Path) -> None:
    folder = _result_folder(tmp_path, [], {"model": "runs/a b#c?d"})
    run = folder / "runs" / "a b#c?d"
    run.mkdir(parents=True)
    (run / CONFIG_FILE).write_text("preset: glow/tiny\n")
    rebuild_reports(folder)
    hrefs = _hrefs(folder / "report.html")
    assert "./metrics.csv" in hrefs
    assert "./runs/a%20b%23c%3Fd" in hrefs
    for href in hrefs:
        assert href.startswith("./") and urllib.parse.urlparse(href).scheme == "", href


# --- 4. weights without the digest are refused; --expect-sha256 for shared runs ------------


def _rewrite_model(run_dir: Path, metadata: dict[str, str], scale: float = 1.0) -> None:
    path = run_dir / MODEL_FILE
    tensors = {k: v * scale if v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(tensors, str(path), metadata=metadata)


def test_a_model_file_without_its_digest_is_refused(received: Path, mirror: Path) -> None:
    metadata = dgmood.runs.read_model_metadata(received / MODEL_FILE)
    kept = {k: v for k, v in metadata.items() if k in ("config", "step")}
    _rewrite_model(received, kept, scale=-1.0)  # tampered, and the digest keys removed
    with pytest.raises(RunDirError, match="no sha256"):
        load_run(received)
    code, output = _cli("score", str(received), "--limit", "8", mirror=mirror)
    assert code == 2 and "no sha256" in output


def test_expect_sha256_verifies_the_published_digest(received: Path, mirror: Path) -> None:
    published = hashlib.sha256((received / MODEL_FILE).read_bytes()).hexdigest()
    assert load_run(received, expect_sha256=published).step == 3
    assert load_run(received, expect_sha256=published.upper()).step == 3
    # the attacker recomputes the embedded digest: that passes, the published one does not
    run = load_run(received)
    tensors = {
        k: -v if v.is_floating_point() else v
        for k, v in dgmood.runs.model_state_dict(run.model).items()
    }
    dgmood.runs.save_model(tensors, received / MODEL_FILE, run.config, run.step)
    load_run(received)
    with pytest.raises(RunDirError, match="does not match the expected sha256"):
        load_run(received, expect_sha256=published)
    for command in (["score", str(received), "--limit", "8"], ["evaluate", str(received)]):
        extra = ["--ood", "mnist", "--limit", "8"] if command[0] == "evaluate" else []
        code, output = _cli(*command, *extra, "--expect-sha256", published, mirror=mirror)
        assert code == 2 and "expected sha256" in output, (command, output)
    code, output = _cli("score", str(received), "--expect-sha256", "xyz", mirror=mirror)
    assert code == 2 and "64 hexadecimal" in output


# --- 5. sizes are checked against the stored tensors before anything is built -------------


def _claim_size(run_dir: Path, name: str, hidden: int) -> None:
    """Rewrite ``name`` so that its config claims ``hidden_channels``, digest recomputed."""
    path = run_dir / name
    tensors = load_file(path)
    with __import__("safetensors").safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    config = yaml.safe_load(metadata["config"])
    config["model"]["hidden_channels"] = hidden
    metadata["config"] = yaml.safe_dump(config)
    for key in ("sha256", "format"):
        metadata.pop(key)
    save_tensor_file(path, tensors, metadata)  # a valid digest: the sender computed it


@pytest.fixture
def no_real_build(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if a model is built anywhere but on the meta device (no memory)."""
    built: list[str] = []
    for module in (dgmood.runs, __import__("dgmood.training.loop", fromlist=["x"])):
        original = module.build_model  # type: ignore[attr-defined]

        def guarded(*args: object, _original: object = original, **kwargs: object) -> object:
            if torch.empty(0).device.type != "meta":
                built.append("real")
                hidden = getattr(args[0], "hidden_channels", 0)
                if isinstance(hidden, int) and hidden > 10_000:
                    raise AssertionError("a model was built from an unchecked size")
            return _original(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(module, "build_model", guarded)
    return built


def test_a_model_file_claiming_a_huge_width_is_refused_before_building(
    received: Path, mirror: Path, no_real_build: list[str]
) -> None:
    _claim_size(received, MODEL_FILE, 3_000_000)
    started = time.perf_counter()
    with pytest.raises(RunDirError, match="do not fit its config"):
        load_run(received)
    assert time.perf_counter() - started < 10 and no_real_build == []
    code, output = _cli("score", str(received), "--limit", "8", mirror=mirror)
    assert code == 2 and "do not fit its config" in output and "Traceback" not in output


def test_resume_with_a_config_claiming_a_huge_width_is_refused_before_building(
    received: Path, tiny_data: TinyData, no_real_build: list[str]
) -> None:
    config = RunConfig.load(received / CONFIG_FILE)
    huge = dataclasses.replace(
        config, model=dataclasses.replace(config.model, hidden_channels=3_000_000)
    )  # type: ignore[call-arg]
    huge.save(received / CONFIG_FILE)
    with pytest.raises(RunDirError, match="do not fit"):
        train_tiny(huge, received, tiny_data, resume=True)
    assert no_real_build == []


def test_tensor_bytes_beyond_the_file_are_refused(received: Path) -> None:
    header_claims_more = received / MODEL_FILE
    data = bytearray(header_claims_more.read_bytes())
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end + 10**12]
    encoded = json.dumps(header).encode()
    header_claims_more.write_bytes(
        len(encoded).to_bytes(8, "little") + encoded + data[8 + length :]
    )
    with pytest.raises(RunDirError, match=MODEL_FILE.replace(".", r"\.")):
        load_run(received)


# --- 7. what is printed: no markup, no terminal escapes, commands that paste safely --------


def test_runs_prints_names_as_text_without_escapes(received: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(received, root / "[bold red]boom[/]")
    shutil.copytree(received, root / "evil\x1b]0;pwned\x07\x1b[31mred")
    config = yaml.safe_load((received / CONFIG_FILE).read_text())
    config["preset"] = "[link=https://evil]glow[/link]\x1b[2J"
    (root / "[bold red]boom[/]" / CONFIG_FILE).write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "dgmood.cli.main", "runs", str(root)],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "\x1b" not in output and "\x07" not in output
    assert "[bold red]boom[/]" in output
    assert "[link=https://evil]glow[/link]" in output


def test_the_printed_resume_command_is_shell_quoted(
    received: Path, tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = Path(shutil.copytree(received, tmp_path / "my run $(touch pwned); x"))

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dgmood.training.launch, "train", interrupted)
    code, output = _cli("train", "--resume", "--run-dir", str(odd), "--no-progress", mirror=mirror)
    assert code == 130, output
    command = output.split("continue with: ")[1].strip()
    assert shlex.split(command) == ["dgmood", "train", "--resume", "--run-dir", str(odd)]


def test_the_config_mismatch_hint_is_shell_quoted(
    received: Path, tmp_path: Path, mirror: Path
) -> None:
    odd = Path(shutil.copytree(received, tmp_path / "it's a run"))
    other = tmp_path / "other.yaml"
    other.write_text(runner.invoke(app, ["config", "glow", "--preset", "tiny"]).output)
    code, output = _cli(
        "train", "--config", str(other), "--resume", "--run-dir", str(odd), "--no-progress",
        mirror=mirror,
    )  # fmt: skip
    assert code == 2 and "differs" in output
    hint = output.split("resume with its stored config: ")[1].split(" (--set")[0]
    assert shlex.split(hint) == ["dgmood", "train", "--resume", "--run-dir", str(odd)]


def test_the_reports_rebuild_line_is_shell_quoted(tmp_path: Path) -> None:
    folder = tmp_path / "results $(rm -rf ~)"
    folder.mkdir()
    StudyResult("x", "Q?", "F.").write(folder)
    (page,) = rebuild_reports(folder)
    footer = page.read_text().split("rebuild with <code>")[1].split("</code>")[0]
    assert shlex.split(html.unescape(footer)) == ["dgmood", "report", str(folder)]


def test_markdown_tables_keep_one_row_per_line_whatever_the_names() -> None:
    table = Table(
        "t", "T", ["set", "AUROC"], [["folder:/x/a|b\nc", 0.5], ["folder:/y/`*_[z](u)", 0.25]]
    )
    lines = table.to_markdown().splitlines()
    rows = [line for line in lines if line.startswith("|")]
    assert len(rows) == 4  # header, rule, two rows
    for row in rows:
        unescaped_pipes = len(row) - len(row.replace("|", "")) - row.count("\\|")
        assert unescaped_pipes == 3, row
    result = StudyResult("evaluate", "Is glow (a|b\n# c) fooled?", "F.", [table])
    title = result.to_markdown().splitlines()[0]
    assert title.startswith("# ") and "\\|" in title and title.endswith("fooled?")
