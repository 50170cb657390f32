"""One training loop for every model: density models and classifiers alike.

Determinism: parameters are seeded by ``train.seed``; the images of step ``s`` and their
dequantization noise are pure functions of ``(seed, s)``, so a resumed run sees exactly
the batches an uninterrupted one would, and (on the same machine) ends bit-identical.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dgmood.config import UNTIL_BUDGET, RunConfig
from dgmood.data.datasets import ImageSet
from dgmood.data.dequantize import to_model_input
from dgmood.data.loading import DataSources
from dgmood.io import atomic_write_text, deferred_interrupts, is_terminal
from dgmood.models.base import Capability, Classifier, DensityModel, MemoryLight, bits_per_dim
from dgmood.models.registry import (
    build_model,
    model_capabilities,
    models_with,
    require,
    spec_of_model,
)
from dgmood.nn.precision import autocast_context
from dgmood.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LEGACY_STATE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    Checkpoint,
    append_metrics,
    check_checkpoint_fits,
    check_run_dir,
    load_checkpoint,
    model_state_dict,
    open_run_dir,
    read_metrics,
    save_checkpoint,
    save_model,
)
from dgmood.training.budget import budget_exceeded

if TYPE_CHECKING:
    from dgmood.training.distributed import DataParallel

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
    augment: bool = True,
) -> Tensor:
    """Model input of uint8 ``images``; ``augment=False`` (validation) skips the training-only
    changes (a background run's pixel mutation, random flips): the images as they are."""
    if augment and config.train.mutation_rate > 0:
        images = mutate_pixels(
            images, config.train.mutation_rate, step_generator(config.train.seed, step, salt + 7)
        )
    if augment and config.train.augment_flip:
        flip = torch.rand(images.shape[0], generator=step_generator(config.train.seed, step, 99))
        images = torch.where(flip.view(-1, 1, 1, 1) < 0.5, images.flip(-1), images)
    x = to_model_input(
        images,
        model.input_spec,  # type: ignore[arg-type]
        mode,  # type: ignore[arg-type]
        generator=step_generator(config.train.seed, step, salt),
    )
    x = x.to(device)
    if config.execution.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def compute_loss(model: nn.Module, x: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss of a batch: a classifier's needs the labels, a density model's not."""
    if spec_of_model(model).kind == "classifier":
        return cast(Classifier, model).training_loss(x, labels)
    return cast(DensityModel, model).training_loss(x)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    images: ImageSet,
    config: RunConfig,
    device: torch.device,
    batch_size: int = 500,
) -> dict[str, float]:
    """Validation metrics: mean bits/dim (density) or loss and accuracy (classifier).

    Always on the validation images as they are: a likelihood-ratio background run, trained
    on mutated images, reports bits/dim comparable with its main run's.
    """
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for start in range(0, len(images), batch_size):
        chunk = images.images[start : start + batch_size]
        labels = images.labels[start : start + batch_size].to(device)
        x = _prepare_batch(model, chunk, config, start, device, salt=12_345, augment=False)
        if spec_of_model(model).kind == "classifier":
            logits = model(x)
            values = {
                "val_loss": nn.functional.cross_entropy(logits, labels, reduction="sum"),
                "val_accuracy": (logits.argmax(-1) == labels).float().sum(),
            }
        else:
            density = cast(DensityModel, model)
            log_prob = density.log_prob(x)
            values = {"val_bpd": bits_per_dim(log_prob, density.input_spec).sum()}
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + float(value)
        count += len(chunk)
    model.train(was_training)
    return {key: value / max(count, 1) for key, value in totals.items()}


def rng_state(cuda_devices: Sequence[torch.device]) -> dict[str, Tensor | list[Tensor]]:
    """The global random states training draws from: the CPU's and each CUDA device's.

    Batches and dequantization noise come from their own seeded generators; these states
    feed what draws from the global ones (dropout, a loss that samples), on the CPU or on
    the GPU the model runs on. Tensors only, so a checkpoint stores them without pickle.
    """
    state: dict[str, Tensor | list[Tensor]] = {"torch_rng": torch.get_rng_state()}
    if cuda_devices:
        state["cuda_rng"] = [torch.cuda.get_rng_state(device) for device in cuda_devices]
    return state


def restore_rng_state(state: dict[str, Any], cuda_devices: Sequence[torch.device]) -> None:
    """Set the states that :func:`rng_state` collected.

    CUDA states go to ``cuda_devices`` in order, as many as both have: a checkpoint written
    on a CPU (or before CUDA states were saved) leaves the CUDA generators as seeded, and a
    GPU run resumed on a CPU has no device to put them in. In a data-parallel job every rank
    restores rank 0's states into its own device: all ranks are seeded alike and draw alike
    (equal shards), so their states are equal.
    """
    torch.set_rng_state(state["torch_rng"])
    for device, cuda_state in zip(cuda_devices, state.get("cuda_rng", []), strict=False):
        torch.cuda.set_rng_state(cuda_state, device)


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _build_model(config: RunConfig, device: torch.device) -> nn.Module:
    """The model of ``config``, seeded; a config it cannot be built from is a ValueError."""
    torch.manual_seed(config.train.seed)
    try:
        model = build_model(config.model, config.data)
    except (ValueError, TypeError, RuntimeError, AssertionError, ZeroDivisionError) as error:
        family = type(config.model).family
        raise ValueError(f"cannot build a {family} model from this config: {error}") from None
    if config.execution.memory_light:
        require(config.model, "density", Capability.MEMORY_LIGHT, what="execution.memory_light")
        cast(MemoryLight, model).set_memory_light(True)
    model = model.to(device)
    if config.execution.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    return model


def _load_data(
    config: RunConfig,
    sources: DataSources,
    train_set: ImageSet | None,
    val_set: ImageSet | None,
) -> tuple[ImageSet, ImageSet | None]:
    """The training and validation images (loaded by name unless given)."""
    data_cfg, train_cfg = config.data, config.train
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
    return train_set, val_set


def _load_data_rank_0_first(
    config: RunConfig,
    sources: DataSources,
    train_set: ImageSet | None,
    val_set: ImageSet | None,
    parallel: DataParallel | None,
) -> tuple[ImageSet, ImageSet | None]:
    """:func:`_load_data`, in a data-parallel job by rank 0 before the other ranks.

    Rank 0 prepares the files (downloads, copies from the mirror, verifies, extracts) while
    the others wait; they then read files that are complete, so no two processes write one
    data file at once. If rank 0 cannot load the data, every rank stops with its error
    rather than waiting for a rank that is gone.
    """
    if parallel is None:
        return _load_data(config, sources, train_set, val_set)
    if parallel.is_writer:
        try:
            loaded = _load_data(config, sources, train_set, val_set)
        except Exception as error:
            parallel.broadcast(f"{type(error).__name__}: {error}")
            raise
        parallel.broadcast(None)
        return loaded
    failure = parallel.broadcast(None)
    if failure is not None:
        raise RuntimeError(
            f"rank 0 could not load the data, so rank {parallel.rank} stops too: {failure}"
        )
    return _load_data(config, sources, train_set, val_set)


def _resume_point(config: RunConfig, run_dir: Path) -> Checkpoint | None:
    """The checkpoint to continue from, after checking it belongs to the same model and data.

    None if the run was stopped before it trained anything (no checkpoint, model or older
    state file): starting it again from step 0 then loses and repeats nothing.
    """
    stored = RunConfig.load(run_dir / CONFIG_FILE)
    if stored.model != config.model or stored.data != config.data:
        command = shlex.join(["dgmood", "train", "--resume", "--run-dir", str(run_dir)])
        raise ValueError(
            f"cannot resume {run_dir}: its model/data config differs from the one given; "
            f"resume with its stored config: {command} "
            "(--set train.* may still change the training settings)"
        )
    if not any(
        (run_dir / name).exists() for name in (CHECKPOINT_FILE, MODEL_FILE, LEGACY_STATE_FILE)
    ):
        return None
    return load_checkpoint(run_dir)


def _term_means(terms: dict[str, Tensor]) -> dict[str, float]:
    """Batch mean of every per-sample term a model's ``training_loss`` reports."""
    return {key: float(value.detach().float().mean()) for key, value in terms.items()}


@dataclass
class _Session:
    """A model, its optimiser and data, and the run directory they are trained into."""

    config: RunConfig
    run_dir: Path
    model: nn.Module
    train_set: ImageSet
    val_set: ImageSet | None
    device: torch.device
    parallel: DataParallel | None = None  # this rank of a data-parallel job (distributed.py)
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LambdaLR = field(init=False)
    loss_module: nn.Module | None = field(init=False, default=None)
    # compute_loss(model, x, labels), compiled with execution.compile
    loss_fn: Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]] = field(
        init=False, default_factory=lambda: compute_loss
    )
    # sums of the logged values over the steps since the last log record, and how many: a
    # checkpoint keeps them, so a resumed run logs the same averages as an uninterrupted one
    log_sums: dict[str, float] = field(init=False, default_factory=dict)
    log_count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        precision = self.config.execution.precision
        if precision != "fp32" and Capability.BF16_SAFE not in model_capabilities(self.model):
            raise ValueError(
                f"execution.precision={precision} is only supported for families checked "
                f"against fp32 ({', '.join(models_with('density', Capability.BF16_SAFE))}; "
                "docs/RESULTS.md, Speed); use execution.precision=fp32"
            )
        self.optimizer = make_optimizer(self.model, self.config)
        warmup = _lr_lambda(self.config.train.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup)
        if self.parallel is not None:
            self.loss_module = self.parallel.wrap(self.model)  # DDP: averages gradients
        if self.config.execution.compile:  # compiled at the first step, after actnorm's init
            if self.loss_module is not None:
                self.loss_module = cast(nn.Module, torch.compile(self.loss_module, dynamic=False))
            self.loss_fn = torch.compile(compute_loss, dynamic=False)

    @property
    def writer(self) -> bool:
        """Whether this process writes the run directory (rank 0, or the only process)."""
        return self.parallel is None or self.parallel.is_writer

    @property
    def cuda_devices(self) -> list[torch.device]:
        """The CUDA devices this process draws random numbers on (none on a CPU)."""
        return [self.device] if self.device.type == "cuda" else []

    def global_mean(self, value: Tensor) -> Tensor:
        """``value`` averaged over data-parallel ranks (itself in a single process)."""
        return self.parallel.mean(value) if self.parallel is not None else value.detach()

    # -- build / resume
    @torch.no_grad()
    def initialise(self) -> None:
        """Data-dependent initialisation (actnorm) on a larger first batch, as Glow does."""
        seed = self.config.train.seed
        idx = batch_indices(len(self.train_set), INIT_BATCH_SIZE, seed, 0)
        x = _prepare_batch(self.model, self.train_set.images[idx], self.config, -1, self.device)
        labels = self.train_set.labels[idx].to(self.device)
        if self.parallel is not None:  # actnorm all-reduces its statistics over the shards
            x, labels = self.parallel.shard(x), self.parallel.shard(labels)
        compute_loss(self.model, x, labels)

    def restore(self, checkpoint: Checkpoint) -> None:
        self.model.load_state_dict(checkpoint.model_state)
        state = checkpoint.training_state
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state, self.cuda_devices)
        # absent from checkpoints of older dgmood: the first record then averages fewer steps
        self.log_sums = {k: float(v) for k, v in state.get("log_sums", {}).items()}
        self.log_count = int(state.get("log_count", 0))
        # forget log lines written after the checkpoint we resume from
        if not self.writer:
            return
        kept = [r for r in read_metrics(self.run_dir) if r.get("step", 0) <= checkpoint.step]
        atomic_write_text(self.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
        # a kill between the checkpoint and the model export left an older model file
        save_model(checkpoint.model_state, self.run_dir / MODEL_FILE, self.config, checkpoint.step)

    # -- the step
    def loss(self, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of step ``step``'s batch (a pure function of seed and step) and its terms."""
        train_cfg = self.config.train
        idx = batch_indices(len(self.train_set), train_cfg.batch_size, train_cfg.seed, step)
        x = _prepare_batch(self.model, self.train_set.images[idx], self.config, step, self.device)
        labels = self.train_set.labels[idx].to(self.device)
        with autocast_context(self.config.execution.precision, self.device):
            if self.parallel is not None and self.loss_module is not None:
                # every rank prepared the whole global batch; each keeps its slice
                x, labels = self.parallel.shard(x), self.parallel.shard(labels)
                loss, terms = self.loss_module(x, labels)
                return loss, terms
            return self.loss_fn(self.model, x, labels)

    def update(self, loss: Tensor) -> float:
        """One optimiser step on ``loss``; returns the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated
        grad_clip = self.config.train.grad_clip
        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip))
            if grad_clip > 0
            else 0.0
        )
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm

    # -- validation
    def validate(self, step: int) -> dict[str, Any]:
        """Validation metrics (rank 0 computes them, every rank gets them)."""
        assert self.val_set is not None
        metrics = (
            evaluate_model(self.model, self.val_set, self.config, self.device)
            if self.writer
            else {}
        )
        if self.parallel is not None:
            metrics = self.parallel.broadcast(metrics)
        return {"step": step, **metrics}

    # -- checkpoint
    def probe_loss(self, step: int) -> float:
        """Loss of step ``step``'s batch under the current weights, changing nothing.

        No gradient; the RNG and buffers (batch-norm statistics) are restored afterwards,
        so a run that probes ends bit-identical to one that does not.
        """
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        with torch.no_grad(), torch.random.fork_rng(devices=self.cuda_devices):
            loss, _ = self.loss(step)
        for name, buffer in self.model.named_buffers():
            buffer.copy_(buffers[name])
        return float(self.global_mean(loss))

    def weights_are_finite(self) -> bool:
        return all(
            bool(torch.isfinite(v).all())
            for v in self.model.state_dict().values()
            if v.is_floating_point()
        )

    def checkpoint(self, step: int, budget_reached: bool = False) -> None:
        """Write a resumable checkpoint of ``step`` once its weights are known to be good
        (``budget_reached``: the time budget ends training here)."""
        if not self.weights_are_finite() or not math.isfinite(self.probe_loss(step)):
            raise _Diverged(step)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **rng_state(self.cuda_devices),
            "log_sums": dict(self.log_sums),
            "log_count": self.log_count,
        }
        if self.writer:
            with deferred_interrupts():
                weights = model_state_dict(self.model)
                checkpoint = Checkpoint(step, weights, state, budget_reached)
                save_checkpoint(self.run_dir, self.config, checkpoint)
        if self.parallel is not None:  # no rank reads the run dir before it is written
            self.parallel.barrier()


class _Diverged(Exception):
    """Raised inside the loop at the step whose loss (or weights, if ``loss`` is None) is not
    finite."""

    def __init__(self, step: int, loss: float | None = None) -> None:
        super().__init__(step, loss)
        self.step, self.loss = step, loss


def _diverged_error(error: _Diverged, last_good_step: int, run_dir: Path) -> TrainingDivergedError:
    what = "weights or loss not finite" if error.loss is None else f"loss {error.loss}"
    return TrainingDivergedError(
        f"training diverged at step {error.step} ({what}) and stopped. The last good "
        f"checkpoint (step {last_good_step}) is kept in {run_dir}: its weights and loss were "
        "checked finite. Lower train.lr or train.grad_clip, or raise train.warmup_steps "
        "(e.g. --set train.lr=1e-4), then resume or restart."
    )


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
    parallel: DataParallel | None = None,
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (or continue it with ``resume=True``).

    ``train_set``/``val_set`` override loading by name (already in the model's format).
    Everything that can be rejected (the run dir, the data, the model config) is checked
    before the run dir is created. Raises :class:`TrainingDivergedError` on a NaN/inf loss
    or weights, keeping the last checkpoint whose weights and loss were checked finite.
    ``parallel``: this process's rank in a data-parallel job
    (:mod:`dgmood.training.distributed`); only rank 0 writes ``run_dir``.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    if resume and RunConfig.load(run_dir / CONFIG_FILE).model == config.model:
        check_checkpoint_fits(run_dir, config)  # before a size it claims is built
    if config.execution.num_threads > 0:
        torch.set_num_threads(config.execution.num_threads)
    dev = _device(device or config.execution.device or None)
    train_set, val_set = _load_data_rank_0_first(
        config, sources or DataSources(), train_set, val_set, parallel
    )
    model = _build_model(config, dev)
    writer = parallel is None or parallel.is_writer
    if parallel is not None:  # every rank has checked run_dir before rank 0 creates it
        parallel.barrier()
    with open_run_dir(run_dir, resume) if writer else contextlib.nullcontext():
        if parallel is not None:
            parallel.barrier()
        resume_from = _resume_point(config, run_dir) if resume else None
        if writer:
            config.save(run_dir / CONFIG_FILE)
        session = _Session(config, run_dir, model, train_set, val_set, dev, parallel)
        if resume_from is None:
            session.initialise()
            start_step = 0
        else:
            session.restore(resume_from)
            start_step = resume_from.step
        history, seconds, stopped_at = _run_steps(session, start_step, progress)
    model.eval()
    final_step = stopped_at if stopped_at is not None else max(start_step, config.train.steps)
    return TrainResult(run_dir, model, final_step, history, seconds)


def _run_steps(
    session: _Session, start_step: int, progress: bool
) -> tuple[list[dict[str, Any]], float, int | None]:
    """Steps ``start_step..steps``: update, log, validate, checkpoint.

    Returns the log, the seconds taken and the step where the time budget stopped the run
    (None when it ran to the end).
    """
    train_cfg, run_dir = session.config.train, session.run_dir
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(
        total=None if train_cfg.steps >= UNTIL_BUDGET else train_cfg.steps,  # until the budget
        initial=start_step,
        disable=not progress or not is_terminal(),  # a log gets the validation lines only
        desc="train",
        dynamic_ncols=True,
    )
    last_good_step = start_step
    stopped_at: int | None = None
    try:
        if start_step == 0:
            session.checkpoint(0)  # so that a divergence always leaves a good checkpoint behind
        for step in range(start_step, train_cfg.steps):
            loss, terms = session.loss(step)
            global_loss = session.global_mean(loss)  # every rank takes the same decisions
            if not torch.isfinite(global_loss):
                raise _Diverged(step, global_loss.item())
            grad_norm = session.update(loss)
            done = step + 1
            sums = session.log_sums
            for key, value in {"loss": global_loss.item(), **_term_means(terms)}.items():
                sums[key] = sums.get(key, 0.0) + value
            session.log_count += 1
            bar.update(1)
            if done % train_cfg.log_every == 0 or done == train_cfg.steps:
                record = {k: v / session.log_count for k, v in sums.items()}
                record.update(
                    step=done,
                    lr=float(session.scheduler.get_last_lr()[0]),
                    grad_norm=grad_norm,
                    seconds=time.perf_counter() - started,
                )
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if session.writer:
                    append_metrics(run_dir, record)
                history.append(record)
                session.log_sums, session.log_count = {}, 0
            is_eval = train_cfg.eval_every > 0 and done % train_cfg.eval_every == 0
            out_of_time = done < train_cfg.steps and budget_exceeded(
                started, session.config.execution.budget_minutes, session.parallel
            )
            last = done == train_cfg.steps or out_of_time  # validated and checkpointed
            if session.val_set is not None and (is_eval or last):
                record = session.validate(done)
                if session.writer:
                    append_metrics(run_dir, record)
                history.append(record)
                if progress:
                    values = (
                        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record.items()
                    )
                    bar.write(" ".join(values))
            every = train_cfg.checkpoint_every
            if (every > 0 and done % every == 0) or last:
                session.checkpoint(done, budget_reached=out_of_time)
                last_good_step = done
            if out_of_time:
                stopped_at = done
                if progress:
                    bar.write(
                        f"time budget of {session.config.execution.budget_minutes} min "
                        f"reached at step {done}"
                    )
                break
    except _Diverged as error:
        raise _diverged_error(error, last_good_step, run_dir) from None
    finally:
        bar.close()
    return history, time.perf_counter() - started, stopped_at
