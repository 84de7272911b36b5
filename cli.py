"""What every script shares: logging, device choice, and the rule that bad input ends with one
clear line on stderr and a non-zero exit (never a traceback)."""
from __future__ import annotations

import argparse
import ctypes
import logging
import math
import os
import sys
from typing import TYPE_CHECKING, Callable

from atomic_io import DiskFullError, disk_full, is_disk_full
from frame_io import ALLOW_GAPS_ENV, FrameError

if TYPE_CHECKING:
    import torch


class UserError(Exception):
    """Bad input or configuration: reported as one line on stderr, exit status 2."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


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


# ----------------------------------------------------------------------------------------------
# The one place numeric flags and the distributed environment are checked
# ----------------------------------------------------------------------------------------------

MAX_SIZE = 4096  # pixels: the largest --crop / --resize taken (larger is a typo, or an allocation failure)


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of handing it back to the system at once.

    The streaming engine allocates and frees the same large tensors for every chunk. glibc
    serves each block over 32 MiB with its own mmap and unmaps it on free, so every chunk
    page-faults its big tensors in again: about a million faults, 3-4 s of system time for a
    480-frame video at 224x224 (jemalloc or tcmalloc preloaded would avoid it the same way).
    The peak memory stays what the largest chunk needs. A no-op where libc has no mallopt."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 1 << 30)


def _number(kind: type, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
    return value


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        value = _number(int, text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value}: must be {'at least ' + str(low) if high is None else f'from {low} to {high}'}")
        return value
    parse.__name__ = "integer"
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)
size_or_zero = int_at_least(0, MAX_SIZE)  # --resize / --crop where 0 means "keep" / "whole frame"
positive_size = int_at_least(1, MAX_SIZE)


def finite_float(text: str) -> float:
    return _number(float, text)


def positive_float(text: str) -> float:
    value = _number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value}: must be above 0")
    return value


def nonneg_float(text: str) -> float:
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be 0 or more")
    return value


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


def add_allow_gaps(parser: argparse.ArgumentParser) -> None:
    """The one definition of --allow-gaps (extract_features.py, train_i3d.py, eval_i3d.py)."""
    parser.add_argument("--allow-gaps", action="store_true",
                        help="a missing frame in numbered frames is skipped with a warning instead of an error "
                             "(Charades folders: the frames before the gap are used)")


def apply_allow_gaps(enabled: bool) -> None:
    """Make --allow-gaps hold in this process and the ones it starts (DataLoader workers)."""
    if enabled:
        os.environ[ALLOW_GAPS_ENV] = "1"
    else:
        os.environ.pop(ALLOW_GAPS_ENV, None)


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main(); turn expected failures into one stderr line and an exit status
    (2: bad input; 3: disk full)."""
    prog = os.path.basename(sys.argv[0]) or "i3d"
    try:
        code = main()
    except DiskFullError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(3)
    except OSError as e:
        if not is_disk_full(e):
            if isinstance(e, FileNotFoundError):
                print(f"{prog}: error: {e}", file=sys.stderr)
                sys.exit(2)
            raise
        print(f"{prog}: error: {disk_full(e.filename or os.getcwd() + '/.')}", file=sys.stderr)
        sys.exit(3)
    except (UserError, FrameError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
