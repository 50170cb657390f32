"""Derived weights (folded convs, LU products, inverses) cached between evaluation calls.

A cached value is keyed on the identity, storage, in-place version counter, dtype and device
of the parameters it is derived from, so an optimiser step, ``load_state_dict``,
``.to(...)`` or any in-place edit invalidates it; it is only consulted when no gradient is
being recorded, and :func:`clear_eval_caches` (called by ``train()``) drops everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")

_CACHE_ATTR = "_dgmood_eval_cache"


def _key(tensors: Iterable[Tensor]) -> tuple[object, ...]:
    return tuple(
        (id(t), t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors
    )


def eval_cached(
    module: nn.Module, name: str, tensors: Iterable[Tensor], compute: Callable[[], T]
) -> T:
    """``compute()``, reused while ``tensors`` are unchanged and gradients are off.

    ``compute`` always runs outside autocast: derived weights keep their parameters'
    precision (a bf16 LU product would put every 1x1 conv's output off by ~0.4%).
    """
    tensors = list(tensors)
    device_type = tensors[0].device.type if tensors else "cpu"

    def full_precision() -> T:
        with torch.autocast(device_type, enabled=False):
            return compute()

    if torch.is_grad_enabled() or module.training or torch.compiler.is_compiling():
        return full_precision()
    key = _key(tensors)
    cache: dict[str, tuple[tuple[object, ...], object]] = module.__dict__.setdefault(
        _CACHE_ATTR, {}
    )
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]  # type: ignore[return-value]
    value = full_precision()
    cache[name] = (key, value)
    return value


def clear_eval_caches(module: nn.Module) -> None:
    """Drop every cached value under ``module``."""
    for sub in module.modules():
        sub.__dict__.pop(_CACHE_ATTR, None)
