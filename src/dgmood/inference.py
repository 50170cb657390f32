"""Batched, no-grad scoring of images under a model -> per-sample statistics.

Density models give, per image, ``log_prob`` (nats, on the model's input scale), its
breakdown (``log_pz``/``log_abs_det_jacobian`` for flows, ``reconstruction``/``kl`` for
VAEs) and ``bits_per_dim``. Classifiers give ``logits`` and penultimate ``features``.
Statistics are computed once and cached in the run directory by :func:`score_cached`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dgmood.data.dequantize import DequantMode, to_model_input
from dgmood.data.imageset import ImageSet
from dgmood.io import atomic_write_bytes
from dgmood.models.base import (
    Capability,
    Classifier,
    DensityModel,
    ImportanceWeighted,
    Reconstructs,
    bits_per_dim,
)
from dgmood.models.registry import model_capabilities, spec_of_model
from dgmood.pretrained import writable_run_dir
from dgmood.runs import SCORES_DIR, read_score_cache

STOCHASTIC_BLOCK = 64  # images per RNG block for models whose score samples (VAEs)


def _image_noise(count: int, start: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """Dequantization offsets for images ``start .. start+count-1``, each seeded by its index.

    Image ``i`` always gets the same noise for a given seed, whatever the batch size.
    """
    out = torch.empty((count, *shape))
    for row in range(count):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start + row)
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

    ``iwae_k > 0`` adds a VAE's importance-weighted bound with ``k`` samples. Results do not
    depend on ``batch_size``: the dequantization noise of image ``i`` is seeded by
    ``(seed, i)``, and models whose score samples (a VAE's ELBO) are run in fixed blocks of
    :data:`STOCHASTIC_BLOCK` images, each with its RNG seeded by ``(seed, block)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = model.input_spec
    device = next(model.parameters()).device
    stochastic = Capability.STOCHASTIC_LOG_PROB in model_capabilities(model)
    if stochastic:  # whole blocks per batch, so that block boundaries never move
        batch_size = max(STOCHASTIC_BLOCK, batch_size // STOCHASTIC_BLOCK * STOCHASTIC_BLOCK)
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {}
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, disable=not progress, desc=desc, leave=False):
        chunk = images[start : start + batch_size]
        if dequantization == "uniform" and not spec.discrete:
            noise = _image_noise(len(chunk), start, tuple(chunk.shape[1:]), seed)
            bin_width = (spec.high - spec.low) / spec.n_levels
            x = to_model_input(chunk, spec, "none") + noise * bin_width
        else:
            x = to_model_input(chunk, spec, dequantization)
        x = x.to(device)
        if stochastic:
            pieces = []
            for offset in range(0, len(x), STOCHASTIC_BLOCK):
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    block = (start + offset) // STOCHASTIC_BLOCK
                    torch.manual_seed(seed * 1_000_003 + block + 1)
                    pieces.append(
                        _batch_statistics(model, x[offset : offset + STOCHASTIC_BLOCK], iwae_k)
                    )
            stats = {key: torch.cat([p[key] for p in pieces]) for key in pieces[0]}
        else:
            stats = _batch_statistics(model, x, iwae_k)
        for key, value in stats.items():
            out.setdefault(key, []).append(value.detach().float().cpu().numpy())
    model.train(was_training)
    return {key: np.concatenate(values) for key, values in out.items()}


def _batch_statistics(model: nn.Module, x: Tensor, iwae_k: int) -> dict[str, Tensor]:
    family = spec_of_model(model)
    if family.kind == "classifier":
        classifier = cast(Classifier, model)
        features = classifier.features(x)
        return {"logits": classifier.head(features), "features": features}
    density = cast(DensityModel, model)
    spec = density.input_spec
    stats = dict(density.log_prob_terms(x))
    stats["bits_per_dim"] = bits_per_dim(stats["log_prob"], spec)
    if iwae_k > 0:
        if Capability.IWAE not in model_capabilities(model):
            raise ValueError(f"{family.name} has no importance-weighted bound (IWAE)")
        stats["iwae_log_prob"] = cast(ImportanceWeighted, model).iwae_log_prob(x, iwae_k)
        stats["iwae_bits_per_dim"] = bits_per_dim(stats["iwae_log_prob"], spec)
    return stats


def images_fingerprint(images: Tensor) -> str:
    """Short content hash of a uint8 image tensor (cache key)."""
    digest = hashlib.sha1(images.contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


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
    pretrained run, in its folder in the data directory: :func:`writable_run_dir`)."""
    safe_name = imageset.label.replace("/", "_").replace(":", "_")
    options = f"step{step}-{dequantization}-s{seed}-iwae{iwae_k}"
    key = f"{safe_name}-{images_fingerprint(imageset.images)}-{options}"
    path = writable_run_dir(run_dir) / SCORES_DIR / f"{key}.npz"  # pretrained: the data dir
    cached = read_score_cache(path)  # a damaged cache file is removed and recomputed
    if cached is not None:
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
    atomic_write_bytes(path, buffer.getvalue())
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
