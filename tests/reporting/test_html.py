"""The HTML report: tables equal the CSV numbers, figures embedded, text escaped, runs listed."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from table_checks import assert_table_matches_csv
from typer.testing import CliRunner

from dgmood.cli.main import app
from dgmood.presets import run_preset
from dgmood.reporting.html import (
    INDEX_FILE,
    REPORT_FILE,
    duration,
    rebuild_reports,
    render_report,
    write_index,
    write_report,
)
from dgmood.reporting.plots import plot_bpd_histograms
from dgmood.reporting.result import Figure, StudyResult, Table
from dgmood.reporting.runs_table import list_runs


class _Page(HTMLParser):
    """Tables (by data-name), image sources, script tags and the finding of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.scripts = 0
        self.finding = ""
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._in_finding = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "table" and values.get("data-name"):
            self._table = self.tables.setdefault(str(values["data-name"]), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(str(values.get("src")))
        elif tag == "script":
            self.scripts += 1
        elif tag == "p" and values.get("id") == "finding":
            self._in_finding = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "p":
            self._in_finding = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_finding:
            self.finding += data


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def make_run(run_dir: Path, step: int | None, steps: int = 20, val: float | None = 4.25) -> Path:
    """A run directory as training leaves it: config, metrics, a model with step metadata."""
    run_dir.mkdir(parents=True)
    config = (
        run_preset("glow", "tiny", "fashion-mnist")
        .to_yaml()
        .replace("steps: 20", f"steps: {steps}")
    )
    (run_dir / "config.yaml").write_text(config)
    records = [{"step": 5, "loss": 3.0}]
    if val is not None:
        records.append({"step": steps, "val_bpd": val})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if step is not None:
        save_file(
            {"w": np.zeros(2, dtype=np.float32)},
            str(run_dir / "model.safetensors"),
            metadata={"config": config, "step": str(step), "format": "dgmood-1"},
        )
    return run_dir


def make_study(
    out_dir: Path, finding: str = "MNIST gets higher likelihood: AUROC 0.123."
) -> StudyResult:
    rng = np.random.default_rng(0)
    plot_bpd_histograms(
        {"fashion-mnist-test": rng.normal(3.0, 0.3, 200), "mnist-test": rng.normal(2.0, 0.3, 200)},
        out_dir / "bpd_histogram.png",
        title="glow/tiny trained on fashion-mnist",
    )
    make_run(out_dir / "runs" / "model", step=20)
    result = StudyResult(
        study="fashion-mnist",
        title="Does a model trained on FashionMNIST give MNIST higher likelihood?",
        finding=finding,
        tables=[
            Table(
                "bits_per_dim",
                "Bits/dim per set",
                ["set", "role", "images", "mean bits/dim"],
                [["fashion-mnist-test", "in-test", 64, 3.14159265], ["mnist-test", "ood", 64, 2.0]],
                caption="Lower = higher likelihood.",
            ),
            Table(
                "ood_metrics",
                "OOD detection metrics",
                ["score", "AUROC", "AUROC 95% CI low", "AUROC 95% CI high", "tiny"],
                [
                    ["nll", 0.12345678, 0.1, 0.15, 1.5e-7],
                    ["typicality", float("nan"), None, 0.9, 2e7],
                ],
                caption="Higher score = more OOD.",
                digits=3,
            ),
        ],
        figures=[Figure("bpd_histogram", "Bits/dim histograms", "bpd_histogram.png", "Figure 1.")],
        runs={"model": str(out_dir / "runs" / "model")},
        settings={"model": "glow", "ood": ["mnist"]},
        timings={"train model": 12.5, "score sets": 3.25},
        environment={"dgmood": "0.1.0", "torch": "2.x"},
    )
    result.write(out_dir)
    write_report(result, out_dir)
    return result


def test_report_tables_equal_the_csv_and_figures_are_embedded(tmp_path: Path) -> None:
    result = make_study(tmp_path)
    html = (tmp_path / REPORT_FILE).read_text()
    page = parse(html)
    assert page.finding == result.finding
    for table in result.tables:
        assert_table_matches_csv(
            page.tables[table.name], tmp_path / f"{table.name}.csv", table.digits
        )
    # what is shown is the Markdown's formatting, not Python's repr
    assert page.tables["bits_per_dim"][1][3] == "3.142"
    assert page.tables["ood_metrics"][2][1:3] == ["nan", ""]
    (source,) = page.images
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix)
    assert base64.b64decode(source[len(prefix) :]) == (tmp_path / "bpd_histogram.png").read_bytes()
    # self-contained: nothing is fetched (no external stylesheet, script or image)
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert html.index(result.finding) < html.index("Bits/dim per set")  # finding first
    for text in ("Lower = higher likelihood.", "Figure 1.", "train model", "12.5", "torch"):
        assert text in html
    assert "0:00" not in html and duration(15.75) == "16 s" and duration(184) == "3 min 04 s"


def test_report_shows_each_run_config_and_status(tmp_path: Path) -> None:
    make_study(tmp_path)
    html = (tmp_path / REPORT_FILE).read_text()
    assert "family: glow" in html  # config.yaml, verbatim
    assert 'href="./runs/model"' in html
    assert "status-done" in html and "val_bpd 4.2500" in html


def test_a_missing_run_config_and_figure_are_said_not_hidden(tmp_path: Path) -> None:
    result = StudyResult(
        "evaluate",
        "t",
        "f",
        figures=[Figure("gone", "Gone", "gone.png")],
        runs={"model": str(tmp_path / "nowhere"), "classifier": "elsewhere"},
    )
    html = render_report(result, tmp_path)
    assert "Figure file gone.png is missing" in html
    assert html.count("The config of this run is missing") == 2
    assert "No timings were recorded" in html


def test_finding_with_markup_is_shown_as_text(tmp_path: Path) -> None:
    finding = 'AUROC <script>alert("x")</script> & <b>0.1</b>'
    result = make_study(tmp_path, finding=finding)
    html = (tmp_path / REPORT_FILE).read_text()
    assert "<script>" not in html and "<b>0.1</b>" not in html
    assert "&lt;script&gt;" in html
    page = parse(html)
    assert page.scripts == 0
    assert page.finding == result.finding  # the text the reader sees is the finding itself


def test_report_is_rebuilt_from_disk_identically(tmp_path: Path) -> None:
    make_study(tmp_path)
    first = (tmp_path / REPORT_FILE).read_text()
    (tmp_path / REPORT_FILE).unlink()
    (page,) = rebuild_reports(tmp_path)
    assert page == tmp_path / REPORT_FILE
    assert page.read_text() == first  # StudyResult.load round-trips all the report shows


def test_index_lists_every_study_with_its_finding(tmp_path: Path) -> None:
    make_study(tmp_path / "fashion-mnist", finding="first finding: 0.1")
    make_study(tmp_path / "nested" / "chicken", finding="second finding: 0.9")
    (tmp_path / "not-a-study").mkdir()
    (tmp_path / "not-a-study" / "summary.md").write_text("x")
    index = write_index(tmp_path)
    assert index == tmp_path / INDEX_FILE
    html = index.read_text()
    assert 'href="./fashion-mnist/report.html"' in html
    assert 'href="./nested/chicken/report.html"' in html
    assert "first finding: 0.1" in html and "second finding: 0.9" in html
    assert "not-a-study" not in html


def test_report_cli_rebuilds_pages_and_the_index(tmp_path: Path) -> None:
    make_study(tmp_path / "a")
    make_study(tmp_path / "b")
    (tmp_path / "a" / REPORT_FILE).unlink()
    result = CliRunner().invoke(app, ["report", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / REPORT_FILE).exists() and (tmp_path / INDEX_FILE).exists()
    assert f"index: {tmp_path / INDEX_FILE}" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_list_runs_tells_done_interrupted_and_failed_apart(tmp_path: Path) -> None:
    make_run(tmp_path / "done", step=20)
    make_run(tmp_path / "deep" / "interrupted", step=10, val=None)
    make_run(tmp_path / "failed", step=None)
    (tmp_path / "deep" / "interrupted" / "scores").mkdir()
    runs = {r.run_dir.relative_to(tmp_path).as_posix(): r for r in list_runs(tmp_path)}
    assert sorted(runs) == ["deep/interrupted", "done", "failed"]
    assert runs["done"].status == "done" and runs["done"].step == 20
    assert runs["done"].last_val == {"val_bpd": 4.25}
    assert runs["deep/interrupted"].status == "interrupted"
    assert (runs["deep/interrupted"].step, runs["deep/interrupted"].steps) == (10, 20)
    assert runs["deep/interrupted"].last_val == {}
    assert runs["failed"].status == "failed" and runs["failed"].step is None
    assert runs["done"].model == "glow/tiny" and runs["done"].dataset == "fashion-mnist"


def test_runs_cli_prints_the_table(tmp_path: Path) -> None:
    make_run(tmp_path / "r1", step=20)
    make_run(tmp_path / "r2", step=None)
    result = CliRunner().invoke(
        app, ["runs", str(tmp_path)], catch_exceptions=False, env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "done" in result.output and "failed" in result.output
    assert "val_bpd=4.2500" in result.output and "20 / 20" in result.output
    assert "│ r1 " in result.output  # paths relative to the folder listed
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a directory" in result.output
