"""A report's HTML table against its CSV (shared by the HTML and the browser tests)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest


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
                continue
            assert float(cell) == pytest.approx(value, abs=0.5 * 10**-digits, rel=1e-3), (
                cell,
                full,
            )
