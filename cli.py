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

from errors import DiskFullError, FrameError, UserError
from atomic_io import disk_full, is_disk_full
from frame_io import ALLOW_GAPS_ENV

if TYPE_CHECKING:
    import torch


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")




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




def add_data_args(p: argparse.ArgumentParser, crop_zero_ok: bool = True) -> None:
    """The data flags that training and evaluation share, with the same defaults, so a run is
    evaluated with the very flags it was trained with (training's crop cannot be 0)."""
    p.add_argument("--clip-frames", type=positive_int, default=64,
                   help="frames per training clip; evaluation runs whole videos and pads one shorter than "
                        "this with its last frame, as training does")
    p.add_argument("--crop", type=size_or_zero if crop_zero_ok else positive_size, default=224,
                   help="crop size: random in training, center in evaluation (0 there: the whole frame)")
    p.add_argument("--resize", type=size_or_zero, default=None,
                   help="smaller side of the frames before cropping (0 keeps; default: the original's "
                        "upscale-if-under-226)")


def flag_given(argv: list[str], flag: str) -> bool:
    """Whether a flag is on the command line, in any spelling argparse takes here (-crop, --crop,
    --crop=N, -load_model for --load-model)."""
    bare = flag.lstrip("-")
    names = {f"-{bare}", f"--{bare}", f"-{bare.replace('-', '_')}", f"--{bare.replace('_', '-')}"}
    return any(a.split("=", 1)[0] in names for a in argv)


def apply_recorded(args: argparse.Namespace, argv: list[str], recorded: dict | None, flags: dict[str, str]) -> None:
    """Flags (dest -> flag) not on the command line take the value a model file recorded of its
    training; one given that differs from the record wins, with a one-line notice."""
    for dest, flag in flags.items():
        if not recorded or dest not in recorded:
            continue
        if not flag_given(argv, flag):
            setattr(args, dest, recorded[dest])
        elif getattr(args, dest) != recorded[dest]:
            logging.getLogger("cli").warning("%s %s given: the model was trained with %s %s", flag,
                                             getattr(args, dest), flag, recorded[dest])


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
