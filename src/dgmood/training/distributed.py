"""Data-parallel training: one process per device, each on a shard of the same global batch.

    dgmood train MODEL --nproc 2 ...     (starts the line below and waits for it)
    torchrun --nproc-per-node 2 -m dgmood.training.distributed CONFIG.yaml RUN_DIR [--resume]

Every rank builds the model from the same seed, prepares the *whole* global batch of step
``s`` (the same images and dequantization noise as a single process would, since both are
pure functions of ``(seed, s)``) and keeps its contiguous slice of ``batch_size /
world_size`` images. DistributedDataParallel averages the gradients, so an optimiser step
equals a single-process step on the global batch up to float summation order. Actnorm's
data-dependent initialisation all-reduces its statistics (:mod:`dgmood.nn.layers`), so every
rank starts from the statistics of the whole initialisation batch. Rank 0 loads the data
first (downloading or copying it into the data directory) while the others wait, so no two
processes write one data file. Rank 0 alone writes the run directory (config, checkpoints,
metrics) and validates; the others wait at a barrier, and all ranks resume from the same
checkpoint files. Backend: NCCL on GPUs, gloo on CPUs.

The main loop (:func:`dgmood.training.loop.train`) takes a :class:`DataParallel` as its
``parallel`` argument; with none it is the single-process loop, unchanged.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel job (from torchrun's environment)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the run directory and validates."""
        return self.rank == 0

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch (sizes must divide evenly)."""
        if batch.shape[0] % self.world_size:
            raise ValueError(
                f"a global batch of {batch.shape[0]} does not split evenly over "
                f"{self.world_size} processes; make train.batch_size a multiple of it"
            )
        size = batch.shape[0] // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def wrap(self, model: nn.Module) -> nn.Module:
        """A DDP module whose ``forward(x, labels)`` is the model's training loss."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(_TrainingLoss(model), device_ids=device_ids)

    def mean(self, value: Tensor) -> Tensor:
        """The mean of a (detached) tensor over ranks, for logging."""
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (validation metrics, stop decisions)."""
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        dist.barrier()


class _TrainingLoss(nn.Module):
    """Adapter so that DDP's forward is the model's ``training_loss``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        from dgmood.training.loop import compute_loss

        return compute_loss(self.model, x, labels)


def setup(backend: str | None = None) -> DataParallel:
    """Join the process group that torchrun's environment describes.

    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` come from
    torchrun (or a test that spawns the processes itself).
    """
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DataParallel(rank=rank, world_size=world_size, device=device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a run config YAML (dgmood config ... > my.yaml)")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--data-dir", default=None, help="datasets folder ($DGMOOD_DATA)")
    parser.add_argument("--mirror", default=None, help="raw dataset files ($DGMOOD_MIRROR)")
    parser.add_argument("--download", action="store_true", help="download missing datasets")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from dgmood.config import RunConfig
    from dgmood.data.loading import DataSources
    from dgmood.nn.allocator import tune_malloc
    from dgmood.training.loop import train

    tune_malloc()
    parallel = setup()
    try:
        config = RunConfig.load(args.config)
        train(
            config,
            args.run_dir,
            sources=DataSources(args.data_dir, args.mirror, args.download),
            resume=args.resume,
            device=str(parallel.device),
            progress=parallel.is_writer and not args.no_progress,
            parallel=parallel,
        )
    finally:
        teardown()


if __name__ == "__main__":
    main()
