"""Starting worker processes: the fork window (a Ctrl-C that reaches a worker before its
initializer ran) and compiling in a forked worker."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import runtime
from test_signals import _left

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.xdist_group("serial")  # signals and forks of jobs: see conftest.py
needs_fork = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork and signal masks")


# Each worker is a multiprocessing "fork" Process, as a pool's or a DataLoader's, whose stop
# signal comes before its initializer: the worker sends it to itself, so no race decides it.
_WINDOW = r'''
import json, multiprocessing as mp, os, signal, sys, threading
sys.path.insert(0, {root!r})
import runtime

got = []

def handler(signum, frame):  # this process's handler; a child inherits it until worker_init
    got.append(signal.Signals(signum).name)
    if os.getpid() != parent:
        raise KeyboardInterrupt  # as a job's handler (cli.run_main) raises, in a worker it would

parent = os.getpid()
signal.signal(signal.SIGINT, handler)
signal.signal(signal.SIGTERM, handler)
STOP = {{signal.SIGINT, signal.SIGTERM}}

def worker(init):
    os.kill(os.getpid(), signal.SIGINT)  # the Ctrl-C to the whole group reaches it before its initializer
    for _ in range(1000):  # room for a Python handler to run
        pass
    if init:
        runtime.worker_init()
    os._exit(3 if signal.pthread_sigmask(signal.SIG_BLOCK, []) & STOP else 0)  # 3: left blocked

ctx = mp.get_context("fork")
go, late = threading.Event(), []

def replacement():  # a pool's worker handler thread, started with the pool, forks a new worker later
    go.wait()
    p = ctx.Process(target=worker, args=(True,))
    p.start()
    p.join()
    late.append(p.exitcode)

with runtime.stop_signals_blocked():
    os.kill(os.getpid(), signal.SIGINT)  # this process's copy of the Ctrl-C, and a SIGTERM
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # room for a handler to run (it must not)
        pass
    held = not got
    first = ctx.Process(target=worker, args=(True,))  # calls worker_init
    first.start()
    bare = ctx.Process(target=worker, args=(False,))  # never calls worker_init
    bare.start()
    thread = threading.Thread(target=replacement)  # its signals are blocked from the start
    thread.start()
for _ in range(1000):
    pass
go.set()
thread.join()
first.join()
bare.join()
after = signal.pthread_sigmask(signal.SIG_BLOCK, [])
print(json.dumps(dict(held=held, got=sorted(got), first=first.exitcode, bare=bare.exitcode, late=late[0],
                      parent_blocked=sorted(int(s) for s in after & STOP))))
'''


@needs_fork
def test_a_stop_signal_in_the_fork_window_prints_no_traceback_and_still_stops_the_job():
    """Inside runtime.stop_signals_blocked: a Ctrl-C that reaches a freshly forked worker before
    its initializer is held back and then dropped (worker_init), so the worker prints nothing
    and ends cleanly, with its stop signals unblocked; so does a worker that never calls
    worker_init, and one forked later by a thread started in the block (a pool's replacement
    worker). The parent's own Ctrl-C / SIGTERM are held during the block and delivered when
    it ends, so the job still stops."""
    r = subprocess.run([PY, "-c", _WINDOW.format(root=str(ROOT))], capture_output=True, text=True, env=ENV,
                       timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr, r.stderr
    out = json.loads(r.stdout)
    assert out["held"], out  # no handler ran inside the block
    assert out["got"] == ["SIGINT", "SIGTERM"], out  # both ran right after it
    assert (out["first"], out["bare"], out["late"]) == (0, 0, 0), out  # 3 = left blocked, 1 = a traceback
    assert out["parent_blocked"] == [], out




class _WorkerSignals(torch.utils.data.IterableDataset):
    """One item: what its DataLoader worker starts with (the SIGINT handler, the stop signals
    blocked)."""

    def __iter__(self):
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM}
        yield str(signal.getsignal(signal.SIGINT)), sorted(int(s) for s in blocked)


@needs_fork
def test_dataloader_workers_forked_by_iter_started_start_with_the_workers_handlers():
    """runtime.iter_started (extract_features.py, fvd.py, train_i3d.py) forks a DataLoader's
    workers inside stop_signals_blocked: a worker starts with Ctrl-C ignored and nothing left
    blocked, before any code of its own (here no worker_init_fn at all); a plain iteration's
    worker starts with this process's handler, which a Ctrl-C would run there."""
    loader = torch.utils.data.DataLoader(_WorkerSignals(), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork")
    assert list(runtime.iter_started(loader)) == [[str(signal.SIG_IGN), []]]
    assert list(loader) == [[str(signal.getsignal(signal.SIGINT)), []]]

@needs_fork
@pytest.mark.slow  # compiles the TV-L1 kernels from an empty cache: about a minute on 2 cores
def test_dense_flow_workers_compile_frame_sizes_the_parent_did_not(tmp_path):
    """dense_flow.py with its default flags (compile on) over videos of two frame sizes, two
    pool workers, an empty inductor cache: the workers, forked after the parent compiled the
    step for its one trial size, compile the sizes of the videos themselves. Without
    runtime.worker_init's compile_threads = 1 each waited forever on a future of inductor's
    compile thread pool, copied from the parent without its threads (reproduced: 0 of 6
    videos after minutes). The timeout turns such a hang into a failure."""
    import cv2
    import numpy as np
    import synthetic_charades

    videos = [synthetic_charades.make_video_file(tmp_path / f"{k}{i}.mp4", 6, h, w, seed=i)
              for k, (h, w) in (("a", (64, 80)), ("b", (48, 64))) for i in range(3)]
    out = tmp_path / "out"
    env = {**ENV, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # nothing compiled yet
    proc = subprocess.Popen([PY, str(ROOT / "dense_flow.py"), *map(str, videos), "-o", str(out), "--resize", "0",
                             "--workers", "2", "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        done = len(list(out.glob("*/.dense_flow.done")))
        pytest.fail(f"dense_flow.py hung: {done} of {len(videos)} videos done after 420 s")
    assert proc.returncode == 0 and "eager" not in err and "Traceback" not in err, err
    for v in videos:  # every video complete, and its flow the videos' motion: 2 px right, 1 px down
        folder = out / v.stem
        assert json.loads((folder / ".dense_flow.done").read_text())["flow_frames"] == 6
        for axis, px in (("x", 2.0), ("y", 1.0)):
            planes = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in sorted(folder.glob(f"*{axis}.jpg"))])
            flow = np.median(planes[:, 8:-8, 8:-8]) * 40 / 255 - 20  # the 8-bit encoding, inverted
            assert abs(flow - px) < 0.25, (v.name, axis, flow)


_CTRL_C_AT_FORK = r'''
import multiprocessing.pool, os, signal, sys
sys.path.insert(0, {root!r})
import cli, dense_flow, tvl1

initializer = tvl1.start_worker

def start_worker(threads):  # in each new worker, before its initializer: the group's Ctrl-C reaches it
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):  # room for a Python handler to run
        pass
    initializer(threads)

forked = multiprocessing.pool.Pool._repopulate_pool

def repopulate(self):  # the pool's workers are forked: the Ctrl-C reaches the job's own process
    out = forked(self)
    os.kill(os.getpid(), signal.SIGINT)
    return out

tvl1.start_worker = start_worker
multiprocessing.pool.Pool._repopulate_pool = repopulate
sys.argv = ["dense_flow.py", *{videos!r}, "-o", {out!r}, "--resize", "0", "--no-compile", "--workers", "2"]
cli.run_main(dense_flow.main)
'''


@needs_fork
@pytest.mark.slow  # a dense_flow.py process (torch import)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc for the process group")
def test_ctrl_c_while_dense_flow_forks_its_pool_stops_it_in_one_line(tmp_path):
    """A Ctrl-C that reaches dense_flow.py's new pool workers before their initializer (each
    sends it to itself: no race) and the job's own process as the pool is forked (--no-compile:
    the compile is not what is tested): the job stops with its one line, counts included, and
    exit 130; no process prints a traceback; the workers are gone; no temporary is left."""
    import synthetic_charades

    videos = [str(synthetic_charades.make_video_file(tmp_path / f"v{i}.mp4", 6, 32, 40, seed=i)) for i in range(3)]
    out = tmp_path / "out"
    proc = subprocess.Popen([PY, "-c", _CTRL_C_AT_FORK.format(root=str(ROOT), videos=videos, out=str(out))], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = proc.communicate(timeout=120)
    left = _left(proc.pid, set())  # what of its process group is still alive (waits up to 5 s)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["dense_flow.py: stopped by Ctrl-C: 0 of 3 videos done; "
                                        "run the same command again to resume"], err
    assert not left, f"processes left: {left}"
    assert not out.exists() or not any(out.iterdir())


def test_stop_pool_returns_when_terminate_hangs():
    """runtime.stop_pool bounds Pool.terminate(), which once never returned (dense_flow.py on a
    full disk, loaded machine): past the bound the workers are killed and the caller goes on.
    In a child process: the hung pool's threads stay behind until that process ends."""
    script = ("import multiprocessing, os, threading, time\n"
              "from runtime import stop_pool\n"
              "pool = multiprocessing.get_context('fork').Pool(2)\n"
              "workers = list(pool._pool)\n"
              "def hung():  # as Pool.terminate's first steps (no more workers started), then the hang\n"
              "    pool._worker_handler._state = 'TERMINATE'\n"
              "    threading.Event().wait()\n"
              "pool.terminate = hung\n"
              "t0 = time.monotonic()\n"
              "stop_pool(pool, timeout_s=0.5)\n"
              "for p in workers:\n"
              "    p.join(5)\n"
              "print('returned', round(time.monotonic() - t0, 1), [p.exitcode for p in workers], flush=True)\n"
              "os._exit(0)\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    words = r.stdout.split(maxsplit=2)
    assert words[0] == "returned" and float(words[1]) < 5, r.stdout
    assert "None" not in words[2], f"workers outlived stop_pool: {r.stdout}"
