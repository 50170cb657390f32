"""One matplotlib style for every dgmood figure: readable in print, colour-blind safe.

The palette is Okabe & Ito's, distinguishable under the common colour-vision deficiencies and
in grayscale print (blue and vermillion differ in lightness as well as hue). Figures are
drawn inside :func:`styled` so the style never leaks into a user's own matplotlib state.

References: Okabe & Ito, "Color Universal Design (CUD): how to make figures and
presentations that are friendly to colorblind people" (2008).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import matplotlib
from cycler import cycler

# Okabe-Ito, ordered so that the first two (in-distribution vs the first OOD set) contrast most
PALETTE = [
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
]
IN_DISTRIBUTION = PALETTE[0]
OUT_OF_DISTRIBUTION = PALETTE[3]  # the chicken post draws OOD images in pink
NEUTRAL = "#7F7F7F"  # reference bars (e.g. the uniform "expected" softmax)

STYLE: dict[Any, Any] = {  # rcParams; keys are checked by matplotlib
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.grid": True,
    "axes.grid.axis": "y",  # no grid lines across images and barcode strips
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "font.size": 10,
    "lines.linewidth": 1.5,
    "figure.dpi": 100,
    "savefig.dpi": 150,  # sharp enough for print at the figure sizes used
    "image.cmap": "viridis",  # perceptually uniform, readable in grayscale
    "hist.bins": 60,
}


F = TypeVar("F", bound=Callable[..., Any])


def styled(func: F) -> F:
    """Run a plotting function with :data:`STYLE` applied (and restored afterwards)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
