#!/usr/bin/env bash
# Every benchmark of docs/RESULTS.md, one JSON object per line on stdout.
#   bash benchmarks/run_all.sh > benchmarks/results.jsonl
# THREADS=1 (default) pins torch to one thread so numbers are comparable on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${THREADS:-1}
bench() { "$PY" -m benchmarks.throughput "$@"; }
bench --model glow --preset cpu --channels 1 --batch-size 64 --steps 5
bench --model cv-glow --preset cpu --channels 1 --batch-size 64 --steps 5
bench --model realnvp --preset cpu --channels 1 --batch-size 64 --steps 3
bench --model pixelcnnpp --preset cpu --channels 1 --batch-size 32 --steps 3
bench --model vae --preset cpu --channels 1 --batch-size 64 --steps 5
bench --model cnn-plain --preset cpu --channels 1 --batch-size 64 --steps 5
# paper-sized models at 3x32x32: a few small steps on a CPU (a GPU run is the real target)
bench --model glow --preset paper --channels 3 --batch-size 8 --steps 2 --warmup 1
bench --model pixelcnnpp --preset paper --channels 3 --batch-size 4 --steps 1 --warmup 1
bench --model vae --preset paper --channels 3 --batch-size 64 --steps 3
"$PY" -m benchmarks.iwae_cost --model vae --preset cpu --ks 1 5 10 50 100
# speed and memory (docs/speed.md); peer_glow needs the bench extra (normflows)
"$PY" -m benchmarks.memory --ks 4 8 16 32 --batch-size 32 --hidden 64 --steps 3
"$PY" -m benchmarks.memory --timing --ks 8 32 --steps 2 --batch-size 32 --hidden 64
"$PY" -m benchmarks.peer_glow --config small --repeats 4
"$PY" -m benchmarks.peer_glow --config paper --repeats 3 --train-steps 1 --score-steps 1 \
  --only ours_fp32 ours_bf16_channels_last
"$PY" -m benchmarks.bf16_check --steps 300
