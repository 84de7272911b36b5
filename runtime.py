"""Where the work runs: the device (cuda if there is one, else the CPU) and the distributed
environment that torchrun sets, and the lifetime of worker processes (they end with the job
that started them). Library code and jobs alike use these; neither parses flags."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from errors import UserError

if TYPE_CHECKING:
    import torch


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


def worker_init(_worker_id: int | None = None) -> None:
    """A worker_init_fn / pool initializer: end with the parent, and leave stop signals to
    the parent (it stops the workers itself; a worker prints no traceback on Ctrl-C)."""
    die_with_parent()
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:  # forked after the parent compiled: torch clears only its process pool at fork,
        inductor.compile_threads = 1  # and a compile waiting on the parent's (threadless here) pool would hang
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


_STOPS = {signal.SIGINT, signal.SIGTERM}
_rank_forks = False  # rank_process registered its fork hooks


def rank_process() -> None:
    """What a torchrun rank calls first: it ends with torchrun's agent (its parent), however that
    ended (die_with_parent), and every process it forks (its DataLoader workers) starts in a
    process group of its own. The agent stops a rank by signalling the rank's whole group
    (SIGTERM or SIGINT, SIGKILL 30 s later); a worker that got that SIGTERM would die under a
    rank that is finishing its step and checkpointing, and fail it ("DataLoader worker ...
    killed by signal"). The rank stops its workers itself, and they end with it (worker_init)."""
    global _rank_forks
    die_with_parent()
    if not _rank_forks and hasattr(os, "register_at_fork"):  # POSIX; once per process
        # stop signals blocked across the fork: one sent to the group before the child has left
        # it stays pending there (the child drops it) and in the rank (handled after the fork)
        os.register_at_fork(before=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS),
                            after_in_parent=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS),
                            after_in_child=_leave_rank_group)
        _rank_forks = True


def _leave_rank_group() -> None:
    os.setpgid(0, 0)
    for sig in _STOPS & signal.sigpending():  # sent to the rank's group: the rank's stop, not this process's
        signal.signal(sig, signal.signal(sig, signal.SIG_IGN))  # ignoring a pending signal discards it
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
