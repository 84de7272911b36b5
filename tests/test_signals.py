"""How jobs stop: worker processes end with their job, however the job's main process ended."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("serial")  # timing-sensitive: see conftest.py

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


# ---------------------------------------------------------------------------------------------
# Every long job, stopped as a cluster or a user stops it: SIGTERM to the main process, Ctrl-C
# to the whole process group (as a terminal sends it), SIGKILL of the main process
# ---------------------------------------------------------------------------------------------

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
STOP_LINE = r"{prog}: stopped by {sig}: \d+ of \d+ {what}; {rerun}"
RESUME, START_OVER = "run the same command again to resume", "a rerun starts over"


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, process group)."""
    table = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z":
                table[int(d.name)] = (int(fields[1]), int(fields[2]))
    return table


def _descendants(pid: int) -> set[int]:
    table, found, todo = _processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        kids = {p for p, (pp, _) in table.items() if pp == parent}
        found |= kids
        todo += kids
    return found


def _left(pgid: int, workers: set[int], within: float = 5.0) -> set[int]:
    """The job's processes (its group, the workers seen before the signal) still alive after
    `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        alive = {p for p, (_, g) in _processes().items() if g == pgid} | {p for p in workers if _alive(p)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def stop_job(tmp: Path, cmd: list, ready, sig: int, group: bool = False, timeout: float = 240) -> dict:
    """Start a job in its own process group, wait until ready(pid) holds, send `sig` to the main
    process (or, group=True, to the whole group, as Ctrl-C in a terminal); the exit status, its
    stdout / stderr, the workers seen before the signal, and the processes left after 5 s."""
    out, err = tmp / "job.stdout", tmp / "job.stderr"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen([PY, *map(str, cmd)], cwd=ROOT, env=ENV, stdout=o, stderr=e, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready(proc.pid):
            assert proc.poll() is None, f"the job ended before it was stopped:\n{err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never ready:\n{err.read_text()[-3000:]}"
            time.sleep(0.05)
        workers = _descendants(proc.pid)
        os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        try:
            rc = proc.wait(timeout=60)  # a few seconds on a quiet machine; 2 shared cores here
        except subprocess.TimeoutExpired:
            rc = None
        left = _left(proc.pid, workers)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        proc.wait()
    return dict(rc=rc, out=out.read_text(), err=err.read_text(), workers=workers, left=left)


def assert_stopped(r: dict, sig: int, prog: str, what: str, rerun: str) -> str:
    """Exit 128 + sig, no traceback from any process, no process of the job left, and stderr
    (the jobs run with -q) exactly one line of the stop form; returns that line."""
    assert r["rc"] == 128 + sig, r["err"][-3000:]
    assert "Traceback" not in r["out"] + r["err"], r["err"][-3000:]
    assert not r["left"], f"processes left after the job: {r['left']}"
    lines = r["err"].strip().splitlines()
    pattern = STOP_LINE.format(prog=re.escape(prog), sig="SIGTERM" if sig == signal.SIGTERM else "Ctrl-C",
                               what=what, rerun=re.escape(rerun))
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), r["err"][-3000:]
    return lines[0]


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name or p.name == ".pending"]


def _videos(folder: Path, n: int, t: int, size: int = 48) -> list[Path]:
    paths = []
    for i in range(n):
        path = folder / f"v{i}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (size, size))
        base = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
        for k in range(t):  # a moving pattern: cheap to encode, has flow
            writer.write(np.roll(base, k, axis=1))
        writer.release()
        paths.append(path)
    return paths


def _flow_frames(folder: Path, axis: str) -> list[Path]:
    return sorted(folder.glob(f"*{axis}.jpg"))


def _dense_flow_job(tmp: Path, frames: int) -> tuple[list, Path, Callable]:
    """dense_flow.py on 5 small videos with 2 workers; ready once a video is finished and the
    workers are busy with the next ones."""
    out = tmp / "out"
    cmd = [ROOT / "dense_flow.py", *_videos(tmp / "in", 5, frames), "-o", out, "--resize", "0", "--no-compile",
           "--workers", "2", "-q"]
    return cmd, out, lambda pid: any(out.glob("*/.dense_flow.done")) and len(_descendants(pid)) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dense_flow_stops_cleanly(tmp_path, sig):
    frames = 8
    cmd, out, ready = _dense_flow_job(tmp_path, frames)
    r = stop_job(tmp_path, cmd, ready, sig, group=sig == signal.SIGINT)
    assert len(r["workers"]) >= 2
    line = assert_stopped(r, sig, "dense_flow.py", "videos done", RESUME)
    done = sorted(p.parent.name for p in out.glob("*/.dense_flow.done"))
    # a video a worker committed just before the stop is done on disk but not yet counted
    counted = int(line.split(": ")[2].split()[0])
    assert counted <= len(done) <= counted + 2 and 1 <= len(done) < 5
    assert sorted(p.name for p in out.iterdir()) == done  # no temporary folder, no half-written video
    for vid in done:
        for axis in "xy":
            files = _flow_frames(out / vid, axis)
            assert len(files) == frames and all(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) is not None for f in files)


@pytest.mark.slow
def test_dense_flow_workers_end_when_the_job_is_killed(tmp_path):
    # videos long enough that a worker left alone would still be computing 5 s after the kill
    cmd, out, _ = _dense_flow_job(tmp_path, 60)
    r = stop_job(tmp_path, cmd, lambda pid: len(list(out.glob(".v*.tmp"))) >= 2 and len(_descendants(pid)) >= 2,
                 signal.SIGKILL)
    assert r["rc"] == -signal.SIGKILL and len(r["workers"]) >= 2
    assert not r["left"], f"workers left after the job was killed: {r['left']}"


def _extract_job(tmp: Path, random_i3d_file, frames: int = 16) -> tuple[list, Path, Callable]:
    """extract_features.py -mode both --input on 3 small videos (TV-L1 in a pool of worker
    processes, both networks in the main process); ready once the first video's two streams
    are written and the TV-L1 workers are busy with the next."""
    out = tmp / "feats"
    cmd = [ROOT / "extract_features.py", "-mode", "both", "-load_model", random_i3d_file(), "--flow-model",
           random_i3d_file(in_channels=2), "--input", *_videos(tmp / "in", 3, frames), "-save_dir", out,
           "--resize", "0", "--crop", "48", "--flow-resize", "0", "--workers", "1", "--device", "cpu", "-q"]

    def ready(pid: int) -> bool:
        return (out / "flow" / "v0.npy").is_file() and bool(_descendants(pid))
    return cmd, out, ready


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_extract_features_stops_cleanly(tmp_path, random_i3d_file, sig):
    cmd, out, ready = _extract_job(tmp_path, random_i3d_file, frames=40)
    r = stop_job(tmp_path, cmd, ready, sig, group=sig == signal.SIGINT)
    assert len(r["workers"]) >= 1
    line = assert_stopped(r, sig, "extract_features.py", "videos done", RESUME)
    assert not _temporaries(out)
    rgb, flow = sorted((out / "rgb").glob("*.npy")), sorted((out / "flow").glob("*.npy"))
    both = sorted({p.name for p in rgb} & {p.name for p in flow})
    assert both[:1] == ["v0.npy"] and len(flow) < 3
    assert int(line.split(": ")[2].split()[0]) == len(both)  # a video is done when both streams are
    for f in rgb + flow:  # whole arrays with their sidecars
        assert np.isfinite(np.load(f)).all() and f.with_suffix(".json").is_file()


@pytest.mark.slow
def test_extract_features_flow_worker_ends_when_the_job_is_killed(tmp_path, random_i3d_file):
    cmd, out, ready = _extract_job(tmp_path, random_i3d_file, frames=40)
    r = stop_job(tmp_path, cmd, ready, signal.SIGKILL)
    assert r["rc"] == -signal.SIGKILL and len(r["workers"]) >= 1
    assert not r["left"], f"the TV-L1 worker outlived the job: {r['left']}"


@pytest.mark.slow
def test_predict_stops_cleanly(tmp_path, random_i3d_file):
    cmd = [ROOT / "predict.py", *_videos(tmp_path / "in", 5, 12), "--weights", random_i3d_file(num_classes=400),
           "--resize", "0", "--crop", "48", "--device", "cpu", "-q"]
    r = stop_job(tmp_path, cmd, lambda pid: "Top classes" in (tmp_path / "job.stdout").read_text(), signal.SIGTERM)
    line = assert_stopped(r, signal.SIGTERM, "predict.py", r"inputs classified \(printed above\)", START_OVER)
    printed = r["out"].count("Top classes")
    assert printed - 1 <= int(line.split(": ")[2].split()[0]) <= printed < 5


@pytest.mark.slow
def test_fvd_stops_cleanly(tmp_path, random_i3d_file):
    _videos(tmp_path / "a", 4, 16)
    _videos(tmp_path / "b", 4, 16)
    cmd = [ROOT / "fvd.py", tmp_path / "a", tmp_path / "b", "--weights", random_i3d_file(num_classes=400),
           "--save-stats", tmp_path / "a.npz", tmp_path / "b.npz", "--workers", "1", "--device", "cpu", "-q"]
    r = stop_job(tmp_path, cmd, lambda pid: len(_descendants(pid)) >= 1, signal.SIGTERM)
    assert len(r["workers"]) >= 1
    assert_stopped(r, signal.SIGTERM, "fvd.py", r"videos of [ab] read", START_OVER)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith("job.")) == []


@pytest.mark.slow
def test_eval_stops_cleanly(tmp_path, random_i3d_file):
    sys.path.insert(0, str(ROOT / "tests"))
    import synthetic_ucf101

    lists = synthetic_ucf101.write_dataset(tmp_path / "ucf", per_class=3, num_classes=3, frames=12, size=40,
                                           test_groups=3)
    cmd = [ROOT / "eval_i3d.py", "-root", tmp_path / "ucf" / "videos", "--split", lists, "-load_model",
           random_i3d_file(num_classes=3, seed=1), "--crop", "32", "--device", "cpu", "--predictions", tmp_path / "pred.csv"]
    # not -q: the progress bar shows that videos are being evaluated
    r = stop_job(tmp_path, cmd, lambda pid: re.search(r"evaluating: .* [1-9]\d*/9", (tmp_path / "job.stderr")
                                                      .read_text()) is not None, signal.SIGTERM)
    assert r["rc"] == 143 and "Traceback" not in r["out"] + r["err"] and not r["left"]
    stops = [ln for ln in re.split(r"[\r\n]", r["err"]) if "stopped by" in ln]
    what = r"videos evaluated, nothing written \(scores are written at the end\)"
    assert len(stops) == 1 and re.fullmatch(STOP_LINE.format(prog="eval_i3d.py", sig="SIGTERM", what=what,
                                                             rerun=re.escape(START_OVER)), stops[0]), r["err"]
    assert not (tmp_path / "pred.csv").exists() and not _temporaries(tmp_path)


_SWALLOWED = r'''
import os, signal, sys
sys.path.insert(0, {root!r})
import cli

class Dropped:
    def __del__(self):  # as an at-fork hook: an exception raised in here is only printed, "ignored"
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10000):
            pass

def main():
    cli.progress(0, 3)
    Dropped()
    cli.progress(1, 3)
    return 0

cli.run_main(main)
'''


@pytest.mark.slow
def test_a_stop_swallowed_by_python_still_stops_the_job():
    """A signal that lands in a __del__ or an at-fork hook (a DataLoader forking its workers)
    has its exception swallowed by Python; the job's next progress() stops it, quietly."""
    r = subprocess.run([PY, "-c", _SWALLOWED.format(root=str(ROOT))], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 143, r.stderr
    assert r.stderr == "-c: stopped by SIGTERM: 1 of 3 videos done; run the same command again to resume\n"
