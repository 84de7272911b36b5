"""Where the work runs: the device (cuda if there is one, else the CPU) and the distributed
environment that torchrun sets, and the lifetime of worker processes (they end with the job
that started them) and their stop signals (held back while they fork). Library code and jobs
alike use these; neither parses flags."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Iterable, Iterator, TypeVar

from errors import UserError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def select_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; a bare number N (the original -gpu N) -> cuda:N;
    otherwise the named device (checked)."""
    import torch  # here, so that cli (and the torch-free tf_checkpoint reader) loads without torch

    if name.isdigit():
        name = f"cuda:{name}"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"unknown device {name!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def dist_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) from the environment (torchrun's), checked: integers,
    WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0. Absent: (0, 1, 0)."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(name, "").strip()
        try:
            values[name] = int(text) if text else default
        except ValueError:
            raise UserError(f"environment variable {name}={text!r} is not an integer") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1:
        raise UserError(f"environment variable WORLD_SIZE={world}: must be at least 1")
    if not 0 <= rank < world:
        raise UserError(f"environment variables RANK={rank} WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    if local < 0:
        raise UserError(f"environment variable LOCAL_RANK={local}: must be 0 or more")
    return rank, world, local


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGKILL, poll_s: float = 0.5) -> None:
    """Make this (worker) process end when the process that started it ends, however that
    ended (SIGKILL and the OOM killer included): on Linux the kernel sends `sig` at the
    parent's death (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread checks every `poll_s`
    seconds whether the parent is gone and ends the process. Call it first thing in a worker
    (a pool initializer, a DataLoader worker_init_fn, a torchrun rank's main)."""
    parent = os.getppid()
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent or parent == 1:  # the parent died before the request took hold
        os._exit(128 + int(sig))
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(poll_s)
            os._exit(128 + int(sig))
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_forking = threading.local()  # .depth: this thread is inside stop_signals_blocked()
_rank = False  # this process is a torchrun rank (rank_process): its children leave its process group


def _worker_signals() -> None:
    """A worker's stop signals: Ctrl-C ignored (the parent, which gets it too, stops the workers
    itself; a worker prints no traceback), SIGTERM default (it ends the worker quietly); then
    unblocked. A signal held back meanwhile (stop_signals_blocked) is then dropped (SIGINT) or
    ends the worker (SIGTERM): never a KeyboardInterrupt in a worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _after_fork_in_child() -> None:
    # a child forked inside stop_signals_blocked() is a worker: its handlers are set and its
    # signals unblocked here, before any Python code of its own runs, so that none is left
    # blocked (a worker whose initializer is not worker_init, a replacement worker, ...)
    if _rank:  # a torchrun rank's child
        _leave_rank_group()
    if getattr(_forking, "depth", 0):
        _forking.depth = 0
        _worker_signals()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Start worker processes inside this block. SIGINT and SIGTERM are blocked in this thread
    (the OS holds them back) while it forks, and a forked child keeps them blocked until its
    handlers are set (_worker_signals): a Ctrl-C that reaches a new worker before its
    initializer ran no longer raises KeyboardInterrupt and prints a traceback there. This
    process gets a signal that came meanwhile when the block ends (a Ctrl-C still stops the
    job). A child that execs keeps the mask until it unblocks itself (a spawned worker does, in
    worker_init): start nothing else inside (a compile's g++, a subprocess)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no fork, nothing to block
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    _forking.depth = getattr(_forking, "depth", 0) + 1
    try:
        yield
    finally:
        _forking.depth = max(0, _forking.depth - 1)  # (0 in a child forked inside: _after_fork_in_child)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending stop signal is delivered now


def iter_started(loader: Iterable[T]) -> Iterator[T]:
    """Iterate a DataLoader whose worker processes fork when it is iterated (iter(loader),
    once per epoch), with stop signals blocked while they fork (stop_signals_blocked)."""
    with stop_signals_blocked():
        items = iter(loader)
    yield from items


def worker_init(_worker_id: int | None = None) -> None:
    """A worker_init_fn / pool initializer: end with the parent, compile in-process, and leave
    stop signals to the parent (it stops the workers itself; a worker prints no traceback on
    Ctrl-C), unblocking those held since the fork (stop_signals_blocked)."""
    die_with_parent()
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:  # forked after the parent compiled: torch clears only its process pool at fork,
        # and a compile waiting on its thread pool, copied without threads, hung (tests/test_forks.py)
        inductor.compile_threads = 1
    _worker_signals()


def rank_process() -> None:
    """What a torchrun rank calls first: it ends with torchrun's agent (its parent), however that
    ended (die_with_parent), and the workers it forks leave its process group (_leave_rank_group).
    The agent stops a rank by signalling the rank's whole group (SIGTERM or SIGINT, SIGKILL 30 s
    later); a worker that got that SIGTERM would die under a rank that is finishing its step and
    checkpointing, and fail it ("DataLoader worker ... killed by signal"). The rank stops its
    workers itself, and they end with it (worker_init)."""
    global _rank
    die_with_parent()
    _rank = True


def _leave_rank_group() -> None:
    """In a child of a torchrun rank, before any Python code of its own: out of the rank's
    process group; a stop signal sent to that group while the child forked (held back by
    stop_signals_blocked) was the rank's stop, not the child's: dropped."""
    global _rank
    _rank = False  # a worker, not a rank
    os.setpgid(0, 0)
    if hasattr(signal, "sigpending"):
        for sig in _STOP_SIGNALS & signal.sigpending():
            signal.signal(sig, signal.signal(sig, signal.SIG_IGN))  # ignoring a pending signal discards it


def stop_pool(pool, timeout_s: float = 10.0) -> None:
    """End a multiprocessing pool now (its workers' current jobs are dropped) and wait for it, at
    most `timeout_s`: Pool.terminate() waits on the pool's own queue locks and threads, and once
    never returned (dense_flow.py stopping on a full disk, in the suite on a loaded machine),
    which would hang the job after its work had stopped. Past the bound the workers are killed
    and the job goes on (the stuck pool thread is a daemon: it does not keep the process alive)."""
    t = threading.Thread(target=lambda: (pool.terminate(), pool.join()), name="stop-pool", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        for p in list(getattr(pool, "_pool", None) or []):  # the worker processes
            with contextlib.suppress(Exception):
                p.kill()
                p.join(1.0)
