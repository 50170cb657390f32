"""Files that are either complete or absent: atomic writes, and Ctrl-C held while writing.

Every file dgmood writes (configs, checkpoints, score caches, dataset files, reports) goes
through :func:`atomic_path`: the content is written to a temporary file in the target's
folder, given ordinary permissions (``mkstemp`` makes it 0600) and renamed over the target,
so a crash leaves either the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

PART_SUFFIX = ".part"  # temporary files are ".<name>.<random>.part" beside their target


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=PART_SUFFIX)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_mode())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_parts(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files left in ``folder`` by a killed writer; returns what it removed."""
    removed = []
    for part in Path(folder).glob(f".*{PART_SUFFIX}"):
        part.unlink(missing_ok=True)
        removed.append(part)
    return removed


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, so that a group of files is never half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[object] = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt
