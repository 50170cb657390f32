"""What a browser saw of a page, and the check that a shown table equals its CSV."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
