"""The one checked write path of the project: every byte written or an error, atomic renames,
locks, and the clean-up of a killed run's temporaries.

- write_bytes_checked / append_bytes_checked: a short write or ENOSPC raises DiskFullError,
  whose message names the path and the free space (cli.run_main prints it as one line);
- atomic_write / atomic_write_bytes / atomic_dir / save_npy: a temporary name in the same
  folder (`.NAME.PID-XXXXXXXX.tmp`), fsync, rename: a kill never leaves a half-written output,
  and the rename is the output's "done" marker;
- clean_stale_temps: removes only temporaries of this name whose process is dead;
- file_lock: an exclusive lock on a file or folder, for two processes on one output (flock where
  the OS has it, else the filelock package: msvcrt on Windows).
"""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from filelock import FileLock, Timeout

try:  # absent on Windows: file_lock then goes through filelock (msvcrt)
    import fcntl
except ImportError:
    fcntl = None

from errors import DiskFullError

log = logging.getLogger(__name__)


def _free_space(path: Path) -> str:
    for p in (path, *path.parents):
        try:
            free = shutil.disk_usage(p).free
            break
        except OSError:
            continue
    else:
        return "free space unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free} bytes free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return ""


def disk_full(path: str | Path) -> DiskFullError:
    """The one error for a write that did not fit: '<path>: disk full (12.0 KiB free)'."""
    return DiskFullError(f"{path}: disk full ({_free_space(Path(path).parent)})")


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _write_all(fd: int, data, path: Path) -> None:
    view = memoryview(data).cast("B")
    while view:
        try:
            n = os.write(fd, view)
        except OSError as e:
            if is_disk_full(e):
                raise disk_full(path) from None
            raise
        if n <= 0:  # a short write that made no progress: the device is full
            raise disk_full(path)
        view = view[n:]


def write_bytes_checked(path: str | Path, data, fsync: bool = False) -> None:
    """Write `data` (bytes-like) to `path`: every byte written or an error (a short write or
    ENOSPC is DiskFullError naming the path and the free space). The one low-level write path
    of the project; atomic_write_bytes adds the temporary name and the rename."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(path) from None
        raise
    try:
        try:
            _write_all(fd, data, path)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as e:
        path.unlink(missing_ok=True)  # no partial file is left behind
        if is_disk_full(e):
            raise disk_full(path) from None
        raise


def append_bytes_checked(path: str | Path, data) -> None:
    """Append to `path` (a log): all of `data` or nothing (cut back on failure)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data, path)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Temporaries are named .NAME.PID-XXXXXXXX.tmp[...]: the process id tells a live writer's
# temporary (left alone) from a killed one's (removed by clean_stale_temps).
def _tmp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder: str | Path, name: str | None = None) -> int:
    """Remove temporaries of killed writers in `folder`: those of output `name` only (anchored:
    'clip' never matches 'clip.v2'), or of any output with name=None; a temporary whose process
    is alive is never touched. Also the pid-less names of older versions. Returns the count."""
    folder = Path(folder)
    if name is not None:  # also the pid-less temporaries of older versions, of this output only
        pattern = re.compile(rf"^\.{re.escape(name)}\.(?:(\d+)-)?[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?$")
    else:
        pattern = re.compile(r"^\..+\.(\d+)-[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or (m[1] is not None and _pid_alive(int(m[1]))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        log.info("removed %s, left by a killed run", entry.path)
        removed += 1
    return removed


LOCK_NAME = ".lock"  # without flock, a folder is locked through this file inside it


@contextlib.contextmanager
def file_lock(path: str | Path, blocking: bool = True) -> Iterator[None]:
    """An exclusive lock on `path` for the block: a file (created if needed) or a folder.
    Where the OS has flock (Linux, macOS) it is taken on the file or the folder itself (no lock
    file left behind); elsewhere (Windows: msvcrt) through the filelock package, a folder through
    its LOCK_NAME file. Either dies with its process. Non-blocking and held elsewhere:
    BlockingIOError."""
    path = Path(path)
    if fcntl is None:
        with _portable_lock(path / LOCK_NAME if path.is_dir() else path, blocking):
            yield
        return
    if path.is_dir():  # a folder locks itself
        fd = os.open(path, os.O_RDONLY)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _portable_lock(target: Path, blocking: bool) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target), timeout=-1 if blocking else 0, mode=0o666 & ~_umask())
    try:
        lock.acquire()
    except Timeout:
        raise BlockingIOError(errno.EAGAIN, f"{target}: locked by another process") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on any error
    removed, so a kill or crash never leaves a half-written file under the final name. A full
    disk inside the block becomes DiskFullError."""
    path = Path(path)
    for attempt in range(3):  # a concurrent run may remove an emptied folder between the two calls
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name),
                                       suffix=suffix if suffix is not None else ".tmp" + path.suffix, dir=path.parent)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
        except OSError as e:
            if is_disk_full(e):
                raise disk_full(path) from None
            raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except (OSError, DiskFullError) as e:  # named by the output, not its temporary
            if isinstance(e, DiskFullError) or is_disk_full(e):
                raise disk_full(path) from None
            raise
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data) -> None:
    """`data` to `path` atomically and durably (checked writes, fsync, then the rename)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        write_bytes_checked(tmp, data, fsync=True)


def temp_dir_for(path: str | Path) -> Path:
    """A new temporary folder next to `path`, named for it and this process (clean_stale_temps
    removes it once this process is gone), with the mode the user's umask gives new folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; renamed into place, it gets the user's usual mode
    return tmp


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to `path`, renamed to `path` on success (replacing an
    unfinished one) and removed on error."""
    path = Path(path)
    tmp = temp_dir_for(path)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def npy_bytes(array: np.ndarray) -> memoryview:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getbuffer()


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """np.save, atomically, through the checked write path."""
    atomic_write_bytes(path, npy_bytes(array))


def npy_complete(path: str | Path) -> bool:
    """Whether `path` is a whole .npy file (header readable, size = header + data)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            return os.fstat(f.fileno()).st_size == f.tell() + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError):
        return False
