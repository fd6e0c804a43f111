"""Writing files and directories so that users never lose or see half of one.

Everything lp writes for users (exports, expanded checkpoints, cached bases, reports,
JSON summaries, checkpoints) goes through here, and one set of rules holds for all:

- **Checked before the work** (``check_output``): an output that is, holds or lies
  inside an input is refused (writing it would destroy the input); an existing path of
  the wrong kind is refused; a directory is replaced only when asked and only when it
  is empty or one lp wrote (``owned``); the location must be a writable directory on a
  file system with space left.
- **Written beside, then renamed**: the data goes under a temporary name next to its
  target (``.<name>.tmp-<pid>-...``), then a rename (atomic on POSIX) makes it the
  target; the final name holds the old content or the complete new one, never a mix.
- **OS errors are one line** (``write_error``): disk full, read-only, permission denied
  become an ``LpError`` naming the path and the OS's reason, after the temporary
  sibling is removed.
- **Stale temporaries go**: what a killed earlier attempt left beside a target (its
  writer's process is gone) is removed by the next write there; a directory swapped
  out mid-replace (``.<name>.old-<pid>``) is put back when the target is missing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from lp.core.errors import LpError, first_line

# errors of the place written to, not of lp: said in one line instead of a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOENT, errno.EIO}  # fmt: skip


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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{_writer()}-", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the result is an ordinary file
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        error = write_error(e, path)  # before the temporary goes: a full disk frees up then
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if error is None:
            raise
        raise error from e
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_dir(dst: Path, replace: bool = False, keep_existing: bool = False,
               owned: Callable[[Path], bool] | None = None) -> Iterator[Path]:  # fmt: skip
    """Yield an empty temporary sibling of ``dst``; when the block ends without an
    exception, it becomes ``dst`` by rename, else it is removed.

    An existing ``dst`` is an error unless ``replace`` (swapped out only once the new one
    is complete, and only if it is empty or ``owned(dst)`` still holds then: check it with
    ``check_output`` before the work too) or ``keep_existing`` (a cache filled by a
    concurrent builder: the first complete one wins and this one is dropped)."""
    dst = Path(dst)
    tmp = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(dst)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-{_writer()}-", dir=dst.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private; the result is an ordinary directory
        yield tmp
        if dst.exists() and keep_existing:
            return
        publish_dir(tmp, dst, replace, owned)
    except BaseException as e:
        error = write_error(e, dst)
        if error is None:
            raise
        raise error from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: once, at import, before any thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def publish_dir(tmp: Path, dst: Path, replace: bool, owned: Callable[[Path], bool] | None = None) -> None:
    """Move a fully written ``tmp`` to ``dst`` by rename, so ``dst`` is never half
    written; an existing ``dst`` is swapped out only once ``tmp`` is complete, and only
    when it is empty or ``owned`` (asked again now: the run may have taken hours)."""
    if not dst.exists() and not dst.is_symlink():
        tmp.rename(dst)
        return
    if not replace:
        raise LpError(f"{dst} exists; pass --force to replace it")
    if dst.is_dir() and any(dst.iterdir()) and (owned is None or not owned(dst)):
        raise LpError(f"{dst} now holds files lp did not write; it was not replaced (the new one is dropped)")
    old = dst.with_name(f".{dst.name}.old-{_writer()}")
    dst.rename(old)
    tmp.rename(dst)
    _remove(old)  # best effort: what is left is a stale temporary the next write removes


# -- the cache of things built once ------------------------------------------------------


def cache_root(explicit: str | None = None) -> Path:
    """Where lp keeps what it builds once (converted GGUF bases, the tiny base, generated
    data, the base's own text): ``explicit``, else ``$LP_CACHE``, else ``~/.cache/lp``."""
    return Path(os.path.expanduser(str(explicit or os.environ.get("LP_CACHE", "~/.cache/lp"))))


def cached_rows(cache_dir: str | None, name: str, key: dict, build: Callable[[], list[dict]],
                folder: str = "eval") -> list[dict]:  # fmt: skip
    """Rows of ``<cache>/<folder>/<name>-<hash of key>.jsonl``, built and written atomically
    on first use (generated benchmark and chat sets)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root(cache_dir) / folder / f"{name}-{digest}.jsonl"
    if not path.is_file():
        rows = build()
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# -- what a killed attempt left behind ----------------------------------------------------


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _writer() -> str:
    """Who writes a temporary, in its name: this machine (a hash of its name) and process,
    so that only this machine's dead writers are reaped (a shared cache or run directory on
    a cluster holds other machines' live ones, whose processes no local check can see)."""
    return f"{_host()}.{os.getpid()}"


_LEFT = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)(-.*)?")


def remove_stale(target: Path, every: bool = False) -> None:
    """Remove what killed writers of this machine left beside ``target``: temporaries
    whose process is gone; a directory swapped out mid-replace is put back where
    ``target`` is missing (it is the last complete version) and removed where a newer one
    is in place. ``every``: whatever they left in ``target``'s directory, for any name.
    Best effort: what cannot be removed (another user's file) stays, and is no error."""
    parent = target.parent
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        m = _LEFT.fullmatch(p.name)
        if not m or (m["name"] != target.name and not every) or m["host"] != _host():
            continue
        if _alive(int(m["pid"])):
            continue
        mine = parent / m["name"]
        try:
            if m["kind"] == "old" and not mine.exists() and not mine.is_symlink():
                p.rename(mine)
            else:
                _remove(p)
        except OSError:
            pass


def _remove(p: Path) -> None:
    """Remove a file, a symbolic link or a directory tree; best effort."""
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# -- checked before the work ---------------------------------------------------------------


def check_output(
    path: Path,
    kind: str,
    what: str,
    inputs: Iterable[Path] = (),
    replace: bool = False,
    owned: Callable[[Path], bool] | None = None,
) -> Path:
    """Refuse, before any work, to write at ``path`` a ``kind``: ``"file"``, ``"dir"`` (a
    directory written whole and put in place by rename) or ``"into"`` (a directory lp writes
    files into), in one line naming it as the user did (``what``: ``DST``, ``--out``) where:

    - it is, contains or lies inside one of ``inputs`` (writing would destroy an input);
    - it exists as the other kind, or as a directory that may not be replaced (a directory
      is replaced only with ``replace``, and then only when it is empty or ``owned(path)``:
      one lp wrote);
    - where it is written (the directory itself for ``"into"``, else the nearest existing
      ancestor) is no directory, is not writable (a read-only file system, permissions), or
      its file system has no space left.

    Returns the path, user-expanded and absolute."""
    path = Path(path).expanduser().absolute()
    real = path.resolve()
    for source in inputs:
        src = Path(source).expanduser().resolve()
        if real == src or src in real.parents or real in src.parents:
            relation = "is" if real == src else "lies inside" if src in real.parents else "contains"
            raise LpError(f"{what} {path} {relation} the input {src}; writing it would destroy the input. "
                          "Choose an output outside the input")  # fmt: skip
    if path.exists() or path.is_symlink():
        _check_existing(path, kind, what, replace, owned)
    if kind == "into" and path.is_dir():
        _check_writable(path, what, path)
    else:
        _check_writable(path, what, _nearest_existing(path.parent))
    return path


def _check_existing(path: Path, kind: str, what: str, replace: bool, owned) -> None:
    if kind == "file":
        if path.is_dir():
            raise LpError(f"{what} {path} is a directory; give the path of a file to write")
        return  # an existing file is replaced by rename, whole or not at all
    if not path.is_dir():
        raise LpError(f"{what} {path} exists and is not a directory; lp writes a directory there "
                      "and never replaces a file")  # fmt: skip
    if kind == "into":
        return
    if not replace:
        raise LpError(f"{path} exists; pass --force to replace it")
    if any(path.iterdir()) and (owned is None or not owned(path)):
        raise LpError(f"{what} {path} holds files lp did not write; it replaces only a directory it wrote "
                      "or an empty one. Choose another output or move those files")  # fmt: skip


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and not path.is_symlink():
        path = path.parent
    return path


def _check_writable(path: Path, what: str, where: Path) -> None:
    if not where.is_dir():
        raise LpError(f"{what} {path}: {where} is not a directory")
    if not os.access(where, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(where) else "permission denied"
        raise LpError(f"{what} {path}: cannot write in {where} ({reason})")
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    if free == 0:
        raise LpError(f"{what} {path}: no space left on the file system of {where}")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# -- OS errors while writing -------------------------------------------------------------


def write_error(e: BaseException, path: Path) -> LpError | None:
    """``e`` as one line when it is a failure of the place written to (disk full, read-only,
    permissions): naming ``path`` and the OS's reason; an OS error about another path (an
    input read while writing) names that path. None for anything else (a bug keeps its
    traceback). Libraries that write in C report a failed write without an errno
    (torch.save: "file write failed"; safetensors: "StorageFull"): their text says so, and
    the file system's free space tells whether it was full."""
    if isinstance(e, LpError):
        return None
    cause = e.__cause__ or e.__context__  # torch.save's writer fails again while closing, hiding the OSError
    if not (isinstance(e, OSError) and e.errno in WRITE_ERRNOS) and isinstance(cause, OSError):
        return write_error(cause, path) or _library_write_error(e, path)
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        reason = e.strerror or os.strerror(e.errno)
        other = e.filename and not _under(Path(e.filename), Path(path).parent)
        return LpError(f"{e.filename}: {reason}" if other else f"cannot write {path}: {reason}")
    return _library_write_error(e, path)


def _library_write_error(e: BaseException, path: Path) -> LpError | None:
    text = str(e)
    if isinstance(e, (RuntimeError, OSError)) or type(e).__name__ == "SafetensorError":
        if any(t in text for t in ("No space left", "StorageFull", "write failed", "Read-only file system")):
            if "Read-only" in text:
                reason = "Read-only file system"
            elif "No space left" in text or "StorageFull" in text or _full(path):
                reason = "No space left on device"
            else:
                reason = first_line(e)[:120]
            return LpError(f"cannot write {path}: {reason}")
    return None


def _under(p: Path, folder: Path) -> bool:
    try:
        p.absolute().relative_to(folder.absolute())
        return True
    except ValueError:
        return False


def _full(path: Path) -> bool:
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free < 1 << 16
            except OSError:
                return False
    return False
