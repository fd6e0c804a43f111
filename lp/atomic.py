"""Writing files and directories so that readers never see them half written.

Everything lp writes for users (exports, expanded checkpoints, cached bases,
reports, JSON summaries) goes through here: the data is written under a
temporary name beside its target, then renamed, which is atomic on POSIX.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from lp.errors import LpError


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path``: the old file or the complete new one, never a mix."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


@contextmanager
def atomic_file(path: Path, durable: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write that becomes ``path`` by rename when the block ends
    without an exception (else it is removed). ``durable``: fsync the file and the
    directory, so that the new file also survives a power cut, not only a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the result is an ordinary file
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_dir(dst: Path, replace: bool = False, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``dst``; when the block ends without an
    exception, it becomes ``dst`` by rename, else it is removed.

    An existing ``dst`` is an error unless ``replace`` (swapped out only once the
    new one is complete) or ``keep_existing`` (a cache filled by a concurrent
    builder: the first complete one wins and this one is dropped)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        if dst.exists() and keep_existing:
            return
        publish_dir(tmp, dst, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: once, at import, before any thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def publish_dir(tmp: Path, dst: Path, replace: bool) -> None:
    """Move a fully written ``tmp`` to ``dst`` by rename, so ``dst`` is never half
    written; an existing ``dst`` is swapped out only once ``tmp`` is complete."""
    if not dst.exists():
        tmp.rename(dst)
        return
    if not replace:
        raise LpError(f"{dst} exists; pass --force to replace it")
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old)
