"""Saving figures: one PNG for viewing and one SVG beside it for papers, both atomic.

References:
    matplotlib, "Embedding in a web application server" (figures without pyplot).
"""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dgmood.io import atomic_path

DPI = 120


def save_figure(figure: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``figure`` to ``path`` (PNG) and to ``path`` with suffix ``.svg``; close it.

    Each file is written atomically (:func:`dgmood.io.atomic_path`: complete or absent, with
    ordinary permissions). Returns the PNG's path.
    """
    png_path = Path(path)
    if png_path.suffix.lower() != ".png":
        raise ValueError(f"figures are saved as .png (plus an .svg beside it), got {png_path}")
    FigureCanvasAgg(figure)  # renders without a display, whatever the default backend
    try:
        for file_path, file_format in ((png_path, "png"), (png_path.with_suffix(".svg"), "svg")):
            with atomic_path(file_path) as tmp, open(tmp, "wb") as stream:
                figure.savefig(stream, format=file_format, dpi=dpi, bbox_inches="tight")
    finally:
        # a pyplot figure stays in pyplot's registry (and memory) until closed
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(figure)
    return png_path
