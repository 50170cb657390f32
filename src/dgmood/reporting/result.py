"""What a study returns: tables as data, figures as files, a one-line finding.

A :class:`StudyResult` is written to a folder as ``result.json`` (everything, reloadable),
one ``<table>.csv`` and ``<table>.md`` per table, the figures (PNG + SVG), and
``summary.md``; :meth:`StudyResult.load` reads it back, so a report can be rebuilt from disk
without retraining.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dgmood import pretrained
from dgmood.io import atomic_write_text

RESULT_FILE = "result.json"
Cell = str | int | float | None
#: a table's name is a file stem (``<name>.csv``) and part of links: nothing else is allowed
TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def markdown_text(value: str) -> str:
    """``value`` as literal Markdown on one line: control characters and line breaks become
    a space, and characters that would make a link, HTML, emphasis or a table cell border
    are backslash-escaped (folder names, labels and titles can hold any of them)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _CONTROL.sub(" ", value))


def _format(value: Cell, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 10 ** (-digits)):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


@dataclass
class Table:
    """A table as data: column names, rows of cells, and how to read it."""

    name: str  # file stem, e.g. "bits_per_dim"
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    caption: str = ""  # what the numbers mean (units, conventions)
    digits: int = 3  # decimals shown in Markdown/HTML (CSV keeps full precision)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not TABLE_NAME.fullmatch(self.name):
            raise ValueError(
                f"invalid table name {self.name!r}: a table name is a file stem of letters, "
                "digits, '_', '.' and '-'"
            )
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(
                    f"table {self.name!r}: a row has {len(row)} cells for "
                    f"{len(self.columns)} columns"
                )

    def formatted_rows(self) -> list[list[str]]:
        return [[_format(cell, self.digits) for cell in row] for row in self.rows]

    def to_markdown(self) -> str:
        numeric = [
            all(isinstance(row[i], int | float) or row[i] is None for row in self.rows)
            for i in range(len(self.columns))
        ]
        lines = [
            "| " + " | ".join(markdown_text(c) for c in self.columns) + " |",
            "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
        ]
        lines += [
            "| " + " | ".join(markdown_text(c) for c in row) + " |" for row in self.formatted_rows()
        ]
        text = "\n".join(lines) + "\n"
        return text + (f"\n{self.caption}\n" if self.caption else "")  # authored, not names

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(["" if c is None else c for c in row] for row in self.rows)
        return buffer.getvalue()

    def column(self, name: str) -> list[Cell]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]


@dataclass
class Figure:
    """A figure written by a study: its PNG (an SVG beside it when made), title and caption."""

    name: str
    title: str
    path: str  # PNG, relative to the result folder
    caption: str = ""


@dataclass
class StudyResult:
    """The structured result of one study, ready for Markdown/CSV/PNG and the HTML report."""

    study: str  # registry name, e.g. "fashion-mnist"
    title: str  # the question it answers
    finding: str  # one sentence with its number
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)  # role -> run directory
    settings: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # JSON-able numbers behind the tables
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    environment: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a shipped run is recorded by name: its folder is this installation's, not the reader's
        for role, recorded in self.runs.items():
            name = pretrained.pretrained_name(recorded)
            if name is not None:
                self.runs[role] = f"{pretrained.PREFIX}{name}"

    def table(self, name: str) -> Table:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"study {self.study!r} has no table {name!r}")

    def to_markdown(self) -> str:
        parts = [f"# {markdown_text(self.title)}\n", f"**{markdown_text(self.finding)}**\n"]
        for table in self.tables:
            parts.append(f"## {markdown_text(table.title)}\n\n{table.to_markdown()}")
        for figure in self.figures:
            target = urllib.parse.quote(figure.path, safe="/")
            parts.append(f"![{markdown_text(figure.title)}]({target})\n")
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyResult:
        values = dict(data)
        values["tables"] = [Table(**t) for t in values.get("tables", [])]
        values["figures"] = [Figure(**f) for f in values.get("figures", [])]
        return cls(**values)

    def write(self, out_dir: Path) -> dict[str, Path]:
        """``result.json``, ``summary.md`` and each table as CSV + Markdown into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for table in self.tables:
            paths[f"{table.name}.csv"] = out_dir / f"{table.name}.csv"
            atomic_write_text(paths[f"{table.name}.csv"], table.to_csv())
            paths[f"{table.name}.md"] = out_dir / f"{table.name}.md"
            atomic_write_text(paths[f"{table.name}.md"], table.to_markdown())
        paths["summary"] = out_dir / "summary.md"
        atomic_write_text(paths["summary"], self.to_markdown())
        # written last: its presence marks a complete result folder
        paths["result"] = out_dir / RESULT_FILE
        atomic_write_text(paths["result"], json.dumps(self.to_dict(), indent=2, default=str))
        return paths

    @classmethod
    def load(cls, out_dir: Path) -> StudyResult:
        path = Path(out_dir) / RESULT_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {out_dir} a study result folder?")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError, RecursionError) as e:
            raise ValueError(f"{path} is not a valid study result ({e})") from None
