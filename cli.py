"""What every script shares: logging, device choice, and the rule that bad input ends with one
clear line on stderr and a non-zero exit (never a traceback)."""
from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Callable

from frame_io import FrameError

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


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main(); turn expected failures into one stderr line and an exit status."""
    prog = os.path.basename(sys.argv[0]) or "i3d"
    try:
        code = main()
    except (UserError, FrameError, FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
