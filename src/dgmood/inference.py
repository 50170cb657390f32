"""Batched, no-grad scoring of images under a model -> per-sample statistics.

Density models give, per image, ``log_prob`` (nats, on the model's input scale), its
breakdown (``log_pz``/``log_abs_det_jacobian`` for flows, ``reconstruction``/``kl`` for
VAEs) and ``bits_per_dim``. Classifiers give ``logits`` and penultimate ``features``.
Statistics are computed once and cached in the run directory by :func:`score_cached`.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from dgmood.data.dequantize import DequantMode, to_model_input
from dgmood.data.imageset import ImageSet
from dgmood.io import Progress, atomic_write_bytes
from dgmood.models.base import (
    Capability,
    Classifier,
    DensityModel,
    ImportanceWeighted,
    InputSpec,
    Reconstructs,
    SeededLogProb,
    bits_per_dim,
)
from dgmood.models.registry import model_capabilities, spec_of_model
from dgmood.pretrained import writable_run_dir
from dgmood.runs import SCORES_DIR, read_score_cache, run_subdir

# part of every score cache key: bump it when the statistics of the same images change
# (2: random draws seeded by image content, no longer by position)
SCORING_VERSION = 2


def image_seeds(images: Tensor, seed: int, stream: str) -> list[int]:
    """One seed per uint8 image: a hash of ``seed``, the ``stream`` and the image's bytes.

    An image gets the same random draws wherever it appears (in a dataset, alone, in any
    order or batch): its score is a function of the model, the seed and the image only.
    ``stream`` keeps different draws (dequantization noise, a VAE's latents) independent.
    """
    salt = f"{seed}:{stream}:".encode()
    pixels = images.contiguous().numpy()
    return [
        int.from_bytes(hashlib.blake2b(salt + row.tobytes(), digest_size=8).digest(), "little")
        for row in pixels
    ]


def _image_generators(images: Tensor, seed: int, stream: str) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in image_seeds(images, seed, stream)]


def _image_noise(images: Tensor, seed: int) -> Tensor:
    """Dequantization offsets in [0, 1), each image's drawn from its own seed."""
    shape = tuple(images.shape[1:])
    out = torch.empty((len(images), *shape))
    for row, generator in enumerate(_image_generators(images, seed, "dequantization")):
        out[row] = torch.rand(shape, generator=generator)
    return out


@torch.no_grad()
def score_images(
    model: DensityModel | Classifier,
    images: Tensor,
    *,
    batch_size: int = 256,
    dequantization: DequantMode = "uniform",
    seed: int = 0,
    progress: bool = False,
    desc: str = "score",
    iwae_k: int = 0,
) -> dict[str, np.ndarray]:
    """Per-sample statistics of uint8 ``images`` ``[N, C, H, W]`` under ``model``.

    ``iwae_k > 0`` adds a VAE's importance-weighted bound with ``k`` samples. An image's
    statistics depend on the model, ``seed`` and the image only, not on ``batch_size`` nor on
    the other images or its position among them: its dequantization noise and, for models
    whose score samples (a VAE's ELBO), its latent draws come from generators seeded by the
    seed and the image's bytes (:func:`image_seeds`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_iwae(model, iwae_k)
    device = next(model.parameters()).device
    stochastic = Capability.STOCHASTIC_LOG_PROB in model_capabilities(model)
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {}
    with Progress(images.shape[0], desc, unit="images", enabled=progress) as bar:
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size]
            x = _model_input(model, chunk, dequantization, seed).to(device)
            if stochastic:
                _check_iwae(model, iwae_k)
                seeded = cast(SeededLogProb, model)
                generators = _image_generators(chunk, seed, "model")
                terms = seeded.seeded_log_prob_terms(x, generators, iwae_k)
                stats = _with_bits_per_dim(terms, model.input_spec)
            else:
                stats = _batch_statistics(model, x, iwae_k)
            for key, value in stats.items():
                out.setdefault(key, []).append(value.detach().float().cpu().numpy())
            bar.update(len(chunk))
    model.train(was_training)
    return {key: np.concatenate(values) for key, values in out.items()}


def _model_input(
    model: DensityModel | Classifier,
    chunk: Tensor,
    dequantization: DequantMode,
    seed: int,
) -> Tensor:
    """uint8 images on the model's input scale; each image's noise seeded by its content."""
    spec = model.input_spec
    if dequantization == "uniform" and not spec.discrete:
        noise = _image_noise(chunk, seed)
        bin_width = (spec.high - spec.low) / spec.n_levels
        return to_model_input(chunk, spec, "none") + noise * bin_width
    return to_model_input(chunk, spec, dequantization)


def check_iwae(model: nn.Module, iwae_k: int) -> None:
    """Refuse ``iwae_k`` for a model without an importance-weighted bound (all but VAEs)."""
    if iwae_k < 0:
        raise ValueError(f"--iwae-k must be >= 0, got {iwae_k}")
    if iwae_k > 0 and Capability.IWAE not in model_capabilities(model):
        raise ValueError(
            f"--iwae-k needs an importance-weighted bound, which only VAEs have; "
            f"{spec_of_model(model).name} has none (use --iwae-k 0)"
        )


def _batch_statistics(model: nn.Module, x: Tensor, iwae_k: int) -> dict[str, Tensor]:
    family = spec_of_model(model)
    if family.kind == "classifier":
        classifier = cast(Classifier, model)
        features = classifier.features(x)
        return {"logits": classifier.head(features), "features": features}
    density = cast(DensityModel, model)
    stats = dict(density.log_prob_terms(x))
    if iwae_k > 0:
        _check_iwae(model, iwae_k)
        stats["iwae_log_prob"] = cast(ImportanceWeighted, model).iwae_log_prob(x, iwae_k)
    return _with_bits_per_dim(stats, density.input_spec)


def _check_iwae(model: nn.Module, iwae_k: int) -> None:
    if iwae_k > 0 and Capability.IWAE not in model_capabilities(model):
        name = spec_of_model(model).name
        raise ValueError(f"{name} has no importance-weighted bound (IWAE)")


def _with_bits_per_dim(terms: dict[str, Tensor], spec: InputSpec) -> dict[str, Tensor]:
    stats = dict(terms)
    stats["bits_per_dim"] = bits_per_dim(stats["log_prob"], spec)
    if "iwae_log_prob" in stats:
        stats["iwae_bits_per_dim"] = bits_per_dim(stats["iwae_log_prob"], spec)
    return stats


def images_fingerprint(images: Tensor) -> str:
    """Short content hash of a uint8 image tensor (cache key)."""
    digest = hashlib.sha1(images.contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


class CacheNotSavedWarning(UserWarning):
    """Scores were computed but their cache file could not be written (e.g. a full disk)."""


def score_cached(
    model: DensityModel | Classifier,
    imageset: ImageSet,
    run_dir: Path,
    *,
    step: int,
    batch_size: int = 256,
    dequantization: DequantMode = "uniform",
    seed: int = 0,
    progress: bool = True,
    iwae_k: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`score_images`, cached as ``run_dir/scores/<set>-<hash>-<options>.npz`` (for a
    pretrained run, in its folder in the data directory: :func:`writable_run_dir`).

    A cache whose statistics do not have one row per image (stale, or written by something
    else) is recomputed, as an unreadable one is. If the cache cannot be written (a full
    disk), the statistics are returned all the same, with a :class:`CacheNotSavedWarning`.
    """
    safe_name = imageset.label.replace("/", "_").replace(":", "_")
    options = f"step{step}-{dequantization}-s{seed}-iwae{iwae_k}-v{SCORING_VERSION}"
    key = f"{safe_name}-{images_fingerprint(imageset.images)}-{options}"
    # never through a link; a pretrained run's cache is in the data dir
    path = run_subdir(writable_run_dir(run_dir), SCORES_DIR) / f"{key}.npz"
    cached = read_score_cache(path)  # a damaged cache file is removed and recomputed
    if cached is not None and all(len(v) == len(imageset) for v in cached.values()):
        return cached
    stats = score_images(
        model,
        imageset.images,
        batch_size=batch_size,
        dequantization=dequantization,
        seed=seed,
        progress=progress,
        desc=f"score {imageset.label}",
        iwae_k=iwae_k,
    )
    buffer = io.BytesIO()
    save: Any = np.savez  # numpy's stub types **arrays as its bool keyword
    save(buffer, **stats)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as error:  # nothing half-written: atomic_path removed its temporary file
        warnings.warn(
            f"the score cache {path} was not saved ({error.strerror or error}); these scores "
            "are complete, and will be computed again next time",
            CacheNotSavedWarning,
            stacklevel=2,
        )
    return stats


@dataclass(frozen=True)
class PhotoPrediction:
    """A classifier's answer for one image."""

    name: str
    predicted_class: int
    confidence: float  # max softmax probability
    probabilities: list[float]


@torch.no_grad()
def classify_images(
    model: Classifier, images: Tensor, names: list[str] | None = None
) -> list[PhotoPrediction]:
    """Class probabilities of uint8 ``images`` ``[N, C, H, W]`` (``dgmood predict``, the post)."""
    device = next(model.parameters()).device
    x = to_model_input(images, model.input_spec, "center").to(device)
    probabilities = torch.softmax(model(x), dim=1).cpu()
    names = names or [str(i) for i in range(len(images))]
    return [
        PhotoPrediction(name, int(p.argmax()), float(p.max()), [float(v) for v in p])
        for name, p in zip(names, probabilities, strict=True)
    ]


@torch.no_grad()
def reconstruct_images(model: DensityModel, images: Tensor) -> Tensor:
    """A VAE's reconstructions of uint8 ``images``, as floats in [0, 1] for display."""
    if Capability.RECONSTRUCTION not in model_capabilities(model):
        raise ValueError(f"{spec_of_model(model).name} cannot reconstruct images")
    device = next(model.parameters()).device
    x = to_model_input(images, model.input_spec, "center").to(device)
    result: Tensor = cast(Reconstructs, model).reconstruct(x)
    return result.clamp(0, 1).cpu()
