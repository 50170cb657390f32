"""What glibc malloc tuning (:func:`dgmood.nn.allocator.tune_malloc`) buys, as JSON lines.

    python -m benchmarks.malloc --models glow vae pixelcnnpp realnvp --batch-sizes 64 256

For each model (``cpu`` preset, 1x32x32, randomly initialised) and batch size, scoring
(no-grad ``log_prob``, as ``dgmood score``/``evaluate`` do) and training steps are timed,
each in its own fresh process, alternating default and tuned malloc (``--rounds`` each),
one thread. Each line has images/s (median of ``--steps`` timed calls after two warm-up
calls) and the minor page faults per call: the cost the tuning removes is the kernel
zero-filling pages that glibc handed back to the OS after the previous batch. (A process
that trained first has grown its heap and raised glibc's dynamic mmap threshold, and then
scores without faults either way: scoring-only processes are where it matters.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

_CHILD_FLAG = "--child"


def _child(
    phase: str, model_name: str, batch_size: int, steps: int, malloc: str
) -> dict[str, object]:
    from dgmood.nn.allocator import is_tuned, tune_malloc

    if malloc == "tuned":
        tune_malloc()
    import torch

    from benchmarks.throughput import machine
    from dgmood.config import DataConfig
    from dgmood.models.registry import build_model, resolve_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(resolve_model(model_name, "cpu"), DataConfig(channels=1, image_size=32))
    x = torch.rand(batch_size, 1, 32, 32) - 0.5
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    def train_step() -> None:
        loss = model.training_loss(x)[0]  # type: ignore[operator]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(fn: object) -> tuple[float, float]:
        for _ in range(2):
            fn()  # type: ignore[operator]
        seconds, faults = [], []
        for _ in range(steps):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            fn()  # type: ignore[operator]
            seconds.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return batch_size / statistics.median(seconds), statistics.median(faults)

    if phase == "train":
        per_s, faults = timed(train_step)
    else:
        model.eval()
        with torch.no_grad():
            per_s, faults = timed(lambda: model.log_prob(x))  # type: ignore[operator]
    return {
        "benchmark": "malloc",
        "model": model_name,
        "preset": "cpu",
        "phase": phase,
        "batch_size": batch_size,
        "malloc": "tuned" if is_tuned() else "default",
        "images_per_s": round(per_s, 1),
        "page_faults_per_call": faults,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "machine": machine(),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == _CHILD_FLAG:
        phase, model_name, batch, steps, malloc = sys.argv[2:7]
        print(json.dumps(_child(phase, model_name, int(batch), int(steps), malloc)))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["glow", "vae", "pixelcnnpp", "realnvp"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phases", nargs="+", choices=["score", "train"], default=["score"])
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("DGMOOD_MALLOC", None)
    env["OMP_NUM_THREADS"] = "1"
    runs = [
        (phase, model_name, batch)
        for phase in args.phases
        for model_name in args.models
        for batch in args.batch_sizes
    ]
    for phase, model_name, batch in runs:
        for _ in range(args.rounds):
            for malloc in ("default", "tuned"):
                command = [sys.executable, "-m", "benchmarks.malloc", _CHILD_FLAG, phase]
                command += [model_name, str(batch), str(args.steps), malloc]
                out = subprocess.run(command, env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(out.stderr)
                print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
