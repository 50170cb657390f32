"""dgmood's Glow and normflows' Glow trained on CIFAR-10 for the same time budgets, as JSON.

    python -m benchmarks.glow_budget --budgets 10 30            # minutes of training each
    python -m benchmarks.glow_budget --budgets 0.5 1 --test-limit 200   # a smoke run

Both models are built at dgmood's `cpu` Glow size for 3x32x32 (L=3, K=4, width 64, affine
couplings, LU 1x1 convs; normflows with ``net_actnorm=True`` and a learned Gaussian base per
level, as ``benchmarks/peer_glow.py`` builds it), and trained from the same seed on the same
batches (batch 64, Adam, lr 1e-3 with 100 warm-up steps, gradient norm clipped at 50, uniform
dequantization), each as its user would run it: dgmood with its default execution for
``dgmood train glow --set execution.precision=auto`` (bf16 autocast of the conditioners where
the CPU has native bf16, channels_last), normflows in fp32 (it has no reduced-precision path).

Training *alternates* in slices of ``--slice`` seconds (ours, peer, ours, peer, ...) in one
process with one thread, so a loaded shared machine slows both alike; each model's budget is
the wall time of its own slices (the process CPU time is recorded beside it). Whenever a
model's training time reaches a budget, it is scored on the first ``--test-limit`` CIFAR-10
test images (default all the data has; the same seeded dequantization noise for both
models, in fp32, not counted in any budget). Data come from $DGMOOD_MIRROR / $DGMOOD_DATA.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.peer_glow import build_peer, peer_log_prob
from benchmarks.throughput import machine, parse_with_malloc
from dgmood.config import DataConfig
from dgmood.data.dequantize import to_model_input
from dgmood.data.loading import DataSources
from dgmood.models.base import InputSpec
from dgmood.models.flows.multiscale import MultiscaleFlow
from dgmood.models.registry import build_model
from dgmood.nn.precision import autocast_context, cpu_flags, resolve_precision
from dgmood.presets import run_preset
from dgmood.training.loop import batch_indices, step_generator

_FLAGS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}


@dataclass
class Contestant:
    """One model in training: its step function, clock and results so far."""

    name: str
    model: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    precision: str  # "fp32" or "bf16" (autocast of what the model allows)
    channels_last: bool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    wall_seconds: float = 0.0  # training time: the wall time of its own slices
    cpu_seconds: float = 0.0  # process CPU time during its slices
    losses: list[float] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)


def bits_per_dim(log_prob: Tensor, spec: InputSpec) -> Tensor:
    return -(log_prob + spec.log_bin_volume()) / (spec.num_dims * math.log(2.0))


def make_contestant(
    name: str,
    model: nn.Module,
    log_prob: Callable[[Tensor], Tensor],
    precision: str,
    channels_last: bool,
    lr: float,
    warmup: int,
) -> Contestant:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    )
    return Contestant(name, model, log_prob, precision, channels_last, optimizer, scheduler)


def train_slice(
    c: Contestant,
    images: Tensor,
    spec: InputSpec,
    args: argparse.Namespace,
    until: float,
) -> None:
    """Train ``c`` for ``args.slice`` seconds of wall time, or until its clock reads ``until``."""
    c.model.train()
    started, cpu_started = time.perf_counter(), time.process_time()
    slice_end = min(args.slice, until - c.wall_seconds)
    while time.perf_counter() - started < slice_end:
        index = batch_indices(len(images), args.batch_size, args.seed, c.step)
        x = to_model_input(images[index], spec, "uniform", step_generator(args.seed, c.step))
        if c.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(c.precision):  # type: ignore[arg-type]
            loss = bits_per_dim(c.log_prob(x), spec).mean()
        c.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(c.model.parameters(), 50.0)
        c.optimizer.step()
        c.scheduler.step()
        c.step += 1
        if c.step % 50 == 0:
            c.losses.append(round(float(loss.detach()), 4))
    c.wall_seconds += time.perf_counter() - started
    c.cpu_seconds += time.process_time() - cpu_started


@torch.no_grad()
def test_bits_per_dim(c: Contestant, x_test: Tensor, spec: InputSpec, batch: int = 250) -> float:
    c.model.eval()
    values = []
    for start in range(0, len(x_test), batch):
        x = x_test[start : start + batch]
        if c.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        values.append(bits_per_dim(c.log_prob(x).float(), spec))
    return float(torch.cat(values).double().mean())


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    config = run_preset("glow", "cpu", "cifar10")
    data = DataConfig(dataset="cifar10", channels=3)
    sources = DataSources()
    train_set = sources.load_like("cifar10", "train", data)
    test_set = sources.load_like("cifar10", "test", data).head(args.test_limit)
    images = train_set.images
    ours_model = build_model(config.model, data)
    assert isinstance(ours_model, MultiscaleFlow)
    spec = ours_model.input_spec
    model_cfg = config.model
    peer_cfg = {
        "channels": 3,
        "n_levels": model_cfg.n_levels,  # type: ignore[attr-defined]
        "n_steps": model_cfg.n_steps,  # type: ignore[attr-defined]
        "hidden": model_cfg.hidden_channels,  # type: ignore[attr-defined]
    }
    torch.manual_seed(args.seed)
    peer_model = build_peer(peer_cfg)
    # the same test inputs for both: seeded uniform dequantization, fp32
    x_test = to_model_input(
        test_set.images, spec, "uniform", torch.Generator().manual_seed(10_000 + args.seed)
    )
    # data-dependent actnorm initialisation of both, on the first batch
    first = to_model_input(
        images[batch_indices(len(images), args.batch_size, args.seed, 0)],
        spec,
        "uniform",
        step_generator(args.seed, 0),
    )
    with torch.no_grad():
        ours_model.train()
        ours_model.log_prob(first)
        peer_model.train()
        peer_log_prob(peer_model, first)
    ours_model = ours_model.to(memory_format=torch.channels_last)
    precision = resolve_precision(args.ours_precision, torch.device("cpu"))
    contestants = [
        make_contestant(
            "dgmood", ours_model, ours_model.log_prob, precision, True, args.lr, args.warmup
        ),
        make_contestant(
            "normflows",
            peer_model,
            lambda x: peer_log_prob(peer_model, x),
            "fp32",
            False,
            args.lr,
            args.warmup,
        ),
    ]
    budgets = sorted(60.0 * b for b in args.budgets)
    loads = [os.getloadavg()[0]]
    for budget in budgets:
        while any(c.wall_seconds < budget for c in contestants):
            for c in contestants:
                if c.wall_seconds < budget:
                    train_slice(c, images, spec, args, budget)
            loads.append(os.getloadavg()[0])
        for c in contestants:
            scored = time.perf_counter()
            value = test_bits_per_dim(c, x_test, spec)
            c.results.append(
                {
                    "budget_minutes": budget / 60,
                    "test_bits_per_dim": round(value, 4),
                    "steps": c.step,
                    "train_wall_seconds": round(c.wall_seconds, 1),
                    "train_cpu_seconds": round(c.cpu_seconds, 1),
                    "images_per_wall_second": round(c.step * args.batch_size / c.wall_seconds, 1),
                    "score_seconds": round(time.perf_counter() - scored, 1),
                }
            )
        progress = {c.name: c.results[-1] for c in contestants}
        print(json.dumps({"budget_minutes": budget / 60, **progress}), flush=True)
    return {
        "benchmark": "glow_budget",
        "dataset": "cifar10",
        "test_set": f"{test_set.label}, n={len(test_set)}",
        "architecture": {"glow": "L=3, K=4, width 64, affine, LU (dgmood glow cpu)", **peer_cfg},
        "parameters": {c.name: sum(p.numel() for p in c.model.parameters()) for c in contestants},
        "training": {
            "batch_size": args.batch_size,
            "optimizer": "adam",
            "lr": args.lr,
            "warmup_steps": args.warmup,
            "grad_clip": 50.0,
            "slice_seconds": args.slice,
            "seed": args.seed,
        },
        "precision": {c.name: c.precision for c in contestants},
        "results": {c.name: c.results for c in contestants},
        "loss_every_50_steps": {c.name: c.losses for c in contestants},
        "load_average_range": [round(min(loads), 2), round(max(loads), 2)],
        "machine": {**machine(), "cpu_flags": sorted(cpu_flags() & _FLAGS)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--slice", type=float, default=20.0, help="seconds per turn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-limit", type=int, default=0, help="test images (0 = all)")
    parser.add_argument("--ours-precision", choices=["fp32", "bf16", "auto"], default="auto")
    args = parse_with_malloc(parser)
    torch.set_num_threads(1)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
