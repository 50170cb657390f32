"""Batched, no-grad scoring of images under a model -> per-sample statistics.

Density models give, per image, ``log_prob`` (nats, on the model's input scale), its
breakdown (``log_pz``/``log_abs_det_jacobian`` for flows, ``reconstruction``/``kl`` for
VAEs) and ``bits_per_dim``. Classifiers give ``logits`` and penultimate ``features``.
Statistics are computed once and cached in the run directory by :func:`score_cached`.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dgmood.data.datasets import ImageSet
from dgmood.data.dequantize import DequantMode, to_model_input
from dgmood.io import atomic_write_bytes
from dgmood.models.base import Classifier, DensityModel, bits_per_dim
from dgmood.runs import read_score_cache

SCORES_DIR = "scores"


@torch.no_grad()
def score_images(
    model: nn.Module,
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

    ``iwae_k > 0`` adds a VAE's importance-weighted bound with ``k`` samples.
    Dequantization noise for batch ``b`` comes from a generator seeded by ``(seed, b)``, so
    runs with the same seed and batch size repeat exactly.
    """
    spec = model.input_spec  # type: ignore[attr-defined]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {}
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, disable=not progress, desc=desc, leave=False):
        chunk = images[start : start + batch_size]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
        x = to_model_input(chunk, spec, dequantization, generator=generator).to(device)
        # stochastic scores (a VAE's sampled ELBO) are seeded per batch too
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed * 1_000_003 + start + 1)
            stats = _batch_statistics(model, x, spec, iwae_k)
        for key, value in stats.items():
            out.setdefault(key, []).append(value.detach().float().cpu().numpy())
    model.train(was_training)
    return {key: np.concatenate(values) for key, values in out.items()}


def _batch_statistics(model: nn.Module, x: Tensor, spec: Any, iwae_k: int) -> dict[str, Tensor]:
    if isinstance(model, Classifier):
        features = model.features(x)
        return {"logits": model.head(features), "features": features}
    if not isinstance(model, DensityModel):
        raise TypeError(f"cannot score with {type(model).__name__}")
    stats = dict(model.log_prob_terms(x))
    stats["bits_per_dim"] = bits_per_dim(stats["log_prob"], spec)
    if iwae_k > 0:
        if not hasattr(model, "iwae_log_prob"):
            raise ValueError(f"{type(model).__name__} has no importance-weighted bound (IWAE)")
        stats["iwae_log_prob"] = model.iwae_log_prob(x, iwae_k)
        stats["iwae_bits_per_dim"] = bits_per_dim(stats["iwae_log_prob"], spec)
    return stats


def images_fingerprint(images: Tensor) -> str:
    """Short content hash of a uint8 image tensor (cache key)."""
    digest = hashlib.sha1(images.contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def score_cached(
    model: nn.Module,
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
    """:func:`score_images`, cached as ``run_dir/scores/<set>-<hash>-<options>.npz``."""
    safe_name = imageset.label.replace("/", "_").replace(":", "_")
    options = f"step{step}-{dequantization}-s{seed}-iwae{iwae_k}"
    key = f"{safe_name}-{images_fingerprint(imageset.images)}-{options}"
    path = Path(run_dir) / SCORES_DIR / f"{key}.npz"
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
    np.savez(buffer, **stats)
    atomic_write_bytes(path, buffer.getvalue())
    return stats
