"""Keep freed tensor memory in the process instead of handing it back to the OS (glibc).

PyTorch's CPU allocator is plain ``malloc``. With glibc's defaults, a tensor of a few MiB
or more is served by ``mmap`` (or from the top of the heap, which is trimmed on ``free``),
so every forward pass returns its activations to the kernel and page-faults them back in,
zero-filled, on the next batch. On the 2-core CPU machines we measured, that cost more than
the convolutions: scoring-only processes (``dgmood score``, ``evaluate``) ran 1.6-1.9x
faster for Glow, RealNVP and PixelCNN++ once freed memory stayed in the heap
(docs/RESULTS.md, "The malloc lever").

:func:`tune_malloc` stops glibc from serving allocations with ``mmap`` (every block then
comes from the heap, whatever its size; glibc still falls back to ``mmap`` if the heap
cannot grow) and raises its trim threshold to 1 GiB, for the rest of the process. Peak
memory barely changes (the same blocks are reused; +0-10% max RSS measured); memory freed
after a peak is kept (up to 1 GiB at the top of the heap) instead of being returned at
once. The command line calls it for every command; library users opt in. Setting any
``MALLOC_*_`` variable (or ``GLIBC_TUNABLES``) yourself, or ``DGMOOD_MALLOC=default``,
leaves malloc alone. This module imports nothing heavy, so the CLI can call it before torch loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

TRIM_THRESHOLD = 1024 * 1024 * 1024

_USER_SETTINGS = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
)
_applied = False


def tune_malloc(trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Keep freed tensor memory for reuse (glibc only); returns whether it changed anything.

    Does nothing (and returns False) on other C libraries and platforms, when the user set
    glibc's ``MALLOC_*_`` tunables in the environment, or with ``DGMOOD_MALLOC=default``.

    Example::

        from dgmood.nn.allocator import tune_malloc
        tune_malloc()  # once, before the heavy work
    """
    global _applied
    if os.environ.get("DGMOOD_MALLOC", "").lower() == "default":
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    no_mmap = bool(libc.mallopt(M_MMAP_MAX, 0))
    ok = no_mmap and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))
    _applied = ok
    return ok


def is_tuned() -> bool:
    """Whether :func:`tune_malloc` changed malloc's settings in this process."""
    return _applied


def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    gnu_get_libc_version.restype = ctypes.c_char_p
    return libc if gnu_get_libc_version() else None
