"""Figures of the chicken post: softmax bars, confidence barcode, sorted scores, reconstructions.

Every function takes numpy arrays (torch tensors work too) and an output ``.png`` path,
writes the figure there and as SVG beside it (:func:`dgmood.reporting.figures.save_figure`)
and returns the PNG's path. Figures are drawn on matplotlib's Agg canvas directly, so
nothing touches pyplot's global state or needs a display.

References:
    "Passing a chicken through an MNIST model" (2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from dgmood.reporting.figures import save_figure
from dgmood.reporting.style import IN_DISTRIBUTION as IN_DISTRIBUTION_COLOUR
from dgmood.reporting.style import NEUTRAL, OUT_OF_DISTRIBUTION, styled

OUT_OF_DISTRIBUTION_COLOUR = OUT_OF_DISTRIBUTION  # the post draws OOD images in pink


def _as_1d(values: object, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _as_display_image(image: object) -> np.ndarray:
    """``[H, W]``, ``[1|3, H, W]`` or ``[H, W, 1|3]`` (uint8 or float in [0, 1]) -> displayable."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(
            f"expected an image [H, W], [C, H, W] or [H, W, C] with C in (1, 3), "
            f"got shape {list(array.shape)}"
        )
    if array.dtype == np.uint8:
        return array
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def _show_image(axes: Axes, image: object, title: str = "") -> None:
    pixels = _as_display_image(image)
    limits = (0, 255) if pixels.dtype == np.uint8 else (0.0, 1.0)
    axes.imshow(pixels, cmap="gray", vmin=limits[0], vmax=limits[1], interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title, fontsize=9)


@styled
def plot_class_probabilities(
    probs: object,
    out_path: str | Path,
    image: object | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Bars of the expected (uniform) vs the actual softmax probabilities of one input.

    ``probs`` is ``[K]`` summing to 1; ``image`` (optional) is the MNIST-ified input shown
    beside the bars.

    References:
        "Passing a chicken through an MNIST model" (2018), the chicken's histogram figure.
    """
    probs = _as_1d(probs, "probs")
    if (probs < 0).any() or abs(probs.sum() - 1.0) > 1e-3:
        raise ValueError(f"probs must be a probability vector (>= 0, sum 1), sum is {probs.sum()}")
    num_classes = probs.size
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} probabilities")

    panels = 3 if image is not None else 2
    figure = Figure(figsize=(3.2 * panels, 3.0), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    if image is not None:
        _show_image(axes[0], image, "input (MNIST-ified)")
    positions = np.arange(num_classes)
    expected_axes, actual_axes = axes[-2], axes[-1]
    expected_axes.bar(positions, np.full(num_classes, 1.0 / num_classes), color=NEUTRAL)
    expected_axes.set_title("expected (uniform)", fontsize=9)
    actual_axes.bar(positions, probs, color=OUT_OF_DISTRIBUTION_COLOUR)
    top = int(np.argmax(probs))
    actual_axes.set_title(f"actual: p({names[top]}) = {probs[top]:.1%}", fontsize=9)
    for bar_axes in (expected_axes, actual_axes):
        bar_axes.set_ylim(0.0, 1.0)
        bar_axes.set_xticks(positions, names, fontsize=8)
        bar_axes.set_xlabel("class")
    expected_axes.set_ylabel("softmax probability")
    if title:
        figure.suptitle(title)
    return save_figure(figure, out_path)


def barcode_colours(
    in_scores: object,
    out_scores: object,
    colours: tuple[str, str] = (IN_DISTRIBUTION_COLOUR, OUT_OF_DISTRIBUTION_COLOUR),
) -> list[str]:
    """One colour per image, ordered by increasing score (ties keep in-before-out order).

    Pure: this is the whole ordering logic of :func:`plot_confidence_barcode`.
    """
    in_scores = _as_1d(in_scores, "in_scores")
    out_scores = _as_1d(out_scores, "out_scores")
    values = np.concatenate([in_scores, out_scores])
    is_out = np.concatenate([np.zeros(in_scores.size, bool), np.ones(out_scores.size, bool)])
    order = np.argsort(values, kind="stable")
    return [colours[1] if flag else colours[0] for flag in is_out[order]]


@styled
def plot_confidence_barcode(
    in_scores: object,
    out_scores: object,
    out_path: str | Path,
    labels: tuple[str, str] = ("MNIST", "FashionMNIST"),
    xlabel: str = "confidence (max softmax probability), increasing \u2192",
) -> Path:
    """One vertical line per image, blue in-distribution and pink OOD, sorted by score.

    With confidence as the score the ideal picture is all pink on the left and all blue on
    the right; with an OOD score (higher = more OOD) it is the reverse.

    References:
        "Passing a chicken through an MNIST model" (2018), the sorted-confidence barcode.
    """
    figure = Figure(figsize=(8.0, 1.8), layout="constrained")
    axes = figure.subplots()
    _draw_barcode(axes, barcode_colours(in_scores, out_scores), xlabel)
    axes.legend(
        handles=_legend_handles(labels), loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2
    )
    return save_figure(figure, out_path)


def _draw_barcode(axes: Axes, colours: list[str], xlabel: str) -> None:
    """One vertical line per image, in the given (sorted) colours."""
    strip = np.array([to_rgb(colour) for colour in colours])[None, :, :]
    axes.imshow(strip, aspect="auto", interpolation="antialiased", extent=(0, len(colours), 0, 1))
    axes.set_yticks([])
    axes.set_xlim(0, len(colours))
    axes.set_xlabel(xlabel)


def _legend_handles(labels: tuple[str, str]) -> list[Patch]:
    return [
        Patch(color=IN_DISTRIBUTION_COLOUR, label=labels[0]),
        Patch(color=OUT_OF_DISTRIBUTION_COLOUR, label=labels[1]),
    ]


@styled
def plot_sorted_scores(
    in_scores: object,
    out_scores: object,
    out_path: str | Path,
    labels: tuple[str, str] = ("MNIST", "FashionMNIST"),
    ylabel: str = "ELBO (nats)",
) -> Path:
    """All images' scores sorted from lowest to highest: the curve, and below it a barcode
    strip saying which dataset each rank belongs to (a scatter would hide the minority).

    References:
        "Passing a chicken through an MNIST model" (2018), the sorted VAE-ELBO figure.
    """
    in_scores = _as_1d(in_scores, "in_scores")
    out_scores = _as_1d(out_scores, "out_scores")
    values = np.sort(np.concatenate([in_scores, out_scores]), kind="stable")
    figure = Figure(figsize=(7.0, 4.0), layout="constrained")
    curve_axes, strip_axes = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]}
    )
    curve_axes.plot(np.arange(values.size), values, color="black", linewidth=1)
    # a few OOD images can score orders of magnitude below the rest: symmetric-log axis
    typical = float(np.median(np.abs(values)))
    if typical > 0 and float(np.abs(values).max()) > 100 * typical:
        curve_axes.set_yscale("symlog", linthresh=typical)
    curve_axes.set_ylabel(ylabel)
    curve_axes.legend(handles=_legend_handles(labels), loc="upper left")
    _draw_barcode(
        strip_axes,
        barcode_colours(in_scores, out_scores),
        "images sorted by score, increasing \u2192",
    )
    return save_figure(figure, out_path)


@styled
def plot_reconstructions(
    originals: object,
    reconstructions: object,
    out_path: str | Path,
    titles: Sequence[str] | None = None,
) -> Path:
    """Inputs (top row) over their reconstructions (bottom row), e.g. a digit and a chicken.

    Both are stacks of the same shape, ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]``
    with ``C`` in (1, 3), uint8 or float in [0, 1].

    References:
        "Passing a chicken through an MNIST model" (2018), the VAE reconstruction figure.
    """
    originals = np.asarray(originals)
    reconstructions = np.asarray(reconstructions)
    if originals.ndim not in (3, 4) or originals.shape[0] == 0:
        raise ValueError(f"originals must be a non-empty stack of images, got {originals.shape}")
    if originals.shape != reconstructions.shape:
        raise ValueError(
            f"originals {list(originals.shape)} and reconstructions "
            f"{list(reconstructions.shape)} must have the same shape"
        )
    count = originals.shape[0]
    if titles is not None and len(titles) != count:
        raise ValueError(f"{len(titles)} titles for {count} images")
    figure = Figure(figsize=(1.6 * count + 0.6, 3.4), layout="constrained")
    axes = figure.subplots(2, count, squeeze=False)
    for index in range(count):
        _show_image(axes[0, index], originals[index], titles[index] if titles else "")
        _show_image(axes[1, index], reconstructions[index])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction")
    return save_figure(figure, out_path)
