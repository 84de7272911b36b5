"""The project's error types, on the ground floor: every module may raise them, and the jobs'
command-line layer (cli.run_main) turns each into one line on stderr and an exit status."""
import signal


class UserError(Exception):
    """Bad input or configuration: reported as one line on stderr, exit status 2."""


class FrameError(Exception):
    """A frame or video that cannot be read; the message names the file."""


class DiskFullError(Exception):
    """A write that did not fit: the message names the path and the free space. Stops the whole
    job (every later write would fail too); reported as one line, exit status 3."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` (temporaries, locks) runs; reported
    as one line, exit status 143 (Ctrl-C's KeyboardInterrupt: 130)."""


def stop_exception(signum: int) -> KeyboardInterrupt:
    """The exception a stop signal raises: Terminated for SIGTERM, KeyboardInterrupt for SIGINT."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
