"""Files that are either complete or absent: atomic writes, and Ctrl-C held while writing.

Every file dgmood writes (configs, checkpoints, score caches, dataset files, reports) goes
through :func:`atomic_path`: the content is written to a temporary file in the target's
folder, given ordinary permissions (``mkstemp`` makes it 0600), flushed to the disk
(``fsync``) and renamed over the target, and the rename itself is flushed (``fsync`` of the
folder); so a crash, or a power cut once the call has returned, leaves either the old file
or the new one, never a half-written or empty one.

And what a long job says while it runs: :class:`Progress` draws a bar when the output is a
terminal and writes a few plain lines otherwise (a log file, CI), so no step of more than a
few seconds is silent and no log fills up with bars.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

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
        _fsync(tmp_path)  # the content is on the disk before the name points at it
        os.replace(tmp_path, target)
        _fsync(target.parent)  # and the new name is too
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# --- progress -------------------------------------------------------------------------------

_PROGRESS = contextvars.ContextVar("dgmood_progress", default=True)
T = TypeVar("T")


@contextlib.contextmanager
def progress_enabled(enabled: bool) -> Iterator[None]:
    """Show (or hide, ``--no-progress``) the progress of every step run inside the block."""
    token = _PROGRESS.set(enabled)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Progress:
    """The progress of one step of ``total`` units (images, batches, runs).

    On a terminal, a bar that disappears when the step ends. Otherwise a plain line once the
    step has run :attr:`FIRST_LINE_AFTER` seconds, then every :attr:`LINE_EVERY` seconds,
    and a last one when it ends; a quick step writes nothing. ``enabled=None`` follows
    :func:`progress_enabled` (on by default).
    """

    FIRST_LINE_AFTER = 2.0  # seconds
    LINE_EVERY = 30.0  # seconds

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        enabled: bool | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = _PROGRESS.get() if enabled is None else enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self.next_line = self.started + self.FIRST_LINE_AFTER
        self.lines = 0
        self.bar = None
        if self.enabled and is_terminal(self.stream):
            self.bar = tqdm(
                total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=self.stream
            )

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if not self.enabled:
            return
        now = time.monotonic()
        if now >= self.next_line:
            of = f"/{self.total}" if self.total is not None else ""
            share = f" ({self.done / self.total:.0%})" if self.total else ""
            elapsed = _duration(now - self.started)
            self._line(f"{self.done}{of} {self.unit}{share} after {elapsed}")
            self.next_line = now + self.LINE_EVERY

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines:
            elapsed = _duration(time.monotonic() - self.started)
            self._line(f"done, {self.done} {self.unit} in {elapsed}")

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.desc}: {text}\n")
        self.stream.flush()
        self.lines += 1

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    items: Iterable[T],
    desc: str,
    total: int | None = None,
    unit: str = "it",
    enabled: bool | None = None,
) -> Iterator[T]:
    """``items``, one by one, with their :class:`Progress` (``total`` defaults to ``len``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, enabled) as bar:
        for item in items:
            yield item
            bar.update()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, as ``sha256sum`` prints it (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
