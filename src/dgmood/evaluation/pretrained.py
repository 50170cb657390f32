"""The numbers a pretrained run's manifest records, measured (again) on the stated data.

``scripts/make_pretrained.py`` measures them once when a run is added to
:mod:`dgmood.pretrained`; the test suite measures the small ``check`` set again and
compares.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from dgmood.data.dequantize import DequantMode
from dgmood.data.loading import DataSources
from dgmood.inference import score_images
from dgmood.pretrained import Measurement
from dgmood.runs import LoadedRun


def measure(
    run: LoadedRun,
    dataset: str,
    split: str,
    limit: int,
    sources: DataSources,
    *,
    dequantization: DequantMode = "uniform",
    seed: int = 0,
    batch_size: int = 256,
) -> Measurement:
    """Mean bits/dim (density models) or top-1 accuracy (classifiers, on centred pixels) of
    ``run`` on the first ``limit`` images of ``dataset``/``split`` in the run's data format."""
    imageset = sources.load_like(dataset, split, run.config.data).head(limit)
    metric: Literal["bits_per_dim", "accuracy"]
    if run.spec.kind == "classifier":
        dequantization = "center"
        stats = score_images(
            run.classifier(), imageset.images, batch_size=batch_size, dequantization="center"
        )
        predicted = np.asarray(stats["logits"]).argmax(axis=1)
        value = float((predicted == imageset.labels.numpy()).mean())
        metric = "accuracy"
    else:
        stats = score_images(
            run.density_model(),
            imageset.images,
            batch_size=batch_size,
            dequantization=dequantization,
            seed=seed,
        )
        value = float(np.asarray(stats["bits_per_dim"], dtype=np.float64).mean())
        metric = "bits_per_dim"
    return Measurement(
        dataset=dataset,
        split=split,
        limit=limit,
        n=len(imageset),
        metric=metric,
        value=value,
        label=imageset.label,
        dequantization=dequantization,
        seed=seed,
    )


def remeasure(run: LoadedRun, recorded: Measurement, sources: DataSources) -> Measurement:
    """``recorded``'s measurement taken again on ``run`` with the same data and options."""
    return measure(
        run,
        recorded.dataset,
        recorded.split,
        recorded.limit,
        sources,
        dequantization=recorded.dequantization,
        seed=recorded.seed,
    )
