"""Where bf16 scoring error comes from in a trained Glow, and what two remedies buy, as JSON.

    python -m benchmarks.bf16_sources --trained runs/demo-budget --images 1000

Part 1 emulates one bf16 rounding at a time in float32 (round-to-nearest-even through
``.bfloat16().float()``) inside every Glow conditioner (conv3x3 -> relu -> conv1x1 -> relu ->
zero conv3x3, with actnorms folded): the first conv's inputs or weights, its outputs, the
middle conv run in real bf16, the last conv's weights or outputs. Each is compared per image
with float32 scoring on the same dequantization noise: max and mean |delta bits/dim| and the
mean signed delta (a systematic shift shows there).

Part 2 measures two remedies under real bf16 autocast, accuracy and interleaved images/s at
batch 256: ``io_fp32`` runs the first and last conv in float32 (middle in bf16), and
``split_weights`` keeps all convs in bf16 but splits the first and last conv's weights
into a bf16 high part and a bf16 low part (``w - hi``), summed in float32. Neither is used
by dgmood: see docs/RESULTS.md, "bf16 accuracy on a trained model".
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.throughput import machine, parse_with_malloc
from dgmood.data.loading import DataSources
from dgmood.inference import score_images
from dgmood.nn.layers import GlowConditioner
from dgmood.nn.precision import cpu_flags
from dgmood.runs import load_run

Weights = list[tuple[Tensor, Tensor]]


def _bf16(t: Tensor) -> Tensor:
    return t.bfloat16().float()


def _emulated(sources: set[str]) -> Callable[[GlowConditioner, Tensor], Tensor]:
    def forward(self: GlowConditioner, x: Tensor) -> Tensor:
        (w_in, b_in), (w_mid, b_mid), (w_out, b_out) = self._folded()
        if "in_weights" in sources:
            w_in, b_in = _bf16(w_in), _bf16(b_in)
        h = F.conv2d(_bf16(x) if "in_inputs" in sources else x, w_in, b_in, padding=1)
        h = F.relu(_bf16(h) if "in_outputs" in sources else h)
        if "mid_bf16" in sources:
            h = F.conv2d(h.bfloat16(), w_mid.bfloat16(), b_mid.bfloat16()).float()
        else:
            h = F.conv2d(h, w_mid, b_mid)
        h = F.relu(h)
        if "out_weights" in sources:
            w_out, b_out = _bf16(w_out), _bf16(b_out)
        out = F.conv2d(h, w_out, b_out, padding=1)
        return _bf16(out) if "out_outputs" in sources else out

    return forward


def _io_fp32(self: GlowConditioner, x: Tensor) -> Tensor:
    (w_in, b_in), (w_mid, b_mid), (w_out, b_out) = self._folded()
    with torch.autocast("cpu", enabled=False):
        h = F.relu(F.conv2d(x.float(), w_in, b_in, padding=1))
    h = F.relu(F.conv2d(h, w_mid, b_mid))  # under autocast: bf16
    with torch.autocast("cpu", enabled=False):
        return F.conv2d(h.float(), w_out, b_out, padding=1)


def _split(w: Tensor) -> tuple[Tensor, Tensor]:
    high = w.bfloat16()
    return high, (w - high.float()).bfloat16()


def _split_weights(self: GlowConditioner, x: Tensor) -> Tensor:
    (w_in, b_in), (w_mid, b_mid), (w_out, b_out) = self._folded()
    in_high, in_low = _split(w_in)
    out_high, out_low = _split(w_out)
    with torch.autocast("cpu", enabled=False):
        xb = x.bfloat16()
        h = F.conv2d(torch.cat([xb, xb], 1), torch.cat([in_high, in_low], 1), b_in.bfloat16(), 1, 1)
        h = F.relu(F.conv2d(F.relu(h), w_mid.bfloat16(), b_mid.bfloat16()))
        out = F.conv2d(
            h, torch.cat([out_high, out_low]), torch.cat([b_out, 0 * b_out]).bfloat16(), 1, 1
        )
        half = out.shape[1] // 2
        return out[:, :half].float() + out[:, half:].float()


@contextmanager
def _patched(forward: Callable[[GlowConditioner, Tensor], Tensor] | None) -> Iterator[None]:
    original = GlowConditioner.forward
    if forward is not None:
        GlowConditioner.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        GlowConditioner.forward = original  # type: ignore[method-assign]


def _delta(bpd: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    d = bpd - reference
    return {
        "max_abs": round(float(np.abs(d).max()), 5),
        "mean_abs": round(float(np.abs(d).mean()), 5),
        "mean_signed": round(float(d.mean()), 5),
        "fraction_over_0_01": round(float((np.abs(d) > 0.01).mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trained", required=True, help="a finished Glow run directory")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_with_malloc(parser)
    torch.set_num_threads(1)
    run = load_run(args.trained)
    model = run.model.eval()
    emulated = {
        "in_weights": {"in_weights"},
        "out_weights": {"out_weights"},
        "in_inputs": {"in_inputs"},
        "out_outputs": {"out_outputs"},
        "in_outputs": {"in_outputs"},
        "mid_bf16": {"mid_bf16"},
        "all": {"in_inputs", "in_weights", "in_outputs", "mid_bf16", "out_weights", "out_outputs"},
    }
    remedies: dict[str, Callable[[GlowConditioner, Tensor], Tensor] | None] = {
        "autocast": None,
        "io_fp32": _io_fp32,
        "split_weights": _split_weights,
    }
    record: dict[str, object] = {"benchmark": "bf16_sources", "run": args.trained}
    sources = DataSources()
    for dataset in ("fashion-mnist", "mnist"):
        images = sources.load_like(dataset, "test", run.config.data).images[: args.images]
        reference = score_images(model, images, batch_size=250)["bits_per_dim"]
        result: dict[str, object] = {}
        for name, which in emulated.items():
            with _patched(_emulated(which)):
                bpd = score_images(model, images, batch_size=250)["bits_per_dim"]
            result[f"emulated_{name}"] = _delta(bpd, reference)
        for name, forward in remedies.items():
            with _patched(forward), torch.autocast("cpu", dtype=torch.bfloat16):
                bpd = score_images(model, images, batch_size=250)["bits_per_dim"]
            result[f"bf16_{name}"] = _delta(bpd, reference)
        record[dataset] = result
    data = run.config.data
    x = torch.rand(256, data.channels, data.image_size, data.image_size) - 0.5
    per_s: dict[str, list[float]] = {}
    variants = {"fp32": None, **remedies}
    with torch.no_grad():
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, forward in variants.items():
                with (
                    _patched(forward),
                    torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "fp32"),
                ):
                    start = time.perf_counter()
                    model.log_prob(x)
                    per_s.setdefault(name, []).append(256 / (time.perf_counter() - start))
    record["images_per_s_batch_256"] = {
        k: [round(v) for v in vals[1:]] for k, vals in per_s.items()
    }
    record["machine"] = {
        **machine(),
        "cpu_flags": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"}),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
