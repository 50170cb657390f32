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

Scoring variants of ours: ``fp32`` (NCHW, folded eval weights), ``fp32_channels_last``,
``bf16`` (autocast on the conditioners where the CPU has native bf16) and, with
``--compile``, ``compiled`` (``torch.compile`` of ``log_prob``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.throughput import machine
from dgmood.config import DataConfig
from dgmood.models.flows.multiscale import MultiscaleFlow
from dgmood.models.flows.presets import GlowConfig
from dgmood.models.registry import build_model
from dgmood.nn.precision import autocast_context, cpu_flags, has_native_bf16

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
    ours, peer = build_ours(cfg), build_peer(cfg)
    with torch.no_grad():  # data-dependent actnorm init of both
        ours.train()
        ours.log_prob(x_train)
        peer_log_prob(peer, x_train)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-5)
    opt_peer = torch.optim.Adam(peer.parameters(), lr=1e-5)

    def train_ours() -> None:
        loss = -ours.log_prob(x_train).mean()
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def train_peer() -> None:
        loss = -peer_log_prob(peer, x_train).mean()
        opt_peer.zero_grad(set_to_none=True)
        loss.backward()
        opt_peer.step()

    score_variants: dict[str, Callable[[], Any]] = {}

    def score_ours() -> None:
        ours.log_prob(x_score)

    x_score_cl = x_score.contiguous(memory_format=torch.channels_last)

    def score_ours_cl() -> None:
        ours.log_prob(x_score_cl)

    def score_ours_bf16() -> None:
        with autocast_context("bf16", x_score.device):
            ours.log_prob(x_score)

    score_variants = {"fp32": score_ours, "fp32_channels_last": score_ours_cl}
    if has_native_bf16():
        score_variants["bf16"] = score_ours_bf16
    if args.compile:
        compiled = torch.compile(ours.log_prob)

        def score_compiled() -> None:
            compiled(x_score)

        score_variants["compiled"] = score_compiled

    def score_peer() -> None:
        peer_log_prob(peer, x_score)

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
    opt_ours.zero_grad(set_to_none=True)
    record["matmul_flops_per_s"] = {"fp32": matmul_rate(torch.float32)}
    if has_native_bf16():
        record["matmul_flops_per_s"]["bf16"] = matmul_rate(torch.bfloat16)

    # warm-up (one-off allocations, compilation)
    ours.train()
    peer.train()
    train_ours()
    train_peer()
    ours.eval()
    peer.eval()
    with torch.no_grad():
        for fn in [*score_variants.values(), score_peer]:
            fn()

    repeats: list[dict[str, float]] = []
    for _ in range(args.repeats):
        times: dict[str, float] = {}
        ours.train()
        peer.train()
        times["train_ours"] = _timed(train_ours, args.train_steps)
        times["train_peer"] = _timed(train_peer, args.train_steps)
        ours.eval()
        peer.eval()
        with torch.no_grad():
            for name, fn in score_variants.items():
                times[f"score_ours_{name}"] = _timed(fn, args.score_steps)
            times["score_peer"] = _timed(score_peer, args.score_steps)
        repeats.append(times)

    def images_per_s(key: str, batch: int) -> list[float]:
        return [batch / r[key] for r in repeats]

    record["images_per_s"] = {
        "train_ours": images_per_s("train_ours", cfg["batch"]),
        "train_peer": images_per_s("train_peer", cfg["batch"]),
        "score_peer": images_per_s("score_peer", cfg["score"]),
        **{
            f"score_ours_{n}": images_per_s(f"score_ours_{n}", cfg["score"]) for n in score_variants
        },
    }
    ratios: dict[str, list[float]] = {
        "train": [r["train_peer"] / r["train_ours"] for r in repeats],
        **{
            f"score_{n}": [r["score_peer"] / r[f"score_ours_{n}"] for r in repeats]
            for n in score_variants
        },
    }
    record["speedup_vs_peer"] = {k: [round(v, 3) for v in vals] for k, vals in ratios.items()}
    fp32_rate = record["matmul_flops_per_s"]["fp32"]
    record["fraction_of_fp32_matmul_rate"] = {
        "train_ours": max(images_per_s("train_ours", cfg["batch"]))
        * record["flops_per_image"]["ours_train"]
        / fp32_rate,
        "score_ours_fp32": max(images_per_s("score_ours_fp32", cfg["score"]))
        * record["flops_per_image"]["ours_score"]
        / fp32_rate,
    }
    if "bf16" in score_variants:
        record["fraction_of_bf16_matmul_rate"] = {
            "score_ours_bf16": max(images_per_s("score_ours_bf16", cfg["score"]))
            * record["flops_per_image"]["ours_score"]
            / record["matmul_flops_per_s"]["bf16"]
        }
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
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
