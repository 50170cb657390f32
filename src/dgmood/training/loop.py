"""One training loop for every model: density models and classifiers alike.

Determinism: parameters are seeded by ``train.seed``; the images of step ``s`` and their
dequantization noise are pure functions of ``(seed, s)``, so a resumed run sees exactly
the batches an uninterrupted one would, and (on the same machine) ends bit-identical.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from dgmood.config import RunConfig
from dgmood.data.datasets import ImageSet
from dgmood.data.dequantize import to_model_input
from dgmood.data.loading import DataSources
from dgmood.io import atomic_write_text, deferred_interrupts
from dgmood.models.base import Classifier, DensityModel, bits_per_dim
from dgmood.models.registry import build_model
from dgmood.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    STATE_FILE,
    append_metrics,
    check_run_dir,
    load_training_state,
    prepare_run_dir,
    read_metrics,
    read_model_metadata,
    save_model,
    save_training_state,
)

INIT_BATCH_SIZE = 512  # images used for data-dependent (actnorm) initialisation


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Indices of the images of optimiser step ``step``: epoch-wise seeded permutations."""
    batches_per_epoch = max(num_items // batch_size, 1)
    epoch, position = divmod(step, batches_per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator)
    start = position * batch_size
    return order[start : start + batch_size]


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 7_919 + step) * 31 + salt)


def _lr_lambda(warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

    return factor


def make_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    train = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=0.9, weight_decay=train.weight_decay)
    raise ValueError(f"unknown optimizer {train.optimizer!r}")


def mutate_pixels(images: Tensor, rate: float, generator: torch.Generator) -> Tensor:
    """A copy of uint8 ``images`` with each sub-pixel replaced by a uniform level w.p. ``rate``.

    References: Ren et al., "Likelihood Ratios for Out-of-Distribution Detection", NeurIPS 2019.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mutation_rate must lie in [0, 1], got {rate}")
    replace = torch.rand(images.shape, generator=generator) < rate
    levels = torch.randint(0, 256, images.shape, generator=generator, dtype=torch.uint8)
    return torch.where(replace, levels, images)


def _prepare_batch(
    model: nn.Module,
    images: Tensor,
    config: RunConfig,
    step: int,
    device: torch.device,
    mode: str = "uniform",
    salt: int = 0,
) -> Tensor:
    if config.train.mutation_rate > 0:
        images = mutate_pixels(
            images, config.train.mutation_rate, step_generator(config.train.seed, step, salt + 7)
        )
    if config.train.augment_flip:
        flip = torch.rand(images.shape[0], generator=step_generator(config.train.seed, step, 99))
        images = torch.where(flip.view(-1, 1, 1, 1) < 0.5, images.flip(-1), images)
    x = to_model_input(
        images,
        model.input_spec,
        mode,  # type: ignore[arg-type]
        generator=step_generator(config.train.seed, step, salt),
    )
    x = x.to(device)
    if config.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def compute_loss(model: nn.Module, x: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    if isinstance(model, Classifier):
        return model.training_loss(x, labels)
    return model.training_loss(x)  # type: ignore[operator]


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    images: ImageSet,
    config: RunConfig,
    device: torch.device,
    batch_size: int = 500,
) -> dict[str, float]:
    """Validation metrics: mean bits/dim (density) or loss and accuracy (classifier)."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for start in range(0, len(images), batch_size):
        chunk = images.images[start : start + batch_size]
        labels = images.labels[start : start + batch_size].to(device)
        x = _prepare_batch(model, chunk, config, start, device, salt=12_345)
        if isinstance(model, Classifier):
            logits = model(x)
            values = {
                "val_loss": nn.functional.cross_entropy(logits, labels, reduction="sum"),
                "val_accuracy": (logits.argmax(-1) == labels).float().sum(),
            }
        else:
            assert isinstance(model, DensityModel)
            log_prob = model.log_prob(x)
            values = {"val_bpd": bits_per_dim(log_prob, model.input_spec).sum()}
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + float(value)
        count += len(chunk)
    model.train(was_training)
    return {key: value / max(count, 1) for key, value in totals.items()}


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    sources: DataSources | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    train_set: ImageSet | None = None,
    val_set: ImageSet | None = None,
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (or continue it with ``resume=True``).

    ``train_set``/``val_set`` override loading by name (already in the model's format).
    Raises :class:`TrainingDivergedError` on a NaN/inf loss, keeping the last checkpoint.
    """
    run_dir = Path(run_dir)
    sources = sources or DataSources()
    check_run_dir(run_dir, resume)
    train_cfg, data_cfg = config.train, config.data
    if train_cfg.num_threads > 0:
        torch.set_num_threads(train_cfg.num_threads)
    dev = _device(device)
    if train_set is None:
        train_set = sources.load_like(data_cfg.dataset, data_cfg.train_split, data_cfg)
    train_set = train_set.head(data_cfg.train_limit)
    if val_set is None and train_cfg.eval_every >= 0:
        val_set = sources.load_like(data_cfg.dataset, data_cfg.val_split, data_cfg)
    if val_set is not None:
        val_set = val_set.head(data_cfg.val_size)
    if len(train_set) < train_cfg.batch_size:
        raise ValueError(
            f"{len(train_set)} training images is fewer than one batch of {train_cfg.batch_size}"
        )

    prepare_run_dir(run_dir, resume)  # only now: a bad dataset leaves nothing behind
    state: dict[str, Any] | None = None
    if resume and (run_dir / STATE_FILE).exists():
        stored = RunConfig.load(run_dir / CONFIG_FILE)
        if stored.model != config.model or stored.data != config.data:
            raise ValueError(
                f"cannot resume {run_dir}: its model/data config differs from the one given; "
                "resume with the stored config (dgmood train --resume RUN_DIR)"
            )
        state = load_training_state(run_dir / STATE_FILE)
    config.save(run_dir / CONFIG_FILE)

    torch.manual_seed(train_cfg.seed)
    model = build_model(config.model, data_cfg).to(dev)
    if train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    if state is None:
        # data-dependent init (actnorm) on a larger first batch, as Glow does
        init_idx = batch_indices(len(train_set), INIT_BATCH_SIZE, train_cfg.seed, 0)
        with torch.no_grad():
            x = _prepare_batch(model, train_set.images[init_idx], config, -1, dev)
            compute_loss(model, x, train_set.labels[init_idx].to(dev))
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(train_cfg.warmup_steps))
    start_step = 0
    if state is not None:
        model.load_state_dict(load_file(str(run_dir / MODEL_FILE)))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_step = int(state["step"])
        # forget log lines written after the checkpoint we resume from
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= start_step]
        atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))

    def checkpoint(step: int) -> None:
        with deferred_interrupts():  # weights and state must describe the same step
            _write_checkpoint(step)

    def _write_checkpoint(step: int) -> None:
        save_model(model, run_dir / MODEL_FILE, config, step)
        save_training_state(
            run_dir / STATE_FILE,
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
        )

    if state is None:
        checkpoint(0)  # so that a divergence always leaves a good checkpoint behind
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(
        total=train_cfg.steps,
        initial=start_step,
        disable=not progress,
        desc="train",
        dynamic_ncols=True,
    )
    running: dict[str, float] = {}
    running_count = 0
    last_good_step = start_step
    for step in range(start_step, train_cfg.steps):
        idx = batch_indices(len(train_set), train_cfg.batch_size, train_cfg.seed, step)
        x = _prepare_batch(model, train_set.images[idx], config, step, dev)
        labels = train_set.labels[idx].to(dev)
        loss, terms = compute_loss(model, x, labels)
        if not torch.isfinite(loss):
            bar.close()
            raise TrainingDivergedError(
                f"loss became {loss.item()} at step {step}; training stopped. The last good "
                f"checkpoint (step {last_good_step}) is kept in {run_dir}. Lower --set "
                "train.lr, raise train.warmup_steps or train.grad_clip, and resume or restart."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            if train_cfg.grad_clip > 0
            else torch.tensor(0.0)
        )
        optimizer.step()
        scheduler.step()
        done = step + 1
        running["loss"] = running.get("loss", 0.0) + loss.item()
        for key, value in terms.items():
            if key in ("accuracy", "kl", "reconstruction"):
                running[key] = running.get(key, 0.0) + float(value.detach().float().mean())
        running_count += 1
        bar.update(1)
        if done % train_cfg.log_every == 0 or done == train_cfg.steps:
            record = {k: v / running_count for k, v in running.items()}
            record.update(
                step=done,
                lr=scheduler.get_last_lr()[0],
                grad_norm=float(grad_norm),
                seconds=time.perf_counter() - started,
            )
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k in ("loss", "accuracy")})
            append_metrics(run_dir, record)
            history.append(record)
            running, running_count = {}, 0
        is_eval = train_cfg.eval_every > 0 and done % train_cfg.eval_every == 0
        if val_set is not None and (is_eval or done == train_cfg.steps):
            record = {"step": done, **evaluate_model(model, val_set, config, dev)}
            append_metrics(run_dir, record)
            history.append(record)
            if progress:
                bar.write(
                    " ".join(
                        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record.items()
                    )
                )
        if (train_cfg.checkpoint_every > 0 and done % train_cfg.checkpoint_every == 0) or (
            done == train_cfg.steps
        ):
            checkpoint(done)
            last_good_step = done
    bar.close()
    if start_step >= train_cfg.steps and not (run_dir / MODEL_FILE).exists():
        checkpoint(start_step)
    model.eval()
    return TrainResult(
        run_dir, model, max(start_step, train_cfg.steps), history, time.perf_counter() - started
    )


def train_or_reuse(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    sources: DataSources | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> bool:
    """Train ``config`` into ``run_dir`` unless a finished run of the same config is there.

    Returns True when it trained. An unfinished run is continued only with ``resume=True``;
    a finished run of a different config is an error (it is never overwritten).
    """
    run_dir = Path(run_dir)
    if (run_dir / MODEL_FILE).exists() and (run_dir / CONFIG_FILE).exists() and not resume:
        stored = RunConfig.load(run_dir / CONFIG_FILE)
        step = int(read_model_metadata(run_dir / MODEL_FILE).get("step", 0))
        if stored == config and step >= config.train.steps:
            return False
    train(config, run_dir, sources=sources, resume=resume, device=device, progress=progress)
    return True
