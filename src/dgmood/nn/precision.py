"""Reduced-precision execution: bf16 autocast where the hardware has it, fp32 elsewhere.

Flows keep their exact parts in float32 under autocast (1x1 convs, the element-wise coupling
transforms, log-determinants and prior log-densities); only the conditioner networks, which
hold almost all FLOPs, run in bf16.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")

Precision = Literal["fp32", "bf16", "auto"]


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_native_bf16(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matmuls/convs run natively (AVX512-BF16 or AMX on CPU; sm80+ GPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    flags = cpu_flags()
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    # torch.backends.mkldnn.is_available has no annotations: its value is a plain bool
    return native and bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]


def resolve_precision(precision: Precision, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` where native, else ``fp32``; ``bf16`` without support -> ``fp32``."""
    if precision == "fp32":
        return "fp32"
    return "bf16" if has_native_bf16(device) else "fp32"


@contextlib.contextmanager
def autocast_context(precision: Precision, device: torch.device | str = "cpu") -> Iterator[None]:
    """bf16 autocast on ``device`` when ``precision`` resolves to bf16; a no-op otherwise."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def accelerated(
    fn: Callable[[Tensor], T],
    *,
    precision: Precision = "fp32",
    compile: bool = False,
    device: torch.device | str = "cpu",
) -> Callable[[Tensor], T]:
    """``fn`` (e.g. a model's ``log_prob_terms``) without gradients, optionally under bf16
    autocast (``precision``) and ``torch.compile`` (``compile``: minutes of compilation the
    first time, then faster calls; one compiled graph per input shape).
    """
    target = torch.compile(fn) if compile else fn

    def run(x: Tensor) -> T:
        with torch.no_grad(), autocast_context(precision, device):
            return target(x)

    return run
