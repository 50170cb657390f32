"""PixelCNN++ training and scoring img/s, fused concat-ELU vs the reference ops, interleaved.

    OMP_NUM_THREADS=1 python -m benchmarks.pixelcnnpp_speed --rounds 6
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        MALLOC_TOP_PAD_=268435456 OMP_NUM_THREADS=1 python -m benchmarks.pixelcnnpp_speed

Both variants (``GatedResNet.fused`` True / False) share one model and one process and
alternate round by round, so that load from other processes hits both alike; each round
times ``--steps`` optimiser steps (forward, backward, Adam) and ``--steps`` no-grad
``log_prob`` calls, in NCHW and in channels-last. Prints one JSON line with every round's
img/s, the glibc malloc tunables in the environment and the CPU's vector flags.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import torch

from benchmarks.throughput import machine
from dgmood.config import DataConfig
from dgmood.data.dequantize import to_model_input
from dgmood.models.autoregressive.pixelcnnpp import GatedResNet
from dgmood.models.registry import build_model, resolve_model
from dgmood.nn.precision import cpu_flags

MALLOC_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def images_per_s(fn: Callable[[], None], steps: int, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return round(batch_size * steps / (time.perf_counter() - start), 1)


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = DataConfig(channels=args.channels, image_size=32)
    model = build_model(resolve_model("pixelcnnpp", args.preset), data)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
    images = torch.randint(0, 256, (args.batch_size, *model.input_spec.shape), dtype=torch.uint8)
    x_nchw = to_model_input(images, model.input_spec, "uniform")
    results: dict[str, list[float]] = {}
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=memory_format)
        x = x_nchw.contiguous(memory_format=memory_format)
        layout = "nchw" if memory_format == torch.contiguous_format else "channels_last"

        def train_step(x: torch.Tensor = x) -> None:
            model.train()
            loss = model.training_loss(x)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def score(x: torch.Tensor = x) -> None:
            model.eval()
            with torch.no_grad():
                model.log_prob(x)

        for fused in (False, True):  # warm-up
            GatedResNet.fused = fused
            train_step()
            score()
        for _ in range(args.rounds):
            for fused in (False, True):
                GatedResNet.fused = fused
                name = f"{layout}_{'fused' if fused else 'reference'}"
                results.setdefault(f"train_{name}", []).append(
                    images_per_s(train_step, args.steps, args.batch_size)
                )
                results.setdefault(f"score_{name}", []).append(
                    images_per_s(score, args.steps, args.batch_size)
                )
    GatedResNet.fused = True
    speedup = {
        key.replace("_fused", ""): round(
            sorted(values)[len(values) // 2]
            / sorted(results[key.replace("fused", "reference")])[len(values) // 2],
            3,
        )
        for key, values in results.items()
        if key.endswith("_fused")
    }
    vector_flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    return {
        "benchmark": "pixelcnnpp_speed",
        "preset": args.preset,
        "channels": args.channels,
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "images_per_s": results,
        "median_speedup_fused_vs_reference": speedup,
        "malloc_env": {name: os.environ.get(name) for name in MALLOC_TUNABLES},
        "machine": machine() | {"cpu_flags": vector_flags},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=6)
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
