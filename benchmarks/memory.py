"""Peak training memory vs flow depth K, with and without memory-light backprop, as JSON.

    python -m benchmarks.memory --ks 4 8 16 32 --batch-size 32 --hidden 64
    python -m benchmarks.memory --timing --ks 8 32 --steps 3   # time overhead, interleaved

Each (K, memory_light) runs in a fresh subprocess, so the process's max RSS is that
configuration's own: ``activation_bytes`` is the max RSS after the timed training steps
minus the RSS just before the first one (model, optimiser state and torch itself
excluded). On a GPU the same is read from ``torch.cuda.max_memory_allocated``.

The children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed
activation buffers to the OS at once: with its default heap reuse, fragmentation left by the
step-by-step recomputation showed up as RSS growing with K (42 -> 151 MiB at K = 4 -> 32)
although the live tensors stayed flat (16 -> 18 MiB with the threshold).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize()


def child(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from dgmood.config import DataConfig
    from dgmood.data.dequantize import to_model_input
    from dgmood.models.flows.presets import GlowConfig
    from dgmood.models.registry import build_model

    torch.manual_seed(0)
    data = DataConfig(channels=args.channels, image_size=32)
    config = GlowConfig(n_levels=3, n_steps=args.k, hidden_channels=args.hidden)
    model = build_model(config, data)
    model.set_memory_light(args.memory_light)
    device = torch.device(args.device)
    model.to(device)
    spec = model.input_spec
    images = torch.randint(0, 256, (args.batch_size, *spec.shape), dtype=torch.uint8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    with torch.no_grad():
        model.log_prob(to_model_input(images, spec, "uniform").to(device))  # actnorm init
    # optimiser state exists before measuring: one step at a tiny batch
    loss = -model.log_prob(to_model_input(images[:2], spec, "uniform").to(device)).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _current_rss_bytes()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = -model.log_prob(to_model_input(images, spec, "uniform").to(device)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "benchmark": "memory",
        "k": args.k,
        "memory_light": args.memory_light,
        "n_levels": 3,
        "hidden_channels": args.hidden,
        "shape": list(spec.shape),
        "batch_size": args.batch_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "before_bytes": before,
        "peak_bytes": peak,
        "activation_bytes": peak - before,
        "step_seconds": seconds,
    }


def timing(args: argparse.Namespace) -> None:
    """Step time of memory-light vs ordinary backprop, interleaved in this one process."""
    import copy

    import torch

    from dgmood.config import DataConfig
    from dgmood.models.flows.presets import GlowConfig
    from dgmood.models.registry import build_model

    for k in args.ks:
        torch.manual_seed(0)
        config = GlowConfig(n_levels=3, n_steps=k, hidden_channels=args.hidden)
        plain = build_model(config, DataConfig(channels=args.channels, image_size=32))
        x = torch.rand(args.batch_size, args.channels, 32, 32) - 0.5
        plain.train()
        with torch.no_grad():
            plain.log_prob(x)
        light = copy.deepcopy(plain)
        light.set_memory_light(True)
        seconds: dict[str, list[float]] = {"plain": [], "memory_light": []}
        for repeat in range(args.steps + 1):
            for name, model in (("plain", plain), ("memory_light", light)):
                start = time.perf_counter()
                (-model.log_prob(x).mean()).backward()
                if repeat:  # the first round is warm-up
                    seconds[name].append(time.perf_counter() - start)
                model.zero_grad(set_to_none=True)
        ratios = [
            light_s / plain_s
            for light_s, plain_s in zip(seconds["memory_light"], seconds["plain"], strict=True)
        ]
        print(
            json.dumps(
                {
                    "benchmark": "memory_light_time",
                    "k": k,
                    "hidden_channels": args.hidden,
                    "batch_size": args.batch_size,
                    "threads": torch.get_num_threads(),
                    "seconds": seconds,
                    "time_ratio": [round(r, 3) for r in ratios],
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--k", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-light", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--timing", action="store_true", help="time memory-light vs plain steps instead"
    )
    args = parser.parse_args()
    if args.timing:
        timing(args)
        return
    if args.k is not None:  # one configuration, in this (fresh) process
        print(json.dumps(child(args)))
        return
    for k in args.ks:
        for light in (False, True):
            command = [
                sys.executable,
                "-m",
                "benchmarks.memory",
                "--k",
                str(k),
                "--batch-size",
                str(args.batch_size),
                "--hidden",
                str(args.hidden),
                "--channels",
                str(args.channels),
                "--steps",
                str(args.steps),
                "--device",
                args.device,
            ] + (["--memory-light"] if light else [])
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(
                command, check=True, capture_output=True, text=True, env=env
            ).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
