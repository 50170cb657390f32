"""Cost of a VAE's importance-weighted bound as a function of k, as JSON.

    python benchmarks/iwae_cost.py --model vae --preset cpu --ks 1 5 10 50 100

For each k: images/s of ``iwae_log_prob(x, k)`` on a batch of random uint8 images (after
one warm-up call), next to the single-sample ELBO's images/s.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.throughput import machine  # noqa: I001
from dgmood.config import DataConfig
from dgmood.data.dequantize import to_model_input
from dgmood.models.registry import build_model, resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vae")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 50, 100])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(resolve_model(args.model, args.preset), DataConfig(channels=args.channels))
    model.eval()
    images = torch.randint(0, 256, (args.batch_size, args.channels, 32, 32), dtype=torch.uint8)
    x = to_model_input(images, model.input_spec)

    def rate(fn) -> float:  # type: ignore[no-untyped-def]
        with torch.no_grad():
            fn()
            start = time.perf_counter()
            for _ in range(args.repeats):
                fn()
        return args.batch_size * args.repeats / (time.perf_counter() - start)

    results = {"elbo": rate(lambda: model.log_prob(x))}
    for k in args.ks:
        results[f"iwae_k{k}"] = rate(lambda k=k: model.iwae_log_prob(x, k))
    print(
        json.dumps(
            {
                "benchmark": "iwae_cost",
                "model": args.model,
                "preset": args.preset,
                "batch_size": args.batch_size,
                "images_per_s": results,
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
