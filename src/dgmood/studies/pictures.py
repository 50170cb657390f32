"""The pictures every study's report shows beside its numbers, as :class:`Figure` entries.

For a density-model run:

- **most and least likely images** of each scored set (the ``k`` lowest and highest
  bits/dim, each captioned with its value): which images the model prefers, at a glance;
- **samples** from the model (families with :attr:`Capability.SAMPLING`), drawn at
  temperature 1 with a fixed seed: what the model has learnt;
- **the training curve**: training loss and validation bits/dim against the step, from the
  run's ``metrics.jsonl``.

A classifier run gets its training curve. Nothing here trains or scores: the images and
their statistics come from the study (cached by :mod:`dgmood.inference`).

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping

import numpy as np
import torch

from dgmood.data.dequantize import to_uint8
from dgmood.io import atomic_write_bytes
from dgmood.models.base import Capability
from dgmood.pretrained import writable_run_dir
from dgmood.reporting.pictures import ImageRow, plot_image_rows, plot_training_curve
from dgmood.reporting.result import Figure
from dgmood.runs import SCORES_DIR, LoadedRun, read_metrics, read_score_cache, run_subdir
from dgmood.scores.base import ScoreInput
from dgmood.scores.density import negative_log_likelihood
from dgmood.studies.base import StudyContext

EXTREMES = 8  # most and least likely images shown per set
SAMPLES = 16  # samples drawn from each model
SAMPLE_SEED = 0


def slug(text: str) -> str:
    """``text`` as a portable file name part (``pretrained:x`` -> ``pretrained_x``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")[:80] or "run"


def extreme_rows(inputs: Mapping[str, ScoreInput], k: int = EXTREMES) -> list[ImageRow]:
    """Per set: its ``k`` most likely (lowest bits/dim) and ``k`` least likely images.

    Ties are broken by index (a stable sort), so the rows are a pure function of the data.
    """
    rows = []
    for label, data in inputs.items():
        bpd = negative_log_likelihood(data.stats)
        order = np.argsort(bpd, kind="stable")
        images = data.images.numpy()
        for which, index in (("most likely", order[:k]), ("least likely", order[::-1][:k])):
            rows.append(
                ImageRow(
                    f"{label}\n{which}",
                    images[index],
                    [f"{bpd[i]:.2f}" for i in index],
                )
            )
    return rows


def extremes_figure(
    ctx: StudyContext, run: LoadedRun, inputs: Mapping[str, ScoreInput], tag: str = ""
) -> Figure:
    """The most and least likely images of each set in ``inputs`` under ``run``."""
    name = f"extremes_{slug(tag or run.run_dir.name)}"
    path = plot_image_rows(
        extreme_rows(inputs),
        ctx.out_dir / f"{name}.png",
        title=f"{run.name} ({run.config.data.dataset}): most and least likely images per set",
    )
    return Figure(
        name,
        f"Most and least likely images of each set under {run.name}",
        path.name,
        f"The {EXTREMES} lowest and highest bits/dim of each scored set (caption: bits/dim of "
        "the dequantized image; lower = more likely).",
    )


@torch.no_grad()
def draw_samples(run: LoadedRun, n: int = SAMPLES, seed: int = SAMPLE_SEED) -> torch.Tensor:
    """``n`` samples of ``run``'s density model as uint8 images (seeded; RNG state restored).

    Cached in the run's ``scores/`` folder, keyed by ``n``, ``seed`` and the run's step, so
    that studies sharing a run (and a rerun) draw once: PixelCNN++ samples one pixel at a
    time, a minute or more on a CPU.
    """
    model = run.density_model()
    if Capability.SAMPLING not in run.capabilities:
        raise ValueError(f"{run.spec.name} models cannot draw samples (no sampling capability)")
    # a shipped run is never written to: its cache is in the data directory
    folder = run_subdir(writable_run_dir(run.run_dir), SCORES_DIR)
    path = folder / f"samples-n{n}-seed{seed}-step{run.step}.npz"
    cached = read_score_cache(path)  # a damaged file is removed and drawn again
    if cached is not None and cached.get("images", np.zeros(0)).shape[:1] == (n,):
        return torch.from_numpy(cached["images"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples = model.sample(n)
    images = to_uint8(samples.float().cpu(), model.input_spec)
    buffer = io.BytesIO()
    np.savez(buffer, images=images.numpy())
    atomic_write_bytes(path, buffer.getvalue())
    return images


def samples_figure(
    ctx: StudyContext, run: LoadedRun, n: int = SAMPLES, tag: str = ""
) -> Figure | None:
    """Samples of ``run`` (None for a family that cannot sample, or ``n`` = 0)."""
    if n <= 0 or run.spec.kind != "density" or Capability.SAMPLING not in run.capabilities:
        return None
    name = f"samples_{slug(tag or run.run_dir.name)}"
    with ctx.timed("samples"):
        images = draw_samples(run, n).numpy()
    columns = min(n, 8)
    path = plot_image_rows(
        [ImageRow("samples", images)],
        ctx.out_dir / f"{name}.png",
        title=f"{run.name} trained on {run.config.data.dataset}: {n} samples",
        columns=columns,
    )
    return Figure(
        name,
        f"Samples from {run.name} trained on {run.config.data.dataset}",
        path.name,
        f"{n} samples at temperature 1 (seed {SAMPLE_SEED}), step {run.step}, mapped to 8-bit "
        "pixels as the model's input scale defines them.",
    )


def training_curve_figure(ctx: StudyContext, run: LoadedRun, tag: str = "") -> Figure | None:
    """The run's training loss and validation metrics (None without records)."""
    records = read_metrics(run.run_dir)
    if not any("loss" in r or any(k.startswith("val_") for k in r) for r in records):
        return None
    name = f"training_{slug(tag or run.run_dir.name)}"
    density = run.spec.kind == "density"
    path = plot_training_curve(
        records,
        ctx.out_dir / f"{name}.png",
        title=f"{run.name} trained on {run.config.data.dataset} ({run.step} steps)",
        loss_label="training loss (bits/dim)" if density else "training loss (cross-entropy)",
    )
    caption = (
        "Left: the training objective per logged step (bits/dim; a VAE's is its negative "
        "ELBO, with KL warm-up where configured). Right: validation "
        + ("bits/dim" if density else "loss and accuracy")
        + f" on {run.config.data.val_split} ({run.config.data.val_size or 'all'} images)."
    )
    return Figure(name, f"Training curve of {run.name}", path.name, caption)


def run_pictures(
    ctx: StudyContext,
    run: LoadedRun,
    inputs: Mapping[str, ScoreInput] | None = None,
    *,
    tag: str = "",
    samples: int = SAMPLES,
) -> list[Figure]:
    """Every picture of ``run`` that applies: extremes of ``inputs``, samples, training curve."""
    figures: list[Figure] = []
    if inputs and run.spec.kind == "density":
        figures.append(extremes_figure(ctx, run, inputs, tag))
    sample_figure = samples_figure(ctx, run, samples, tag)
    if sample_figure is not None:
        figures.append(sample_figure)
    curve = training_curve_figure(ctx, run, tag)
    if curve is not None:
        figures.append(curve)
    return figures
