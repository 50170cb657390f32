"""What a browser saw of a page, and the check that a shown table equals its CSV."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class LoadedPage:
    """What the browser saw: errors, failed requests, images, tables, the screenshot."""

    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    finding: str = ""
    screenshot: Path | None = None


def assert_table_matches_csv(shown: list[list[str]], csv_path: Path, digits: int) -> None:
    """The page's table equals the CSV: same header, numbers equal to the displayed precision."""
    expected = list(csv.reader(csv_path.read_text().splitlines()))
    assert shown[0] == expected[0]
    assert len(shown) == len(expected)
    for shown_row, csv_row in zip(shown[1:], expected[1:], strict=True):
        assert len(shown_row) == len(csv_row)
        for cell, full in zip(shown_row, csv_row, strict=True):
            try:
                value = float(full)
            except ValueError:
                assert cell == full
                continue
            if math.isnan(value):
                assert cell == "nan"
            else:
                assert float(cell) == pytest.approx(value, abs=0.5 * 10**-digits, rel=1e-3)
