"""dgmood's Glow against normflows' Glow (the installable public PyTorch Glow), as JSON.

    python -m benchmarks.peer_glow --config small --repeats 3
    python -m benchmarks.peer_glow --config paper --repeats 2 --train-steps 1 --score-steps 1

Both models are built at the same architecture (L levels of K steps of actnorm, LU 1x1
conv and affine sigmoid coupling with a conv3x3-actnorm-relu-conv1x1-actnorm-relu-zeroconv3x3
conditioner; normflows with ``net_actnorm=True`` and a per-level learned Gaussian base) and
timed *interleaved* (ours, peer, ours, peer, ...) in one process, so machine load hits both
alike; the JSON holds every repeat, and the ratio ranges are what to quote. Also reported:
FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``), a measured matmul rate
(fp32 and bf16) and the fraction of it each run achieves.

Variants of ours, for training and scoring: ``fp32`` (NCHW; scoring with folded eval
weights), ``fp32_channels_last`` (model and input NHWC), ``bf16`` and
``bf16_channels_last`` (autocast of the conditioners, where the CPU has native bf16) and,
with ``--compile``, scoring through ``torch.compile(log_prob)``. The fraction of the matmul
rate uses the fp32 or bf16 rate as the variant's precision.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.throughput import machine, parse_with_malloc
from dgmood.config import DataConfig
from dgmood.models.flows.multiscale import MultiscaleFlow
from dgmood.models.flows.presets import GlowConfig
from dgmood.models.registry import build_model
from dgmood.nn.precision import Precision, autocast_context, cpu_flags, has_native_bf16

CONFIGS: dict[str, dict[str, int]] = {
    # the two reference points
    "small": {"channels": 1, "n_levels": 3, "n_steps": 8, "hidden": 128, "batch": 64, "score": 256},
    "paper": {"channels": 3, "n_levels": 3, "n_steps": 32, "hidden": 512, "batch": 16, "score": 16},
}


def build_ours(cfg: dict[str, int]) -> MultiscaleFlow:
    config = GlowConfig(
        n_levels=cfg["n_levels"], n_steps=cfg["n_steps"], hidden_channels=cfg["hidden"]
    )
    model = build_model(config, DataConfig(channels=cfg["channels"], image_size=32))
    assert isinstance(model, MultiscaleFlow)
    return model


def build_peer(cfg: dict[str, int]) -> nn.Module:
    """normflows' Glow as in its README/example notebook, unconditional."""
    import normflows as nf

    n_levels, channels = cfg["n_levels"], cfg["channels"]
    q0, merges, flows = [], [], []
    for i in range(n_levels):
        level = [
            nf.flows.GlowBlock(
                channels * 2 ** (n_levels + 1 - i),
                cfg["hidden"],
                split_mode="channel",
                scale=True,
                net_actnorm=True,
            )
            for _ in range(cfg["n_steps"])
        ]
        level.append(nf.flows.Squeeze())
        flows.append(level)
        if i > 0:
            merges.append(nf.flows.Merge())
            side = 32 // 2 ** (n_levels - i)
            shape = (channels * 2 ** (n_levels - i), side, side)
        else:
            side = 32 // 2**n_levels
            shape = (channels * 2 ** (n_levels + 1), side, side)
        q0.append(nf.distributions.GlowBase(shape))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def peer_log_prob(model: nn.Module, x: Tensor) -> Tensor:
    return model.log_prob(x, None)  # type: ignore[operator,no-any-return]


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_rate(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of a square matmul at the current thread count."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _timed(fn: Callable[[], Any], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = CONFIGS[args.config]
    torch.manual_seed(0)
    shape = (cfg["channels"], 32, 32)
    x_train = torch.rand(cfg["batch"], *shape) - 0.5
    x_score = torch.rand(cfg["score"], *shape) - 0.5
    cl = torch.channels_last
    ours, peer = build_ours(cfg), build_peer(cfg)
    with torch.no_grad():  # data-dependent actnorm init of both
        ours.train()
        ours.log_prob(x_train)
        peer_log_prob(peer, x_train)
    ours_cl = copy.deepcopy(ours).to(memory_format=cl)
    bf16 = has_native_bf16()

    def trainer(
        model: nn.Module, log_prob: Callable[[Tensor], Tensor], x: Tensor, precision: Precision
    ) -> Callable[[], None]:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

        def step() -> None:
            with autocast_context(precision):
                loss = -log_prob(x).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    def scorer(
        log_prob: Callable[[Tensor], Tensor], x: Tensor, precision: Precision
    ) -> Callable[[], None]:
        def score() -> None:
            with autocast_context(precision):
                log_prob(x)

        return score

    x_train_cl, x_score_cl = (
        x_train.contiguous(memory_format=cl),
        x_score.contiguous(memory_format=cl),
    )
    train_variants: dict[str, Callable[[], None]] = {
        "peer": trainer(peer, lambda x: peer_log_prob(peer, x), x_train, "fp32"),
        "ours_fp32": trainer(ours, ours.log_prob, x_train, "fp32"),
        "ours_fp32_channels_last": trainer(ours_cl, ours_cl.log_prob, x_train_cl, "fp32"),
    }
    score_variants: dict[str, Callable[[], None]] = {
        "peer": scorer(lambda x: peer_log_prob(peer, x), x_score, "fp32"),
        "ours_fp32": scorer(ours.log_prob, x_score, "fp32"),
        "ours_fp32_channels_last": scorer(ours_cl.log_prob, x_score_cl, "fp32"),
    }
    if bf16:
        train_variants["ours_bf16"] = trainer(ours, ours.log_prob, x_train, "bf16")
        train_variants["ours_bf16_channels_last"] = trainer(
            ours_cl, ours_cl.log_prob, x_train_cl, "bf16"
        )
        score_variants["ours_bf16"] = scorer(ours.log_prob, x_score, "bf16")
        score_variants["ours_bf16_channels_last"] = scorer(ours_cl.log_prob, x_score_cl, "bf16")
    if args.compile:
        compiled = torch.compile(ours.log_prob)
        score_variants["ours_fp32_compiled"] = scorer(compiled, x_score, "fp32")
        if bf16:
            score_variants["ours_bf16_compiled"] = scorer(compiled, x_score, "bf16")

    if args.only:
        keep = {"peer", *args.only}
        train_variants = {k: v for k, v in train_variants.items() if k in keep}
        score_variants = {k: v for k, v in score_variants.items() if k in keep}
    record: dict[str, Any] = {"benchmark": "peer_glow", "config": args.config, **cfg}
    record["parameters"] = {
        "ours": sum(p.numel() for p in ours.parameters()),
        "peer": sum(p.numel() for p in peer.parameters()),
    }
    one = x_train[:1]
    record["flops_per_image"] = {
        "ours_score": count_flops(lambda: ours.log_prob(one)),
        "peer_score": count_flops(lambda: peer_log_prob(peer, one)),
        "ours_train": count_flops(lambda: (-ours.log_prob(one).mean()).backward()),
    }
    measured_rates: dict[str, list[float]] = {"fp32": []}
    if bf16:
        measured_rates["bf16"] = []

    def measure_rates() -> None:
        for name in measured_rates:
            dtype = torch.float32 if name == "fp32" else torch.bfloat16
            measured_rates[name].append(matmul_rate(dtype))

    def set_mode(training: bool) -> None:
        for model in (ours, ours_cl, peer):
            model.train(training)

    # warm-up (one-off allocations, compilation)
    set_mode(True)
    for fn in train_variants.values():
        fn()
    set_mode(False)
    with torch.no_grad():
        for fn in score_variants.values():
            fn()

    seconds: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        measure_rates()  # the machine's load changes: a rate per repeat
        set_mode(True)
        for name, fn in train_variants.items():
            seconds.setdefault(f"train_{name}", []).append(_timed(fn, args.train_steps))
        set_mode(False)
        with torch.no_grad():
            for name, fn in score_variants.items():
                seconds.setdefault(f"score_{name}", []).append(_timed(fn, args.score_steps))

    per_s: dict[str, list[float]] = {
        key: [(cfg["batch"] if key.startswith("train") else cfg["score"]) / t for t in times]
        for key, times in seconds.items()
    }
    record["images_per_s"] = {k: [round(v, 2) for v in vals] for k, vals in per_s.items()}
    record["speedup_vs_peer"] = {
        key: [round(p / o, 3) for p, o in zip(seconds[f"{phase}_peer"], times, strict=True)]
        for key, times in seconds.items()
        for phase in [key.split("_", 1)[0]]
        if not key.endswith("_peer")
    }
    # best throughput over the best rate: both from the least loaded moments
    rates = {name: max(values) for name, values in measured_rates.items()}
    record["matmul_flops_per_s"] = {
        k: [round(v / 1e9, 1) * 1e9 for v in vals] for k, vals in measured_rates.items()
    }
    fraction: dict[str, float] = {}
    for key, values in per_s.items():
        if key.endswith("_peer"):
            continue
        flops = record["flops_per_image"]["ours_train" if key.startswith("train") else "ours_score"]
        rate = rates["bf16" if "bf16" in key else "fp32"]
        fraction[key] = round(max(values) * flops / rate, 3)
    record["fraction_of_matmul_rate"] = fraction
    record["machine"] = {**machine(), "cpu_flags": sorted(cpu_flags() & _INTERESTING_FLAGS)}
    return record


_INTERESTING_FLAGS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--score-steps", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--only", nargs="*", default=[], help="variants of ours to run, e.g. ours_fp32 ours_bf16"
    )
    args = parse_with_malloc(parser)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
