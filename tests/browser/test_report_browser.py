"""The HTML report in a real browser: renders without errors, every image loads, tables read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import LoadedPage
from table_checks import assert_table_matches_csv

from dgmood.data.loading import DataSources
from dgmood.reporting.html import REPORT_FILE, write_index, write_report
from dgmood.reporting.plots import plot_bpd_histograms, plot_flow_decomposition
from dgmood.reporting.result import Figure, StudyResult, Table
from dgmood.studies import StudyContext, run_study


def hand_built_study(out_dir: Path, finding: str) -> StudyResult:
    rng = np.random.default_rng(0)
    sets = {
        "fashion-mnist-test": rng.normal(3.0, 0.4, 300),
        "mnist-test": rng.normal(2.1, 0.3, 300),
    }
    plot_bpd_histograms(sets, out_dir / "bpd_histogram.png", title="hand-built")
    plot_flow_decomposition(
        {k: {"log_pz": -v * 100, "log_abs_det_jacobian": v * 10} for k, v in sets.items()},
        out_dir / "decomposition.png",
    )
    result = StudyResult(
        study="fashion-mnist",
        title="Does a model trained on FashionMNIST give MNIST higher likelihood?",
        finding=finding,
        tables=[
            Table(
                "ood_metrics",
                "OOD detection metrics",
                ["score", "AUROC", "AUROC 95% CI low", "AUROC 95% CI high"],
                [["nll", 0.123456, 0.1, 0.15], ["typicality", 0.9876, 0.97, 0.99]],
                caption="Higher score = more OOD.",
            )
        ],
        figures=[
            Figure("bpd_histogram", "Bits/dim", "bpd_histogram.png", "Lower = more likely."),
            Figure("decomposition", "log p(z) vs log|det J|", "decomposition.png"),
        ],
        runs={"model": str(out_dir / "runs" / "model")},  # never trained: said missing
        timings={"train model": 1.0},
        environment={"python": "3.11"},
    )
    result.write(out_dir)
    write_report(result, out_dir)
    return result


def assert_renders_cleanly(seen: LoadedPage, result: StudyResult, out_dir: Path) -> None:
    assert seen.console_errors == []
    assert seen.failed_requests == []
    # self-contained: the only request is the page itself (images are data: URIs)
    assert [url for url in seen.requests if not url.startswith("data:")] == [
        (out_dir / REPORT_FILE).resolve().as_uri()
    ]
    assert len(seen.images) == len(result.figures)
    for image in seen.images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    assert seen.finding == result.finding
    assert set(seen.tables) == {t.name for t in result.tables}
    for table in result.tables:
        csv_path = out_dir / f"{table.name}.csv"
        assert_table_matches_csv(seen.tables[table.name], csv_path, table.digits)
    assert seen.screenshot is not None and seen.screenshot.stat().st_size > 10_000


def test_hand_built_report_renders_in_chromium(
    tmp_path: Path, open_report: Callable[[Path], LoadedPage]
) -> None:
    out = tmp_path / "study"
    finding = "MNIST is <script>window.hacked = 1</script> more likely: AUROC 0.123."
    result = hand_built_study(out, finding)
    seen = open_report(out / REPORT_FILE)
    assert_renders_cleanly(seen, result, out)
    assert "<script>" in seen.finding  # shown as text, not run


def test_index_links_open_in_chromium(
    tmp_path: Path, open_report: Callable[[Path], LoadedPage], browser: object
) -> None:
    hand_built_study(tmp_path / "a", "finding A: 0.1")
    index = write_index(tmp_path)
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(index.resolve().as_uri())
        page.click("text=a")
        assert page.url == (tmp_path / "a" / REPORT_FILE).resolve().as_uri()
        assert page.inner_text("#finding") == "finding A: 0.1"
    finally:
        page.close()


@pytest.mark.slow
def test_tiny_fashion_mnist_study_report_renders_in_chromium(
    tmp_path: Path, mirror: Path, open_report: Callable[[Path], LoadedPage]
) -> None:
    out = tmp_path / "fashion-mnist"
    ctx = StudyContext(
        out_dir=out,
        sources=DataSources(mirror=str(mirror)),
        preset="tiny",
        steps=4,
        limit=64,
        device="cpu",
        progress=False,
    )
    result = run_study("fashion-mnist", ctx, ["train_limit=64"])
    assert (out / REPORT_FILE).exists()  # run_study writes the page
    seen = open_report(out / REPORT_FILE)
    assert_renders_cleanly(seen, result, out)
    html = (out / REPORT_FILE).read_text()
    assert "family: glow" in html and "status-done" in html  # the run's config and status
