"""How jobs stop: worker processes end with their job, however the job's main process ended."""
from __future__ import annotations

import contextlib
import csv
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
import torch

import procs
import synthetic_charades

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


def _child_after_parent_killed(arm: bool) -> bool:
    """Start a parent with one forked child, SIGKILL the parent; is the child alive 3 s later?"""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(root=str(ROOT), arm=arm)],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 3.0
    while procs.alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = procs.alive(child)
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


def _left(pgid: int, workers: set[int], within: float = 5.0) -> set[int]:
    """The job's processes (its group, the workers seen before the signal) still alive after
    `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        alive = {p for p, pr in procs.table().items() if pr.pgid == pgid} | {p for p in workers if procs.alive(p)}
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
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + timeout
        while not ready(proc.pid):
            assert proc.poll() is None, f"the job ended before it was stopped:\n{err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never ready:\n{err.read_text()[-3000:]}"
            time.sleep(0.05)
        workers = procs.descendants(proc.pid)
        os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        try:
            rc = proc.wait(timeout=60)  # a few seconds on a quiet machine; 2 shared cores here
        except subprocess.TimeoutExpired:
            rc = None
        left = _left(proc.pid, workers)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in procs.descendants(proc.pid) | {p for p in workers if procs.alive(p)}:  # torchrun's ranks: own groups
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
    return cmd, out, lambda pid: any(out.glob("*/.dense_flow.done")) and len(procs.descendants(pid)) >= 2


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
    r = stop_job(tmp_path, cmd, lambda pid: len(list(out.glob(".v*.tmp"))) >= 2 and len(procs.descendants(pid)) >= 2,
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
        return (out / "flow" / "v0.npy").is_file() and bool(procs.descendants(pid))
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


def _h5_contents(path: Path) -> dict:
    """Every dataset of an HDF5 file: name -> (array, attributes)."""
    import h5py

    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, (obj[()], dict(obj.attrs)))
                     if isinstance(obj, h5py.Dataset) else None)
    return found


@pytest.mark.slow
def test_extract_features_h5_stop_leaves_the_file_and_the_rerun_merges(tmp_path, random_i3d_file):
    """A stop skips the HDF5 rebuild (it copies the whole file): features.h5 stays as it was, the
    videos finished wait as their pending .npz, counted done, and the rerun merges them into
    what a clean run writes."""
    videos = _videos(tmp_path / "in", 6, 24)

    def cmd(out: Path, vids: list[Path]) -> list:
        return [ROOT / "extract_features.py", "-load_model", random_i3d_file(), "--input", *vids, "-save_dir", out,
                "--format", "h5", "--resize", "0", "--crop", "32", "--workers", "0", "--device", "cpu", "-q"]

    def run_to_end(out: Path) -> None:
        r = subprocess.run([PY, *map(str, cmd(out, videos))], cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    out, h5 = tmp_path / "feats", tmp_path / "feats" / "features.h5"
    r = subprocess.run([PY, *map(str, cmd(out, videos[:2]))], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and h5.is_file(), r.stderr[-3000:]
    before = h5.read_bytes(), h5.stat().st_mtime_ns
    r = stop_job(tmp_path, cmd(out, videos), lambda pid: any((out / ".pending").glob("*.npz")), signal.SIGTERM)
    line = assert_stopped(r, signal.SIGTERM, "extract_features.py", "rgb videos done", RESUME)
    assert (h5.read_bytes(), h5.stat().st_mtime_ns) == before
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    pending = list((out / ".pending").glob("*.npz"))
    counted = int(line.split(": ")[2].split()[0])  # a video saved in the last instant may not be counted yet
    assert 1 <= len(pending) < 4 and 2 + len(pending) - 1 <= counted <= 2 + len(pending)
    run_to_end(out)
    run_to_end(tmp_path / "clean")
    a, b = _h5_contents(tmp_path / "clean" / "features.h5"), _h5_contents(h5)
    assert sorted(a) == sorted(b) == [f"v{i}" for i in range(6)]
    for key, (array, attrs) in a.items():
        assert np.array_equal(array, b[key][0]) and array.dtype == b[key][0].dtype, key
        assert attrs.keys() == b[key][1].keys() and all(np.array_equal(v, b[key][1][k]) for k, v in attrs.items()), key
    assert not (out / ".pending").exists()


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
    r = stop_job(tmp_path, cmd, lambda pid: len(procs.descendants(pid)) >= 1, signal.SIGTERM)
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


# ---------------------------------------------------------------------------------------------
# torchrun: two ranks on this machine, each with a DataLoader worker, and their agent stopped as
# a cluster stops it (SIGKILL: the OOM killer; SIGTERM: a scheduler or a container runtime that
# signals only PID 1)
# ---------------------------------------------------------------------------------------------

# `-c RUNNER DIR SCRIPT ARGS...`: runs SCRIPT as __main__ in a rank (torchrun --no-python) and
# writes the rank's exit status to DIR/rankR: an agent stopped by a signal reports none.
_RANK_EXIT_RUNNER = """
import os, runpy, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    with open(os.path.join(out, "rank" + os.environ["RANK"]), "w") as f:
        f.write(str(e.code if isinstance(e.code, int) else 0 if e.code is None else 1))
    raise
"""


def _torchrun(tmp: Path, script: str, *args) -> list:
    """torchrun's command line (after python) for 2 ranks of `script`; each rank's stdout and
    stderr go to tmp/ranks (so the agent's own output stays apart), its exit status to tmp."""
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--redirects", "3",
            "--log-dir", tmp / "ranks", "--no-python", PY, "-c", _RANK_EXIT_RUNNER, tmp, ROOT / script, *args]


def _ranks_and_workers(agent: int) -> bool:
    """Both ranks run, and a DataLoader worker under each (in a process group of its own:
    runtime.rank_process)."""
    table = procs.table()
    ranks = {p for p, pr in table.items() if pr.ppid == agent}
    return len(ranks) == 2 and {pr.ppid for pr in table.values()} >= ranks


def _ranks(tmp: Path) -> list[tuple[str, int | None]]:
    """(stderr, exit status) of rank 0 and rank 1."""
    errs = sorted(tmp.glob("ranks/**/stderr.log"), key=lambda f: int(f.parent.name))
    codes = [tmp / f"rank{r}" for r in (0, 1)]
    assert len(errs) == 2, list(tmp.rglob("*"))
    return [(e.read_text(), int(c.read_text()) if c.is_file() else None) for e, c in zip(errs, codes)]


def assert_agent_stopped(r: dict, sig: int) -> None:
    """torchrun's agent is torch's code: SIGKILL ends it at once (-9); on SIGTERM it sends SIGTERM
    to each rank's process group, waits for them (SIGKILL after 30 s), logs that and ends with its
    own SignalException traceback, status 1. Nothing of the job may be left either way."""
    assert len(r["workers"]) >= 4, r["workers"]  # 2 ranks and their DataLoader workers were running
    assert not r["left"], f"processes left after torchrun's agent was stopped: {r['left']}"
    if sig == signal.SIGKILL:
        assert r["rc"] == -signal.SIGKILL
    else:
        assert r["rc"] == 1 and re.search(rf"SignalException: Process \d+ got signal: {sig}\n*$", r["err"]), r["err"]


@pytest.fixture(scope="module")
def tiny_charades(tmp_path_factory) -> tuple[Path, Path]:
    # 16 videos: about 3 batches of 2 per rank and epoch, so a rank's DataLoader worker lives a while
    root = tmp_path_factory.mktemp("charades")
    split = synthetic_charades.write_dataset(root, videos=16, num_classes=4, frames=16, size=48, seed=5, progress=False)
    return root / "rgb", split


def _train_args(data: tuple[Path, Path], out: Path, *extra) -> list:
    return ["-mode", "rgb", "-root", data[0], "--split", data[1], "-save_model", out / "m_", "--init", "none",
            "--num-classes", "4", "--batch-size", "2", "--accum", "1", "--clip-frames", "8", "--crop", "32",
            "--resize", "40", "--lr", "0.05", "--milestones", "3", "--seed", "3", "--save-every", "100",
            "--workers", "1", "--resume", "-q", *extra]


@pytest.mark.slow
def test_torchrun_training_ends_with_its_killed_agent(tmp_path, tiny_charades):
    cmd = _torchrun(tmp_path, "train_i3d.py", *_train_args(tiny_charades, tmp_path, "--max-steps", "200"))
    assert_agent_stopped(stop_job(tmp_path, cmd, _ranks_and_workers, signal.SIGKILL), signal.SIGKILL)


@pytest.mark.slow
def test_torchrun_training_stops_on_sigterm_and_resumes(tmp_path, tiny_charades):
    cmd = _torchrun(tmp_path, "train_i3d.py", *_train_args(tiny_charades, tmp_path, "--max-steps", "200"))
    r = stop_job(tmp_path, cmd, _ranks_and_workers, signal.SIGTERM)
    assert_agent_stopped(r, signal.SIGTERM)
    (err0, rc0), (err1, rc1) = _ranks(tmp_path)
    assert (rc0, rc1) == (0, 0) and err1 == "", err0 + err1  # a stop training caught: saved, exit 0
    line = re.fullmatch(STOP_LINE.format(prog="train_i3d.py", sig="SIGTERM", what="steps checkpointed",
                                         rerun=RESUME).replace(r"\d+ of", r"(\d+) of") + "\n", err0)
    assert line, err0  # one line, from rank 0 alone, no traceback
    step = int(line[1])  # the step the ranks were in, finished and checkpointed
    assert step >= 1 and torch.load(tmp_path / "m_last.ckpt", weights_only=True)["step"] == step
    assert (tmp_path / f"m_{step:06d}.pt").is_file()
    again = subprocess.run([PY, *map(str, _torchrun(tmp_path, "train_i3d.py", *_train_args(
        tiny_charades, tmp_path, "--max-steps", str(step + 1))))], cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert torch.load(tmp_path / "m_last.ckpt", weights_only=True)["step"] == step + 1
    with (tmp_path / "m_log.csv").open() as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, step + 2))


def _fvd_cmd(tmp: Path, random_i3d_file) -> list:
    for s in "ab":
        _videos(tmp / s, 6, 16)
    return _torchrun(tmp, "fvd.py", tmp / "a", tmp / "b", "--weights", random_i3d_file(num_classes=400),
                     "--save-stats", tmp / "a.npz", tmp / "b.npz", "--workers", "1", "--device", "cpu", "-q")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_torchrun_fvd_stops_with_its_agent(tmp_path, random_i3d_file, sig):
    r = stop_job(tmp_path, _fvd_cmd(tmp_path, random_i3d_file), _ranks_and_workers, sig)
    assert_agent_stopped(r, sig)
    assert not list(tmp_path.glob("*.npz")) and not _temporaries(tmp_path)
    if sig == signal.SIGTERM:
        (err0, rc0), (err1, rc1) = _ranks(tmp_path)
        assert (rc0, rc1) == (143, 143) and err1 == "", err0 + err1
        what = r"videos of [ab] read \(rank 0's share of 2\)"
        assert re.fullmatch(STOP_LINE.format(prog="fvd.py", sig="SIGTERM", what=what, rerun=START_OVER) + "\n", err0)


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


_TWICE = r'''
import os, signal, sys
sys.path.insert(0, {root!r})
import cli
from train_state import StopFlag

def main():
    cli.progress(3, 10, "steps checkpointed")
    with StopFlag() as stop:  # as training runs: the first signal asks to stop after this step
        os.kill(os.getpid(), {sig})
        while not stop.set:
            pass
        os.kill(os.getpid(), {sig})  # the second stops at once, as that signal
        for _ in range(10 ** 8):
            pass
    return 0

cli.run_main(main)
'''


@pytest.mark.slow
@pytest.mark.parametrize("sig,rc,name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_second_signal_stops_training_as_that_signal(sig, rc, name):
    r = subprocess.run([PY, "-c", _TWICE.format(root=str(ROOT), sig=int(sig))], capture_output=True, text=True,
                       env=ENV, timeout=120)
    assert r.returncode == rc, r.stderr
    assert r.stderr == f"-c: stopped by {name}: 3 of 10 steps checkpointed; run the same command again to resume\n"
