"""Add (or replace) a pretrained run in src/dgmood/pretrained: train it, measure it, list it.

    # train with the recorded command, then ship it
    python scripts/make_pretrained.py glow-tiny-fashion-mnist \\
        --argv "train glow --preset tiny --dataset fashion-mnist --set train.steps=200" \\
        --description "Glow tiny (L=2, K=2, width 16), 200 x 16" --extra mnist:test

    # ship a run trained earlier by exactly that command at that commit
    python scripts/make_pretrained.py glow-fashion-mnist --run-dir /tmp/runs/glow-fm \\
        --argv "train glow --preset cpu --dataset fashion-mnist ..." --commit 532bfda... \\
        --load "5.2-8.3" --description "..." --extra mnist:test

Copies ``config.yaml``, ``model.safetensors`` and ``metrics.jsonl`` (never the checkpoint
or score caches) to ``src/dgmood/pretrained/runs/NAME``, measures test bits/dim (or
accuracy) on the whole test split, the same on the first 10,000 training images, a
256-image check set the test suite measures again, and any ``--extra`` sets, and writes the
manifest entry with the command, commit, CPU and sha256. Data come from $DGMOOD_MIRROR /
$DGMOOD_DATA as usual. Training runs with one thread (``OMP_NUM_THREADS=1``), as every
shipped run was.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
# the order `dgmood pretrained` lists them in: the demo's first, the tiny test run last
ORDER = (
    "glow-fashion-mnist",
    "pixelcnnpp-fashion-mnist",
    "vae-fashion-mnist",
    "diffusion-fashion-mnist",  # the diffusion family's slot (not trained yet)
    "glow-mnist",
    "pixelcnnpp-mnist",
    "vae-mnist",
    "diffusion-mnist",
    "cnn-plain-mnist",
    "vae-bernoulli-mnist",
    "glow-cifar10",
    "pixelcnnpp-cifar10",
    "vae-cifar10",
    "realnvp-cifar10",
    "diffusion-cifar10",
    "glow-tiny-fashion-mnist",
)
CHECK_IMAGES = 256


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [f for f in INTERESTING_FLAGS if f in flags],
    }


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def train(argv: list[str], run_dir: Path) -> tuple[float, float, str]:
    """Run ``dgmood ARGV --run-dir RUN_DIR`` with one thread; (wall s, CPU s, load range)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dgmood = Path(sys.executable).with_name("dgmood")
    before = os.getloadavg()[0]
    started = time.perf_counter()
    usage_before = os.times()
    command = [str(dgmood), *argv, "--run-dir", str(run_dir), "--no-progress"]
    subprocess.run(command, env=env, check=True)
    usage = os.times()
    cpu = (usage.children_user - usage_before.children_user) + (
        usage.children_system - usage_before.children_system
    )
    after = os.getloadavg()[0]
    return time.perf_counter() - started, cpu, f"{before:.1f}-{after:.1f}"


def training_seconds(run_dir: Path) -> tuple[int, float]:
    """(last step, wall seconds summed over resumed sessions) from metrics.jsonl."""
    total, last, step = 0.0, 0.0, 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = max(step, int(record.get("step", 0)))
        seconds = record.get("seconds")
        if isinstance(seconds, int | float):
            if seconds < last:
                total += last
            last = float(seconds)
    return step, total + last


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name")
    parser.add_argument("--argv", required=True, help="dgmood arguments, less --run-dir")
    parser.add_argument("--description", required=True)
    parser.add_argument("--run-dir", type=Path, help="an existing run made by --argv")
    parser.add_argument("--commit", help="with --run-dir: the commit it was trained at")
    parser.add_argument("--load", default="?", help="with --run-dir: load average range")
    parser.add_argument("--cpu-seconds", type=float, help="with --run-dir: CPU time used")
    parser.add_argument(
        "--threads", type=int, default=1, help="with --run-dir: torch threads it trained with"
    )
    parser.add_argument("--train-limit", type=int, default=10_000)
    parser.add_argument(
        "--test-limit", type=int, default=0, help="first N test images (0 = all; a dear model)"
    )
    parser.add_argument(
        "--check-images",
        type=int,
        default=CHECK_IMAGES,
        help="images of the check set the test suite re-measures (fewer for a dear model)",
    )
    parser.add_argument("--extra", action="append", default=[], help="DATASET:SPLIT[:LIMIT]")
    args = parser.parse_args()

    from dgmood import pretrained
    from dgmood.data.loading import DataSources
    from dgmood.evaluation.pretrained import measure
    from dgmood.io import file_sha256
    from dgmood.runs import load_run

    argv = shlex.split(args.argv)
    if "--run-dir" in argv:
        parser.error("--argv must not contain --run-dir (the script chooses it)")
    machine: dict[str, Any] = cpu_info()
    import torch

    machine["torch"] = torch.__version__
    machine["threads"] = 1 if args.run_dir is None else args.threads
    with tempfile.TemporaryDirectory() as scratch:
        if args.run_dir is None:
            commit = git_commit()
            run_dir = Path(scratch) / args.name
            wall, cpu, load = train(argv, run_dir)
            machine["load_average"] = load
            machine["cpu_seconds"] = round(cpu, 1)
        else:
            if not args.commit:
                parser.error("--run-dir needs --commit (the commit it was trained at)")
            commit, run_dir = args.commit, args.run_dir
            machine["load_average"] = args.load
            if args.cpu_seconds is not None:
                machine["cpu_seconds"] = args.cpu_seconds
        steps, seconds = training_seconds(run_dir)
        target = pretrained.RUNS_DIR / args.name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in pretrained.SHIPPED_FILES:
            shutil.copy2(run_dir / name, target / name)

    run = load_run(target)
    sources = DataSources()
    dataset = run.config.data.dataset
    test = measure(run, dataset, "test", args.test_limit, sources)
    train_slice = measure(run, dataset, "train", args.train_limit, sources)
    check = measure(run, dataset, "test", args.check_images, sources)
    extra = []
    for spec in args.extra:
        name, split, *limit = spec.split(":")
        extra.append(measure(run, name, split, int(limit[0]) if limit else 0, sources))
    size = sum((target / name).stat().st_size for name in pretrained.SHIPPED_FILES)
    model = argv[1] if len(argv) > 1 and argv[0] == "train" else type(run.config.model).family
    entry = {
        "model": model,
        "dataset": dataset,
        "description": args.description,
        "argv": argv,
        "commit": commit,
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "machine": machine,
        "sha256": file_sha256(target / "model.safetensors"),
        "size_bytes": size,
        "test": dataclasses.asdict(test),
        "train": dataclasses.asdict(train_slice),
        "check": dataclasses.asdict(check),
        "extra": [dataclasses.asdict(m) for m in extra],
    }
    manifest: dict[str, Any] = {"format": 1, "runs": {}}
    if pretrained.MANIFEST_FILE.is_file():
        manifest = json.loads(pretrained.MANIFEST_FILE.read_text())
    manifest["runs"][args.name] = entry
    rank = {name: i for i, name in enumerate(ORDER)}
    manifest["runs"] = dict(
        sorted(manifest["runs"].items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0]))
    )
    pretrained.MANIFEST_FILE.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({"name": args.name, **entry}, indent=2))


if __name__ == "__main__":
    main()
