"""Training and scoring throughput (images/s) and peak memory of a model preset, as JSON.

    python benchmarks/throughput.py --model glow --preset cpu --channels 1
    python benchmarks/throughput.py --model glow --preset paper --channels 3 --batch-size 64

Times whole optimiser steps (forward, backward, Adam update) on random uint8 images pushed
through the real dequantization, after warm-up steps; scoring is no-grad log_prob. Peak
memory is the process's max RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import torch

from dgmood.config import DataConfig
from dgmood.data.dequantize import to_model_input
from dgmood.models.base import Classifier
from dgmood.models.registry import build_model, resolve_model
from dgmood.nn.allocator import is_tuned, tune_malloc
from dgmood.nn.precision import autocast_context, resolve_precision


def parse_with_malloc(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``parser``'s arguments plus ``--malloc tuned|default``, applied before returning:
    :func:`dgmood.nn.allocator.tune_malloc` (as the CLI does) or glibc's own settings."""
    parser.add_argument(
        "--malloc",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned: keep freed tensors in the heap, as the dgmood CLI does (default); "
        "default: glibc's own settings",
    )
    args = parser.parse_args()
    if args.malloc == "tuned":
        tune_malloc()
    return args


def machine() -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "malloc": "tuned" if is_tuned() else "default",
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = DataConfig(channels=args.channels, image_size=args.image_size)
    torch.manual_seed(0)
    config = resolve_model(args.model, args.preset)
    model = build_model(config, data).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = model.input_spec
    images = torch.randint(0, 256, (args.batch_size, *spec.shape), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)

    def batch() -> torch.Tensor:
        x = to_model_input(images, spec, "uniform").to(device)
        return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def training_loss(x: torch.Tensor) -> torch.Tensor:
        if isinstance(model, Classifier):
            return model.training_loss(x, labels)[0]
        return model.training_loss(x)[0]

    loss_fn = (
        torch.compile(training_loss, dynamic=False) if args.compile_training else training_loss
    )

    def train_step() -> None:
        x = batch()
        with autocast_context(args.precision, device):
            loss = loss_fn(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.warmup):  # with --compile-training: compiles here
        train_step()
    sync(device)
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    sync(device)
    train_seconds = time.perf_counter() - start
    train_peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )

    from benchmarks.peer_glow import count_flops, matmul_rate

    one = batch()[:1]
    one_label = labels[:1]
    train_flops = count_flops(
        lambda: (
            model.training_loss(one, one_label)[0]
            if isinstance(model, Classifier)
            else model.training_loss(one)[0]
        ).backward()
    )
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    score_fn = (lambda x: model(x)) if isinstance(model, Classifier) else model.log_prob
    with torch.no_grad():
        score_flops = count_flops(lambda: score_fn(one))
    if args.compile:
        score_fn = torch.compile(score_fn)
    with torch.no_grad(), autocast_context(args.precision, device):
        for _ in range(args.warmup):
            score_fn(batch())
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            score_fn(batch())
        sync(device)
    score_seconds = time.perf_counter() - start
    rate = matmul_rate(torch.float32)
    train_per_s = args.batch_size * args.steps / train_seconds
    score_per_s = args.batch_size * args.steps / score_seconds
    return {
        "benchmark": "throughput",
        "model": args.model,
        "preset": args.preset,
        "shape": list(spec.shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": args.batch_size,
        "device": str(device),
        "channels_last": args.channels_last,
        "compile_scoring": args.compile,
        "compile_training": args.compile_training,
        "train_warmup_seconds": warmup_seconds,
        "precision": resolve_precision(args.precision, device),
        "train_images_per_s": train_per_s,
        "score_images_per_s": score_per_s,
        "peak_memory_bytes": int(train_peak),
        "flops_per_image": {"train": train_flops, "score": score_flops},
        "matmul_flops_per_s_fp32": rate,
        "fraction_of_matmul_rate": {
            "train": train_per_s * train_flops / rate,
            "score": score_per_s * score_flops / rate,
        },
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="glow")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true", help="torch.compile the scorer")
    parser.add_argument(
        "--compile-training", action="store_true", help="torch.compile the training loss"
    )
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32")
    args = parse_with_malloc(parser)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
