"""One self-contained HTML page per study, and an index of the studies in a folder.

The page opens with the finding, then the tables (numbers as displayed by
:meth:`Table.formatted_rows`, so they match ``summary.md``), the figures embedded as base64
data URIs, the config of every run, the study options, the time each step took and the
environment. CSS is inline and nothing is fetched, so the file can be mailed or archived on
its own. Jinja2 autoescapes everything: a finding or a config is shown as text, never as markup.

A result folder may come from someone else, so a report reads only what lies inside it: a
figure is embedded only if it is a regular file inside the result folder (after following
any link), a run's config only if the run lies inside the folder the report was asked for;
and every link is a relative, URL-encoded ``./`` path, never a URL a name could turn into
``javascript:``.
"""

from __future__ import annotations

import base64
import os
import shlex
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from dgmood import pretrained
from dgmood.io import atomic_write_text
from dgmood.reporting.result import RESULT_FILE, StudyResult, Table
from dgmood.reporting.runs_table import RunSummary, summarize_run

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"
RUNS_DIR = "runs"  # where a study keeps its runs (dgmood.studies.base.RUNS_DIR)
_IMAGE_TYPES = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("dgmood.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _version() -> str:
    from dgmood._version import __version__

    return str(__version__)


def _is_numeric_column(table: Table, index: int) -> bool:
    cells = [row[index] for row in table.rows]
    return any(c is not None for c in cells) and all(
        isinstance(c, int | float) and not isinstance(c, bool) or c is None for c in cells
    )


def inside(path: Path, root: Path) -> Path | None:
    """``path`` with every link resolved, if it lies inside ``root`` (else None)."""
    real, real_root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return real if real == real_root or real_root in real.parents else None


def href(relative: str | os.PathLike[str]) -> str:
    """A link to ``relative`` (a path below the page's folder): ``./`` + URL-encoded path,
    so that no name (``javascript:...``, ``a#b``) is read as a scheme, query or fragment."""
    return "./" + urllib.parse.quote(Path(relative).as_posix(), safe="/")


def _data_uri(path: Path, out_dir: Path) -> tuple[str | None, str]:
    """The figure as a ``data:`` URI, or None and why it is not embedded."""
    mime = _IMAGE_TYPES.get(path.suffix.lower())
    real = inside(path, out_dir)
    if real is None:
        return None, "is outside the result folder, so it is not embedded"
    if mime is None or not real.is_file():
        return None, "is missing"
    return f"data:{mime};base64,{base64.b64encode(real.read_bytes()).decode('ascii')}", ""


def duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 04 s``, ``1 h 02 min``: how long, at a glance."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


@dataclass
class _RunView:
    role: str
    path: str  # as recorded in the result
    href: str  # relative to the report, so the folder can be moved as a whole
    config: str | None
    config_path: str
    summary: RunSummary | None
    outside: bool  # outside the folder the report may read: not read
    shipped: str | None = None  # ``pretrained:NAME`` of a run shipped with dgmood


def resolve_run_dir(recorded: str, role: str, out_dir: Path) -> Path:
    """Where the run recorded as ``recorded`` is now.

    Results record run directories as given when the study ran (often relative to the
    working directory of that time); a report rebuilt elsewhere, or a moved result folder,
    still finds a study's own runs in ``out_dir/runs/ROLE``.
    """
    if pretrained.is_reference(recorded) and recorded.removeprefix(pretrained.PREFIX) in (
        pretrained.manifest()
    ):
        return pretrained.get(recorded).path  # this installation's copy of a shipped run
    candidates = [Path(recorded), out_dir / recorded, out_dir / RUNS_DIR / role]
    for candidate in candidates:
        if (candidate / "config.yaml").exists():
            return candidate
    return candidates[0]


def _run_views(result: StudyResult, out_dir: Path, read_root: Path) -> list[_RunView]:
    views = []
    for role, recorded in result.runs.items():
        run_dir = resolve_run_dir(recorded, role, out_dir)
        config_path = run_dir / "config.yaml"
        name = pretrained.pretrained_name(run_dir)
        # a config outside is not read (its existence alone is said); a shipped run's is
        # dgmood's own file
        outside = name is None and config_path.exists() and inside(config_path, read_root) is None
        config = config_path.read_text() if not outside and config_path.is_file() else None
        summary = summarize_run(run_dir) if config is not None else None
        relative = os.path.relpath(os.path.abspath(run_dir), os.path.abspath(out_dir))
        views.append(
            _RunView(
                role,
                recorded,
                href(relative),
                config,
                str(config_path),
                summary,
                outside,
                None if name is None else f"{pretrained.PREFIX}{name}",
            )
        )
    return views


def _rebuild_path(out_dir: Path, read_root: Path) -> Path:
    """What to pass to ``dgmood report``: the run, for a run evaluated in place (RUN/eval)."""
    if out_dir.name == "eval" and os.path.abspath(out_dir.parent) == os.path.abspath(read_root):
        return read_root
    return out_dir


def render_report(
    result: StudyResult,
    out_dir: str | os.PathLike[str],
    read_root: str | os.PathLike[str] | None = None,
) -> str:
    """The HTML page of ``result``, whose figures and runs are found relative to ``out_dir``.

    Figures are read only inside ``out_dir``; runs' configs only inside ``read_root``
    (default ``out_dir``; e.g. the run directory whose ``eval/`` folder is ``out_dir``).
    """
    out_dir = Path(out_dir)
    root = Path(read_root) if read_root is not None else out_dir
    tables = [
        {
            "name": table.name,
            "csv_href": href(f"{table.name}.csv"),
            "title": table.title,
            "caption": table.caption,
            "columns": table.columns,
            "rows": table.formatted_rows(),
            "numeric": [_is_numeric_column(table, i) for i in range(len(table.columns))],
        }
        for table in result.tables
    ]
    figures = []
    for figure in result.figures:
        src, why_not = _data_uri(out_dir / figure.path, out_dir)
        figures.append(
            {
                "name": figure.name,
                "title": figure.title,
                "caption": figure.caption,
                "path": figure.path,
                "src": src,
                "why_not": why_not,
            }
        )
    timings = [(step, seconds, duration(seconds)) for step, seconds in result.timings.items()]
    total = sum(result.timings.values())
    template = _environment().get_template("report.html.j2")
    return template.render(
        result=result,
        tables=tables,
        figures=figures,
        runs=_run_views(result, out_dir, root),
        timings=timings,
        total_seconds=total,
        total_shown=duration(total),
        version=_version(),
        rebuild_command=shlex.join(["dgmood", "report", str(_rebuild_path(out_dir, root))]),
    )


def write_report(
    result: StudyResult,
    out_dir: str | os.PathLike[str],
    read_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` for ``result`` (atomically) and return its path
    (``read_root``: see :func:`render_report`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    atomic_write_text(path, render_report(result, out_dir, read_root))
    return path


def study_folders(reports_dir: str | os.PathLike[str]) -> list[Path]:
    """Every folder below ``reports_dir`` (itself included) holding a complete study result."""
    root = Path(reports_dir)
    found = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "scores")
        if RESULT_FILE in files:
            found.append(Path(current))
    return found


# Headless Chromium flags for looking at a report offline (the screenshot script and the
# browser tests): no sandbox as root, and none of the background requests Chromium makes,
# which a machine without network answers with errors.
HEADLESS_CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def write_index(reports_dir: str | os.PathLike[str]) -> Path:
    """Write ``reports_dir/index.html``: every study folder below it with its finding."""
    root = Path(reports_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    studies: list[dict[str, Any]] = []
    for folder in study_folders(root):
        try:
            result = StudyResult.load(folder)
        except ValueError as error:
            name, title, finding = "?", "unreadable result", str(error)
        else:
            name, title, finding = result.study, result.title, result.finding
        page = REPORT_FILE if (folder / REPORT_FILE).exists() else "summary.md"
        relative = folder.relative_to(root).as_posix()
        studies.append(
            {
                "folder": relative,
                "href": href(f"{relative}/{page}" if relative != "." else page),
                "name": name,
                "title": title,
                "finding": finding,
            }
        )
    html = _environment().get_template("index.html.j2").render(studies=studies, version=_version())
    path = root / INDEX_FILE
    atomic_write_text(path, html)
    return path


def rebuild_reports(path: str | os.PathLike[str]) -> list[Path]:
    """Rebuild the report(s) under ``path`` from disk, without training or scoring.

    ``path`` is a study result folder (``result.json``), a run directory evaluated by
    ``dgmood evaluate`` (its ``eval/`` folder), or a folder of studies (each report is
    rebuilt and ``index.html`` written; a result that cannot be read is skipped with a
    warning naming it, and listed as unreadable in the index). Returns the pages written,
    the main one first.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    if (root / RESULT_FILE).exists():
        return [write_report(StudyResult.load(root), root)]
    if (root / "eval" / RESULT_FILE).exists():  # a run evaluated in place: its config is read
        return [write_report(StudyResult.load(root / "eval"), root / "eval", read_root=root)]
    folders = study_folders(root)
    if not folders:
        raise FileNotFoundError(
            f"no study result (result.json) under {root}: run `dgmood reproduce STUDY` or "
            "`dgmood evaluate RUN --ood SET` first"
        )
    pages = []
    for folder in folders:  # one broken result does not stop the others: it is named
        try:
            result = StudyResult.load(folder)
        except ValueError as error:
            warnings.warn(f"skipped {folder}: {error}", stacklevel=2)
            continue
        pages.append(write_report(result, folder))
    return [write_index(root), *pages]
