"""Time OOD metrics with bootstrap CIs on N x N scores; prints one JSON line per size.

python -m benchmarks.metrics_bootstrap --sizes 1000 10000 --resamples 1000
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from dgmood.evaluation.metrics import ood_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for n in args.sizes:
        scores_in, scores_out = rng.normal(0, 1, n), rng.normal(1, 2, n)
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            ood_metrics(scores_in, scores_out, n_resamples=args.resamples)
            seconds.append(time.perf_counter() - start)
        print(
            json.dumps(
                {
                    "benchmark": "ood_metrics_bootstrap",
                    "n_in": n,
                    "n_out": n,
                    "resamples": args.resamples,
                    "seconds_min": min(seconds),
                    "seconds_max": max(seconds),
                    "machine": platform.processor() or platform.machine(),
                }
            )
        )


if __name__ == "__main__":
    main()
