"""What every job script shares, and only they import: the shared flags, each defined once
(add_device, add_precision, add_workers, add_threads, add_resize_crop, add_allow_gaps,
add_verbosity), the start of every main (start: logging, -q, --allow-gaps, the device, the
precision that runs and why), the code version recorded in outputs, and run_main's one
exit-code scheme: bad input ends with one clear line on stderr and a non-zero exit, never a
traceback."""
from __future__ import annotations

import argparse
import ctypes
import functools
import logging
import math
import os
import signal
import subprocess
import sys
import warnings
from typing import TYPE_CHECKING, Callable

from errors import DiskFullError, FrameError, Terminated, UserError, stop_exception
from atomic_io import disk_full, is_disk_full
from frame_io import ALLOW_GAPS_ENV
from fast_i3d import PRECISIONS, PrecisionError, resolve_precision
from runtime import dist_env, select_device

if TYPE_CHECKING:
    import torch


# Libraries whose warnings -q hides (their errors still show).
THIRD_PARTY_LOGGERS = ("torch", "torchvision", "h5py", "PIL", "matplotlib", "filelock", "urllib3")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """INFO by default, DEBUG with -v; with -q only warnings of our own and errors, and no
    third-party warnings (torch's "No CUDA runtime is found" and the like)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level)  # also where logging was set up before (main() called twice, tests)
    if quiet:
        warnings.simplefilter("ignore")
        os.environ["PYTHONWARNINGS"] = "ignore"  # DataLoader workers and child processes too
        for name in THIRD_PARTY_LOGGERS:  # e.g. torch.utils.cpp_extension's logger.warning on CUDA_HOME
            logging.getLogger(name).setLevel(logging.ERROR)




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
    add_resize_crop(p, resize_default=None, crop_zero_ok=crop_zero_ok,
                    resize_help="smaller side of the frames before cropping (0 keeps; default: the original's "
                                "upscale-if-under-226)",
                    crop_help="crop size: random in training, center in evaluation (0 there: the whole frame)")


def add_resize_crop(p: argparse.ArgumentParser, resize_default: int | None, crop_default: int | None = 224,
                    crop_zero_ok: bool = True, resize_help: str = "", crop_help: str = "",
                    with_crop: bool = True) -> None:
    """The one definition of --resize / --crop: one spelling (-resize / --resize), one check
    (0 to MAX_SIZE pixels; 0 keeps the frames / takes the whole frame)."""
    p.add_argument("--resize", "-resize", type=size_or_zero, default=resize_default,
                   help=resize_help or "smaller side of the frames in pixels (0 keeps them)")
    if with_crop:  # dense_flow.py resizes and does not crop
        p.add_argument("--crop", "-crop", type=size_or_zero if crop_zero_ok else positive_size, default=crop_default,
                       help=crop_help or "center crop size (0: the whole frame)")


def add_device(p: argparse.ArgumentParser, help_extra: str = "") -> None:
    """The one definition of --device (the original -gpu N means cuda:N)."""
    p.add_argument("--device", "-device", "-gpu", default="auto",
                   help="auto (cuda if there is one, else cpu), cpu, cuda, cuda:1; -gpu N means cuda:N" + help_extra)


def add_precision(p: argparse.ArgumentParser, default: str, why: str, choices: tuple[str, ...] | None = None) -> None:
    """The one definition of --precision. `why` says why this job's default is what it is; the
    precision that runs and the reason are logged first by start() and kept as
    args.precision / args.precision_reason (for the job's JSON output)."""
    p.add_argument("--precision", "-precision", choices=choices or PRECISIONS, default=None,
                   help=f"auto, fp32, bf16 or fp16 (default {default}: {why}); 'auto' is bf16 on a CPU with "
                        f"native bf16 and on CUDA, else fp32")
    p.set_defaults(precision_default=(default, why))


def add_workers(p: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """The one definition of --workers (0: decode in this process / a thread of it)."""
    p.add_argument("--workers", "-workers", type=nonneg_int, default=default, help=help)


def add_threads(p: argparse.ArgumentParser) -> None:
    """The one definition of --threads (torch's threads for the network)."""
    p.add_argument("--threads", "-threads", type=nonneg_int, default=0,
                   help="torch threads for the network (0, the default: OMP_NUM_THREADS if set, else on CPU the "
                        "cores not taken by decode worker processes, at least 1)")


def add_verbosity(p: argparse.ArgumentParser) -> None:
    """-q (warnings and errors only, no progress bar, no third-party warnings) and -v (debug)."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="only warnings and errors: no progress bars, no third-party warnings")
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages")


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


def start(args: argparse.Namespace) -> "torch.device | None":
    """The start every job's main shares: logging (-q / -v), --allow-gaps, the device, and the
    precision that will run, logged as the first line with its reason. Returns the device (None
    for jobs without --device); args.precision becomes the resolved precision."""
    setup_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    if hasattr(args, "allow_gaps"):
        apply_allow_gaps(args.allow_gaps)
    if not hasattr(args, "device"):
        return None
    device = select_device(args.device)
    if hasattr(args, "precision_default"):
        args.precision, args.precision_reason = resolve_precision_flag(args.precision, *args.precision_default,
                                                                       device=device)
        # the job's first log line: which precision runs, and why
        logging.getLogger("__main__").info("precision %s (%s), device %s", args.precision, args.precision_reason,
                                           device)
    return device


def resolve_precision_flag(given: str | None, default: str, why: str, device: "torch.device") -> tuple[str, str]:
    """(precision that runs, why): --precision as given, or the job's default; 'auto' resolved
    for this device (fast_i3d.resolve_precision; an impossible one is a one-line error)."""
    asked = given or default
    try:
        ran = resolve_precision(asked, device)
    except PrecisionError as e:
        raise UserError(str(e)) from None
    reason = f"--precision {asked}" if given else f"default {default}: {why}"
    if asked == "auto":
        reason += f"; auto chose {ran} on {device.type}"
    return ran, reason


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The code's git commit (with '-dirty' for local changes), recorded in every output's
    recipe; 'unknown' outside a git checkout."""
    root = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# The one exit-code scheme of every script (README: Exit status).
EXIT_OK, EXIT_ITEMS_FAILED, EXIT_BAD_INPUT, EXIT_DISK_FULL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as a shell reports them


def _raise_stop(signum, frame) -> None:
    _Progress.stop = signum
    raise stop_exception(signum)  # errors.Terminated for SIGTERM


class _Progress:
    """What a running job has finished, for the line run_main prints when it is stopped."""
    done: int | None = None
    total = 0
    what = "videos done"
    resumes = True
    rerun: str | None = None  # what to do to go on, where it is not "the same command again"
    stop: int | None = None  # the stop signal received

    @classmethod
    def reset(cls) -> None:
        cls.done = cls.stop = cls.rerun = None


def progress(done: int, total: int, what: str = "videos done", resumes: bool = True,
             rerun: str | None = None) -> None:
    """Record what the job has finished so far (`done` of `total` `what`: '3 of 10 videos done')
    and whether a rerun of the same command resumes from there (False: it starts over; `rerun`
    says instead what to run, e.g. training's '--resume'); a stop by SIGTERM or Ctrl-C then says
    it in one line (run_main, report_stop)."""
    _Progress.done, _Progress.total, _Progress.what, _Progress.resumes = done, total, what, resumes
    _Progress.rerun = rerun
    if _Progress.stop is not None:
        # the stop's exception was swallowed: the signal came during an at-fork hook or a __del__,
        # where Python only prints "Exception ignored" (seen when a DataLoader forks its workers)
        raise stop_exception(_Progress.stop)


def stop_message(signame: str) -> str:
    """The one line of a stopped job: what is done and what a rerun does."""
    if _Progress.done is None:  # stopped before the job reported anything (while starting)
        return f"stopped by {signame}"
    rerun = _Progress.rerun or ("run the same command again to resume" if _Progress.resumes else "a rerun starts over")
    return f"stopped by {signame}: {_Progress.done} of {_Progress.total} {_Progress.what}; {rerun}"


def _prog() -> str:
    return os.path.basename(sys.argv[0]) or "i3d"


def report_stop(signum: int) -> None:
    """Print the one line of a job stopped by `signum` (SIGTERM or SIGINT) on stderr: run_main's
    stop, and a job that stops by itself on a signal (training). Under torchrun every rank is
    stopped; rank 0 alone says it."""
    try:
        first = dist_env()[0] == 0
    except UserError:
        first = True
    if first:
        print(f"{_prog()}: {stop_message('SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C')}", file=sys.stderr)


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main(); turn expected failures into one stderr line and an exit status:
    0 done, 1 some items failed (the job returns it), 2 usage or bad input, 3 disk full,
    130 / 143 stopped by SIGINT / SIGTERM: the job's own `finally` blocks have removed its
    temporaries, one line says what is done (progress), and the exit ends the workers
    (multiprocessing terminates its daemonic children; runtime.worker_init makes that quiet)."""
    prog = _prog()
    _Progress.reset()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig, handler in previous.items():  # a job with its own handler (training) keeps it
        if handler in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(sig, _raise_stop)
    unraisable = sys.unraisablehook

    def quiet_stop(u) -> None:  # a stop swallowed in a __del__ / at-fork hook: progress() raises it again
        if not (_Progress.stop is not None and isinstance(u.exc_value, KeyboardInterrupt)):
            unraisable(u)
    sys.unraisablehook = quiet_stop
    try:
        _run(prog, main)
    finally:  # main() is also run in-process (tests): leave no stop pending for the next job
        sys.unraisablehook = unraisable
        _Progress.reset()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(prog: str, main: Callable[[], int | None]) -> None:
    try:
        code = main()
    except DiskFullError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(EXIT_DISK_FULL)
    except OSError as e:
        if not is_disk_full(e):
            if isinstance(e, FileNotFoundError):
                print(f"{prog}: error: {e}", file=sys.stderr)
                sys.exit(EXIT_BAD_INPUT)
            raise
        print(f"{prog}: error: {disk_full(e.filename or os.getcwd() + '/.')}", file=sys.stderr)
        sys.exit(EXIT_DISK_FULL)
    except (UserError, FrameError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt as e:  # Terminated (SIGTERM) too
        terminated = isinstance(e, Terminated)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        report_stop(signal.SIGTERM if terminated else signal.SIGINT)
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    sys.exit(code or 0)
