"""Crash loops (issue 19): each job is started as its own process group and its main process
killed with SIGKILL at several seeded moments (during start-up, after its first outputs, while its
workers are busy with a video), then run once to the end. The outputs must equal a clean run's,
made in another folder, byte for byte (weights and training state: torch.equal), with no other
file left (hidden files, temporaries and lock files included); every process of a killed job
must be gone within GONE_S of its main process (which needs every worker to call
runtime.worker_init), and at least one kill of each loop must land while a worker process of
the job runs (the group's members are recorded at each kill)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import procs
import synthetic_charades
from test_flow_stream import write_video

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serial"),
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc for the process group")]

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # two cores shared: leave room
SEED = 19
# A worker must end this soon after its job's main process. The kernel's parent-death signal
# ends it at once, so this is slack for a loaded machine; a bound longer than the work a tiny
# video gives a worker would not tell a worker that ends with its job from one that ends only
# when its current video is done (dense_flow's pool workers) or at its next poll (DataLoader's).
GONE_S = 1.5


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Moment:
    """When to kill: once `after` holds ('start': at once; 'work': the run has created anything,
    a temporary included; 'output': the run has written a file that is not a temporary;
    'file:NAME': the run has written NAME, new or replaced; 'worker': the run has a worker
    process), wait a seeded delay of up to `max_s` seconds, or a seeded fraction in `of_clean`
    of the clean run's duration."""
    after: str
    max_s: float = 0.0
    of_clean: tuple[float, float] | None = None


@dataclass
class Loop:
    kills: list[str] = field(default_factory=list)    # what each kill hit, for the messages
    mid_job: int = 0                                  # kills that landed after the run had written something
    worker_kills: int = 0                             # kills that landed while a worker process ran (gone in GONE_S)
    orphans: list[str] = field(default_factory=list)  # processes that outlived a killed job


def tree(root: Path) -> dict[str, str]:
    """Every entry under root, hidden ones included: relative path -> 'dir' or 'file'."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d, name)
            out[p.relative_to(root).as_posix()] = "dir" if name in dirs else "file"
    return out


def _is_temp(rel: str) -> bool:
    return any(".tmp" in part for part in rel.split("/"))


def _stamp(path: Path) -> tuple[int, int] | None:
    """(inode, mtime): changes when the file is replaced (atomic rename) or rewritten."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _wait_group_gone(pgid: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := procs.group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill_once(cmd: list[str], out: Path, moment: Moment, rng: random.Random, clean_s: float, loop: Loop) -> None:
    """Start `cmd` in a new process group, SIGKILL its main process at `moment`, and check that
    the whole group is gone within GONE_S (what is not is recorded in loop.orphans, then killed,
    so that it cannot write into the next run)."""
    before = set(tree(out)) if out.exists() else set()
    watched = out / moment.after[len("file:"):] if moment.after.startswith("file:") else None
    stamp = _stamp(watched) if watched else None
    delay = rng.uniform(*moment.of_clean) * clean_s if moment.of_clean else rng.uniform(0, moment.max_s)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            new = set(tree(out)) - before if out.exists() else set()
            if (moment.after == "start" or (moment.after == "work" and new)
                    or (moment.after == "output" and any(not _is_temp(p) for p in new))
                    or (watched and _stamp(watched) not in (None, stamp))
                    or (moment.after == "worker" and procs.workers(proc.pid))):
                break
            time.sleep(0.02)
        end = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        landed = proc.poll() is None
        workers = procs.workers(proc.pid) if landed else []  # the group's members at the kill
        if landed:
            os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer would
            proc.wait()
        loop.kills.append(f"{moment.after}+{delay:.2f}s: " + (f"killed with {len(workers)} worker(s)" if landed
                                                               else f"had ended ({proc.returncode})"))
        loop.mid_job += landed and (moment.after != "start" or moment.of_clean is not None)
        left = _wait_group_gone(proc.pid, GONE_S)
        if left:
            loop.orphans.append(f"after the kill at {moment.after}+{delay:.2f}s: {', '.join(left)}")
        loop.worker_kills += bool(workers) and not any(procs.alive(w) for w in workers)
    finally:
        if procs.group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            _wait_group_gone(proc.pid, 10.0)


def run_to_end(cmd: list[str]) -> float:
    """One complete run, which must succeed and leave no process behind; its duration in seconds."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)
    try:
        _, err = proc.communicate(timeout=600)
        seconds = time.monotonic() - t0
        assert proc.returncode == 0, err[-3000:]
        assert not _wait_group_gone(proc.pid, GONE_S), "a finished run left processes behind"
    finally:
        if procs.group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    return seconds


def crash_loop(make_cmd, out: Path, moments: list[Moment], clean_s: float, name: str) -> Loop:
    """Kill `make_cmd(out)` at each moment in turn, then run it to the end."""
    rng = random.Random(f"{name}-{SEED}")
    loop = Loop()
    for m in moments:
        kill_once(make_cmd(out), out, m, rng, clean_s, loop)
    run_to_end(make_cmd(out))
    return loop


def assert_same_tree(clean: Path, looped: Path, loop: Loop, same=None) -> None:
    """Equal file trees (names and kinds, hidden entries included) and equal files: byte for byte,
    or by same(a, b) where it answers for a file (None: compare the bytes)."""
    a, b = tree(clean), tree(looped)
    assert b == a, f"files differ from the clean run's: extra {sorted(set(b) - set(a))}, missing " \
                   f"{sorted(set(a) - set(b))}; kills: {loop.kills}"
    for rel, kind in a.items():
        if kind != "file":
            continue
        verdict = same(clean / rel, looped / rel) if same else None
        if verdict is None:
            verdict = (clean / rel).read_bytes() == (looped / rel).read_bytes()
        assert verdict, f"{rel} differs from the clean run's; kills: {loop.kills}"


def assert_interrupted_and_no_orphans(loop: Loop) -> None:
    assert loop.mid_job, f"no kill landed while the job was writing (it ended first): {loop.kills}"
    assert loop.worker_kills, f"no kill landed while a worker process ran: {loop.kills}"
    assert not loop.orphans, f"processes outlived their killed job: {loop.orphans}"


def _ended_with_clean_run(clean: Path, looped: Path, loop: Loop, same=None) -> None:
    assert_same_tree(clean, looped, loop, same)
    assert_interrupted_and_no_orphans(loop)


# ----------------------------------------------------------------------------------------------
# Inputs, shared by the jobs: tiny moving-texture videos, calibrated random weights
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("crash_videos")
    for i, n in enumerate((12, 10, 14, 11, 9, 13)):  # different lengths: different videos
        write_video(d / f"v{i}.mp4", n, h=32, w=40)
    return d


@pytest.fixture(scope="module")
def wfiles(random_i3d_file) -> dict[str, Path]:
    # test_fvd.py's arguments: one file each per session
    return {"rgb": random_i3d_file(num_classes=157, in_channels=3), "flow": random_i3d_file(num_classes=400, in_channels=2),
            "kinetics": random_i3d_file(num_classes=400, in_channels=3)}


def clean_reference(tmp_path_factory, make_cmd, name: str) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp(f"clean_{name}") / "out"
    return out, run_to_end(make_cmd(out))


# After the first outputs and while a worker is busy with a video come last, so that the kills
# leave work for the last run on a fast machine too.
EVENT_MOMENTS = [Moment("start", 2.5), Moment("output", 0.2), Moment("work", 0.2)]


# ----------------------------------------------------------------------------------------------
# dense_flow.py: several videos, two pool workers
# ----------------------------------------------------------------------------------------------

def test_dense_flow_crash_loop(tmp_path_factory, tmp_path):
    videos = tmp_path_factory.mktemp("crash_flow_videos")
    for i, n in enumerate((20, 18, 22)):  # about 2 s of one worker's time each: a kill finds it busy
        write_video(videos / f"v{i}.mp4", n, h=32, w=40)

    def cmd(out: Path) -> list[str]:
        return [PY, str(ROOT / "dense_flow.py"), *map(str, sorted(videos.glob("*.mp4"))), "-o", str(out),
                "--resize", "0", "--no-compile", "--workers", "2", "-q"]  # eager: the kills, not the
    # compile, are tried here (loading the compiled kernels in each of the four runs doubled the
    # test's time); compiled forked workers are tests/test_forks.py's
    clean, clean_s = clean_reference(tmp_path_factory, cmd, "dense_flow")
    looped = tmp_path / "out"
    loop = crash_loop(cmd, looped, EVENT_MOMENTS, clean_s, "dense_flow")
    _ended_with_clean_run(clean, looped, loop)


# ----------------------------------------------------------------------------------------------
# extract_features.py: RGB to .npy; flow straight from the videos (TV-L1 in the DataLoader
# worker) to HDF5
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rgb-npy", "flow-h5"])
def test_extract_features_crash_loop(kind, videos, wfiles, tmp_path_factory, tmp_path):
    def cmd(out: Path) -> list[str]:
        common = ["-save_dir", str(out), "--resize", "0", "--crop", "32", "--workers", "1", "-q"]
        if kind == "rgb-npy":
            return [PY, str(ROOT / "extract_features.py"), "-load_model", str(wfiles["rgb"]), "--input", str(videos),
                    *common]
        four = sorted(map(str, videos.glob("*.mp4")))[:4]  # TV-L1 is most of the time: fewer videos
        return [PY, str(ROOT / "extract_features.py"), "-mode", "flow", "-load_model", str(wfiles["flow"]),
                "--input", *four, "--flow-resize", "0", "--format", "h5", *common]
    clean, clean_s = clean_reference(tmp_path_factory, cmd, kind)
    looped = tmp_path / "out"
    # tiny RGB videos: the DataLoader worker may have decoded them all (and ended) by the first output
    moments = EVENT_MOMENTS if kind == "flow-h5" else [Moment("start", 2.5), Moment("worker", 0.05),
                                                        Moment("output", 0.2)]
    loop = crash_loop(cmd, looped, moments, clean_s, kind)
    _ended_with_clean_run(clean, looped, loop)


# ----------------------------------------------------------------------------------------------
# fvd.py --save-stats: nothing is written before the end, so the kills fall at seeded fractions
# of the clean run's duration
# ----------------------------------------------------------------------------------------------

def test_fvd_save_stats_crash_loop(videos, wfiles, tmp_path_factory, tmp_path):
    def cmd(out: Path) -> list[str]:
        return [PY, str(ROOT / "fvd.py"), str(videos), "--weights", str(wfiles["kinetics"]), "--frames", "9",
                "--save-stats", str(out / "stats.npz"), "--workers", "1", "-q"]
    clean, clean_s = clean_reference(tmp_path_factory, cmd, "fvd")
    looped = tmp_path / "out"
    moments = [Moment("start", of_clean=(0.2, 0.5)), Moment("start", of_clean=(0.4, 0.8)),
               Moment("start", of_clean=(0.3, 0.7))]
    rng = random.Random(f"fvd-{SEED}")
    loop = Loop()
    for m in moments:
        kill_once(cmd(looped), looped, m, rng, clean_s, loop)
    # A kill inside the statistics' write (a window of milliseconds, which a random moment
    # hardly hits) leaves its temporary: made here by a process killed inside atomic_write.
    subprocess.run([PY, "-c", "import os, signal, sys; from atomic_io import atomic_write\n"
                    "with atomic_write(sys.argv[1], suffix='.tmp.npz') as tmp:\n"
                    "    tmp.write_bytes(b'half'); os.kill(os.getpid(), signal.SIGKILL)",
                    str(looped / "stats.npz")], cwd=ROOT, env=ENV)
    assert any(_is_temp(p) for p in tree(looped))
    run_to_end(cmd(looped))
    _ended_with_clean_run(clean, looped, loop)


# ----------------------------------------------------------------------------------------------
# train_i3d.py --resume: a tiny synthetic Charades, a checkpoint every step
# ----------------------------------------------------------------------------------------------

def _equal(a, b) -> bool:
    """Training state equality: tensors by torch.equal, containers item by item."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _same_checkpoint(a: Path, b: Path) -> bool | None:
    if a.suffix not in (".pt", ".ckpt"):
        return None  # the log and the lock file: byte for byte
    return _equal(torch.load(a, weights_only=True), torch.load(b, weights_only=True))


def test_train_resume_crash_loop(tmp_path_factory, tmp_path):
    data = tmp_path_factory.mktemp("crash_train")
    split = synthetic_charades.write_dataset(data, videos=8, num_classes=4, frames=16, size=48, seed=5,
                                             progress=False)

    def cmd(out: Path) -> list[str]:
        return [PY, str(ROOT / "train_i3d.py"), "-mode", "rgb", "-root", str(data / "rgb"), "--split", str(split),
                "-save_model", str(out / "m_"), "--init", "none", "--num-classes", "4", "--batch-size", "2",
                "--accum", "1", "--clip-frames", "8", "--crop", "32", "--resize", "40", "--lr", "0.05",
                "--milestones", "3", "--seed", "3", "--max-steps", "6", "--save-every", "1", "--workers", "1",
                "--resume", "-q"]
    clean, clean_s = clean_reference(tmp_path_factory, cmd, "train")
    looped = tmp_path / "out"
    # after a checkpoint of this run: the next run resumes from a step past 0
    moments = [Moment("start", 2.5), Moment("file:m_last.ckpt", 0.3), Moment("file:m_last.ckpt", 0.3)]
    loop = crash_loop(cmd, looped, moments, clean_s, "train")
    final = torch.load(looped / "m_000006.pt", weights_only=True)
    assert final.keys() == torch.load(clean / "m_000006.pt", weights_only=True).keys()
    _ended_with_clean_run(clean, looped, loop, _same_checkpoint)
