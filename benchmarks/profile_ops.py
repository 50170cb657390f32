"""``torch.profiler`` top operators of a training step and of scoring, per model family.

    python -m benchmarks.profile_ops --model glow --preset cpu --batch-size 64
    python -m benchmarks.profile_ops --model realnvp --preset cpu --rows 12 --json

Prints the table of the ``--rows`` most expensive ops by self CPU time (or, with
``--json``, one JSON object per phase with the same rows), after warm-up steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from dgmood.config import DataConfig
from dgmood.data.dequantize import to_model_input
from dgmood.models.registry import build_model, resolve_model
from dgmood.nn.precision import autocast_context


def top_ops(prof: Any, rows: int) -> list[dict[str, Any]]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:rows]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="glow")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", nargs="*", default=[], help="model overrides key=value")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    parsed = {
        k: json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
        for k, v in overrides.items()
    }
    torch.manual_seed(0)
    config = dataclasses.replace(resolve_model(args.model, args.preset), **parsed)
    model = build_model(config, DataConfig(channels=args.channels, image_size=32))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    spec = model.input_spec
    images = torch.randint(0, 256, (args.batch_size, *spec.shape), dtype=torch.uint8)
    labels = torch.zeros(args.batch_size, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    def batch() -> torch.Tensor:
        return to_model_input(images, spec, "uniform").contiguous(memory_format=memory_format)

    def train_step() -> None:
        with autocast_context(args.precision):
            if hasattr(model, "head"):
                loss = model.training_loss(batch(), labels)[0]
            else:
                loss = model.training_loss(batch())[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def score() -> None:
        with torch.no_grad(), autocast_context(args.precision):
            model.log_prob(batch()) if hasattr(model, "log_prob") else model(batch())

    model.train()
    train_step()
    results = {}
    for phase, fn in (("train", train_step), ("score", score)):
        model.train(phase == "train")
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        results[phase] = prof
        if args.json:
            print(
                json.dumps(
                    {
                        "benchmark": "profile_ops",
                        "model": args.model,
                        "preset": args.preset,
                        "phase": phase,
                        "batch_size": args.batch_size,
                        "precision": args.precision,
                        "channels_last": args.channels_last,
                        "top_ops": top_ops(prof, args.rows),
                    }
                )
            )
        else:
            print(f"== {args.model}/{args.preset} {phase} (batch {args.batch_size})")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
