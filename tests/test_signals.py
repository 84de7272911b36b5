"""How jobs stop: worker processes end with their job, however the job's main process ended."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PARENT = r'''
import multiprocessing as mp, sys, time
sys.path.insert(0, {root!r})
import runtime

def child(arm):
    if arm:
        runtime.die_with_parent()
    time.sleep(60)

if __name__ == "__main__":
    p = mp.get_context("fork").Process(target=child, args=({arm},))
    p.start()
    print(p.pid, flush=True)
    time.sleep(60)
'''


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


def _child_after_parent_killed(arm: bool) -> bool:
    """Start a parent with one forked child, SIGKILL the parent; is the child alive 3 s later?"""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(root=str(ROOT), arm=arm)],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 3.0
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_ends_when_its_parent_is_killed():
    assert not _child_after_parent_killed(arm=True)
    assert _child_after_parent_killed(arm=False)  # without it the child is orphaned: the test can fail
