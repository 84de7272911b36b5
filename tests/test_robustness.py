"""Nothing lost, nothing silent: full disks (real tmpfs mounts and patched writes), concurrent
writers, kills between two writes, stale temporaries, gaps in numbered frames, nonsense flags
and distributed environments, non-finite weights."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from runtime import dist_env
from errors import DiskFullError, FrameError, UserError
import cli
import dense_flow
import eval_i3d
import extract_features
import feature_store
import atomic_io
import frame_io
import predict
import synthetic_charades
import train_i3d
import train_state
import weights
from pytorch_i3d import InceptionI3d
from charades_dataset import find_videos, read_annotations

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def make_charades(root: Path, vid: str, frames, h: int = 32, w: int = 40, seed: int = 0) -> None:
    (root / vid).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in frames:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        frame_io.write_image(frame_io.charades_frame_path(root, vid, i), img, quality=100)


def write_video(path: Path, t: int = 20, w: int = 112, h: int = 80) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    base = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for i in range(t):
        writer.write(np.roll(base, 2 * i, axis=1))
    writer.release()


@pytest.fixture(scope="module")
def weights_file(random_i3d_file) -> Path:
    return random_i3d_file(num_classes=157)


# ---------------------------------------------------------------------------------------------
# A small real filesystem that fills up: a tmpfs in a user namespace (any user), or mounted
# directly by root where user namespaces are off; skipped, with the reason, where neither works
# ---------------------------------------------------------------------------------------------

# In the namespace: mount, say so, then resize on request (one size per line on stdin).
_HOLDER = ('mount -t tmpfs -o size=1m tmpfs "$0" || exit 1; echo ready; '
           'while read size; do mount -t tmpfs -o remount,size="$size" tmpfs "$0"; echo $?; done')


class SmallDisk:
    """A 1 MiB tmpfs at `path`. Without root it lives in the mount namespace of a holder process
    (`unshare -rm`); every process reaches it through /proc/HOLDER/root/..., so the jobs run
    unchanged and their error lines name that path."""

    def __init__(self, path: Path, holder: subprocess.Popen | None = None):
        self.path, self.holder = path, holder

    def fill(self, leave: int) -> None:
        """A filler file that leaves about `leave` bytes free."""
        filler = self.path / "filler"
        filler.unlink(missing_ok=True)
        free = shutil.disk_usage(self.path).free
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - leave))

    def resize(self, size: str) -> None:
        if self.holder is None:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"remount,size={size}", "tmpfs", str(self.path)], check=True)
        else:
            self.holder.stdin.write(size + "\n")
            self.holder.stdin.flush()
            assert self.holder.stdout.readline().strip() == "0", f"remount to {size} failed"

    def free_up(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)
        self.resize("8m")


def _namespace_disk(mnt: Path) -> SmallDisk | str:
    if shutil.which("unshare") is None:
        return "no unshare command"
    holder = subprocess.Popen(["unshare", "-rm", "sh", "-c", _HOLDER, str(mnt)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if holder.stdout.readline().strip() != "ready":
        holder.wait(timeout=10)
        return f"unshare -rm: {holder.stderr.read().strip() or 'exit status %s' % holder.returncode}"
    return SmallDisk(Path(f"/proc/{holder.pid}/root{mnt}"), holder)


@pytest.fixture()
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    disk = _namespace_disk(mnt)
    if isinstance(disk, SmallDisk):
        try:
            yield disk
        finally:
            disk.holder.stdin.close()  # the holder ends, and its namespace with the mount
            disk.holder.wait(timeout=30)
        return
    if os.geteuid() != 0:
        pytest.skip(f"no user namespace ({disk}) and not root: cannot mount a small tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no user namespace ({disk}) and mounting a tmpfs failed: {r.stderr.strip()}")
    try:
        yield SmallDisk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def run(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(ROOT / script), *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=ROOT)


def assert_disk_full_line(r: subprocess.CompletedProcess, where: Path) -> None:
    assert r.returncode == 3, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Segmentation" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "disk full" in ln]
    assert len(lines) == 1, r.stderr[-2000:]
    assert str(where) in lines[0] and "free)" in lines[0]


# ---------------------------------------------------------------------------------------------
# 1. Full disk
# ---------------------------------------------------------------------------------------------

def test_short_write_and_enospc_raise(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: 0)  # the device takes nothing
    with pytest.raises(DiskFullError, match=r"a\.jpg: disk full \(.* free\)"):
        frame_io.write_image(tmp_path / "a.jpg", np.zeros((8, 8), np.uint8))

    def half_then_enospc(fd, data, calls=[]):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[: len(data) // 2]))
    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(DiskFullError, match="b.npy: disk full"):
        atomic_io.save_npy(tmp_path / "b.npy", np.ones(1000, np.float32))
    assert list(tmp_path.iterdir()) == []  # no partial image, and the atomic .npy left nothing
    monkeypatch.setattr(os, "write", real_write)
    atomic_io.save_npy(tmp_path / "b.npy", np.ones(1000, np.float32))
    assert atomic_io.npy_complete(tmp_path / "b.npy")
    (tmp_path / "c.npy").write_bytes((tmp_path / "b.npy").read_bytes()[:-4])
    assert not atomic_io.npy_complete(tmp_path / "c.npy")  # a short .npy is never taken as done
    assert not feature_store.NpyStore(tmp_path).done("c")


def test_append_is_all_or_nothing(tmp_path, monkeypatch):
    log = tmp_path / "log.csv"
    atomic_io.append_bytes_checked(log, b"step\n1\n")
    real_write, calls = os.write, []

    def three_bytes_then_enospc(fd, data):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[:3]))
    monkeypatch.setattr(os, "write", three_bytes_then_enospc)
    with pytest.raises(DiskFullError):
        atomic_io.append_bytes_checked(log, b"2,0.5,0.25\n")
    assert log.read_bytes() == b"step\n1\n"  # no half row


def test_run_main_disk_full_is_one_line(capsys):
    def main():
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/x.bin")
    with pytest.raises(SystemExit) as e:
        cli.run_main(main)
    assert e.value.code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/somewhere/x.bin: disk full (" in err


@pytest.mark.slow
def test_dense_flow_full_disk(small_disk, tmp_path):
    video = tmp_path / "clip.mp4"
    write_video(video)
    out = small_disk.path / "flow"
    args = [video, "-o", out, "--resize", "0", "--method", "farneback", "--rgb", "--no-compile"]
    small_disk.fill(leave=24 * 1024)
    r = run("dense_flow.py", *args)
    assert_disk_full_line(r, out)
    assert not dense_flow.is_done(out, "clip")  # nothing a rerun takes as finished
    assert [p.name for p in out.iterdir()] == [] if out.exists() else True
    small_disk.free_up()
    r = run("dense_flow.py", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert dense_flow.is_done(out, "clip")
    assert frame_io.count_charades_frames(out, "clip", "flow") == 20
    assert all(p.stat().st_size > 0 for p in (out / "clip").iterdir() if p.suffix == ".jpg")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_extract_features_full_disk(small_disk, tmp_path, weights_file, fmt):
    import h5py

    root = tmp_path / "root"
    for k, vid in enumerate("ABC"):
        make_charades(root, vid, range(1, 18), seed=k)
    out = small_disk.path / "feat"
    args = ["-load_model", weights_file, "-root", root, "-save_dir", out, "--resize", "0", "--crop", "32",
            "--workers", "0", "-q", "--format", fmt]
    # npy: the first video does not fit; h5: the pending files fit, the HDF5 rebuild does not
    small_disk.fill(leave=4 * 1024 if fmt == "npy" else 200 * 1024)
    r = run("extract_features.py", *args)
    assert_disk_full_line(r, out)
    if fmt == "npy":
        assert not [p for p in out.rglob("*") if p.is_file()]
    else:
        assert not (out / "features.h5").exists() and not list(out.glob(".features.h5.*"))
        assert len(list((out / ".pending").glob("*.npz"))) == 3  # kept: the rerun merges them
    small_disk.free_up()
    r = run("extract_features.py", *[a for a in args if a != "-q"])  # -q would hide the INFO line read below
    assert r.returncode == 0, r.stderr[-2000:]
    if fmt == "npy":
        assert sorted(p.name for p in out.glob("*.npy")) == ["A.npy", "B.npy", "C.npy"]
    else:
        assert "0 to extract" in r.stderr  # the pending videos were not recomputed
        with h5py.File(out / "features.h5", "r") as f:
            assert sorted(f) == ["A", "B", "C"] and f["A"].attrs["frames"] == 17


@pytest.mark.slow
def test_train_full_disk(small_disk, tmp_path):
    split = synthetic_charades.write_dataset(tmp_path / "syn", videos=4, num_classes=3, frames=8, size=32, seed=1)
    save = small_disk.path / "run" / "m_"
    args = ["-root", tmp_path / "syn" / "rgb", "--split", split, "-save_model", save, "--init", "none",
            "--num-classes", "3", "--batch-size", "2", "--accum", "1", "--clip-frames", "8", "--crop", "32",
            "--resize", "32", "--max-steps", "1", "--save-every", "1"]
    r = run("train_i3d.py", *args)  # a 50 MB checkpoint on a 1 MB disk
    assert_disk_full_line(r, save.parent)
    assert not list(save.parent.glob("*.pt")) and not list(save.parent.glob("*.ckpt"))
    assert not [p for p in save.parent.iterdir() if ".tmp" in p.name]
    stale = save.parent / f".m_000001.pt.{dead_pid()}-abcdefgh.tmp.pt"  # as a kill -9 leaves it
    stale.write_bytes(b"half a checkpoint")
    small_disk.resize("256m")
    r = run("train_i3d.py", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (save.parent / "m_000001.pt").is_file() and (save.parent / "m_last.ckpt").is_file()
    assert not stale.exists()


# ---------------------------------------------------------------------------------------------
# 2./3. HDF5 store: concurrent writers, kills, stale temporaries
# ---------------------------------------------------------------------------------------------

def test_h5_merge_keeps_files_written_during_it(tmp_path, monkeypatch):
    """A video another run saves while this run merges is not deleted with the merged ones."""
    import h5py

    out = tmp_path / "out"
    a = feature_store.H5Store(out / "features.h5", out / ".pending")
    b = feature_store.H5Store(out / "features.h5", out / ".pending")
    a.save("A", np.ones((2, 3), np.float32), {"fps": 24.0, "stride": 8, "frames": 9, "endpoint": "E", "mode": "rgb"})
    real_copy = shutil.copyfile
    (out / "features.h5").parent.mkdir(exist_ok=True)
    with h5py.File(out / "features.h5", "w"):
        pass

    def copy_then_other_saves(src, dst, *k, **kw):
        b.save("B", np.zeros((1, 3), np.float32), {"stride": 8})  # the other run, mid-merge
        return real_copy(src, dst, *k, **kw)
    monkeypatch.setattr(shutil, "copyfile", copy_then_other_saves)
    a.close()
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    b.close()
    with h5py.File(out / "features.h5", "r") as f:
        assert sorted(f) == ["A", "B"]
        assert dict(f["A"].attrs) == {"fps": 24.0, "stride": 8, "frames": 9, "endpoint": "E", "mode": "rgb"}
    assert not (out / ".pending").exists()


def test_h5_pending_is_one_file_and_stale_copies_go(tmp_path):
    import h5py

    out = tmp_path / "out"
    store = feature_store.H5Store(out / "features.h5", out / ".pending")
    store.save("sub/A", np.ones((2, 3), np.float32), {"fps": 24.0, "mode": "rgb"})
    # array and attrs in one atomically written file: no kill can separate them
    assert [p.relative_to(out / ".pending").as_posix() for p in (out / ".pending").rglob("*") if p.is_file()] == [
        "sub/A.npz"]
    assert store.done("sub/A")
    (out / ".pending" / "L.npy").write_bytes(atomic_io.npy_bytes(np.ones(2, np.float32)))  # older version, killed
    assert not store.done("L")  # an array without its attrs is not done
    stale = [out / ".features.h5.abcdefgh.tmp.h5", out / f".features.h5.{dead_pid()}-abcdefgh.tmp.h5"]
    live = out / f".features.h5.{os.getpid()}-zzzzzzzz.tmp.h5"
    for p in stale + [live]:
        p.write_bytes(b"half an HDF5 file")
    store.close()
    assert not any(p.exists() for p in stale) and live.exists()  # a live process's temporary stays
    with h5py.File(out / "features.h5", "r") as f:
        assert sorted(f.keys()) == ["sub"] and f["sub/A"].attrs["fps"] == 24.0


def test_h5_refuses_a_rebuild_that_does_not_fit(tmp_path, monkeypatch):
    out = tmp_path / "out"
    store = feature_store.H5Store(out / "features.h5", out / ".pending")
    store.save("A", np.ones(10, np.float32), {})
    usage = shutil.disk_usage(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(DiskFullError, match="features.h5: disk full"):
        store.close()
    assert (out / ".pending" / "A.npz").is_file() and not (out / "features.h5").exists()


@pytest.mark.slow
def test_two_extract_processes_into_one_h5(tmp_path, weights_file):
    import h5py

    roots = [tmp_path / "r1", tmp_path / "r2"]
    for r, vids in zip(roots, ("ABCD", "EFGH")):
        for k, vid in enumerate(vids):
            make_charades(r, vid, range(1, 10), h=32, w=32, seed=k)
    out = tmp_path / "out"
    procs = [subprocess.Popen([PY, str(ROOT / "extract_features.py"), "-load_model", str(weights_file), "-root",
                               str(r), "-save_dir", str(out), "--resize", "0", "--crop", "32", "--workers", "0",
                               "-q", "--format", "h5"], env=ENV, stderr=subprocess.PIPE, text=True) for r in roots]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    with h5py.File(out / "features.h5", "r") as f:
        assert sorted(f) == list("ABCDEFGH")
        assert all(f[k].attrs["frames"] == 9 for k in f)
    assert not (out / ".pending").exists() and not list(out.glob(".features.h5.*"))


# ---------------------------------------------------------------------------------------------
# 4. dense_flow: temporaries of other videos, folders without the done marker, two processes
# ---------------------------------------------------------------------------------------------

def test_dense_flow_leaves_other_videos_temporaries(tmp_path):
    src = tmp_path / "in" / "clip.mp4"
    write_video(src, t=4, w=48, h=32)
    out = tmp_path / "out"
    out.mkdir()
    others = [out / f".clip.v2.{os.getpid()}-abcdefgh.tmp", out / ".clip.v2.abcdefgh.tmp"]
    for d in others:
        d.mkdir()
    mine = [out / f".clip.{dead_pid()}-abcdefgh.tmp", out / ".clip.abc.tmp"]  # killed runs of this video
    for d in mine:
        d.mkdir()
    assert dense_flow.extract_video(src, out, method="farneback", resize=0) == 4
    assert all(d.is_dir() for d in others) and not any(d.exists() for d in mine)
    assert dense_flow.is_done(out, "clip")


def test_dense_flow_redoes_folders_without_marker_and_keeps_rgb(tmp_path):
    src = tmp_path / "in" / "clip.mp4"
    write_video(src, t=4, w=48, h=32)
    out = tmp_path / "root"
    make_charades(out, "clip", range(1, 5), h=32, w=48)  # the user's RGB frames in the same root
    rgb_bytes = (out / "clip" / "clip-000001.jpg").read_bytes()
    assert dense_flow.main([str(src), "-o", str(out), "--resize", "0", "--method", "farneback", "--no-compile"]) == 0
    assert (out / "clip" / "clip-000001.jpg").read_bytes() == rgb_bytes  # kept
    assert frame_io.count_charades_frames(out, "clip", "flow") == 4 and dense_flow.is_done(out, "clip")
    # a half-written folder of a killed run (no marker) is done again
    (out / "clip" / dense_flow.DONE_MARKER).unlink()
    (out / "clip" / "clip-000004y.jpg").write_bytes(b"")
    assert dense_flow.main([str(src), "-o", str(out), "--resize", "0", "--method", "farneback", "--no-compile"]) == 0
    assert (out / "clip" / "clip-000004y.jpg").stat().st_size > 0 and dense_flow.is_done(out, "clip")


@pytest.mark.slow
def test_dense_flow_two_processes_same_output(tmp_path):
    srcs = [tmp_path / "in" / f"v{i}.mp4" for i in range(3)]
    for s in srcs:
        write_video(s, t=6, w=48, h=32)
    out = tmp_path / "out"
    cmd = [PY, str(ROOT / "dense_flow.py"), *map(str, srcs), "-o", str(out), "--resize", "0", "--method", "farneback",
           "--no-compile"]
    procs = [subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["v0", "v1", "v2"]
    for i in range(3):
        assert dense_flow.is_done(out, f"v{i}") and frame_io.count_charades_frames(out, f"v{i}", "flow") == 6


# ---------------------------------------------------------------------------------------------
# 5. Gaps in numbered frames
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_gap_in_charades_frames_is_an_error(tmp_path, monkeypatch, weights_file):
    root = tmp_path / "root"
    make_charades(root, "G", [*range(1, 11), *range(12, 21)])
    with pytest.raises(FrameError, match="G-000011.jpg: missing frame"):
        frame_io.count_charades_frames(root, "G")
    # training and evaluation list their videos through find_videos
    split = tmp_path / "charades.json"
    split.write_text(json.dumps({"G": {"subset": "testing", "duration": 1.0, "actions": [[0, 0.0, 1.0]]}}))
    with pytest.raises(FrameError, match="G-000011.jpg"):
        find_videos(read_annotations([split]), "testing", root, "rgb")
    # extraction: the video fails, named with its first missing frame
    out = tmp_path / "out"
    common = ["-load_model", str(weights_file), "-root", str(root), "-save_dir", str(out), "--resize", "0",
              "--crop", "32", "--workers", "0", "-q"]
    try:
        assert extract_features.main(common) == 1
        assert "G-000011.jpg" in (out / "failures.txt").read_text()
        # --allow-gaps: the frames before the gap
        assert extract_features.main(common + ["--allow-gaps"]) == 0
        assert frame_io.count_charades_frames(root, "G") == 10
    finally:
        cli.apply_allow_gaps(False)
    assert np.load(out / "G.npy").shape == (1, 1, 1, 1024)


def test_gap_in_a_frame_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 3, 5):
        frame_io.write_image(folder / f"frame_{i:04d}.png", np.zeros((4, 4, 3), np.uint8))
    (folder / "cover.png").write_bytes((folder / "frame_0001.png").read_bytes())  # no frame number: not a frame
    with pytest.raises(FrameError, match="frame_0004.png: missing frame"):
        frame_io.list_frame_files(folder)
    cli.apply_allow_gaps(True)
    try:
        assert [f.name for f in frame_io.list_frame_files(folder)] == [f"frame_{i:04d}.png" for i in (1, 2, 3, 5)]
    finally:
        cli.apply_allow_gaps(False)
    # one shared flag on the three scripts that read Charades frame folders
    assert extract_features.parse_args(EXTRACT + ["--allow-gaps"]).allow_gaps
    assert train_i3d.parse_args(TRAIN + ["--allow-gaps"]).allow_gaps
    assert eval_i3d.parse_args(EVAL + ["--allow-gaps"]).allow_gaps


# ---------------------------------------------------------------------------------------------
# 6. Flags, distributed environment, non-finite weights, one run per training directory
# ---------------------------------------------------------------------------------------------

TRAIN = ["-root", "r", "-save_model", "m_"]
EXTRACT = ["-load_model", "w.pt", "-root", "r", "-save_dir", "o"]
EVAL = ["-root", "r", "--split", "s.json", "-load_model", "w.pt"]


@pytest.mark.parametrize("parse,argv,message", [
    (train_i3d.parse_args, TRAIN + ["--lr", "nan"], "finite"),
    (train_i3d.parse_args, TRAIN + ["--lr", "inf"], "finite"),
    (train_i3d.parse_args, TRAIN + ["--lr", "0"], "above 0"),
    (train_i3d.parse_args, TRAIN + ["--weight-decay", "nan"], "finite"),
    (train_i3d.parse_args, TRAIN + ["--weight-decay", "-1"], "0 or more"),
    (train_i3d.parse_args, TRAIN + ["--keep-last", "-1"], "at least 0"),
    (train_i3d.parse_args, TRAIN + ["--crop", "0"], "from 1 to 4096"),
    (train_i3d.parse_args, TRAIN + ["--crop", "-5"], "from 1 to 4096"),
    (train_i3d.parse_args, TRAIN + ["--resize", "100000"], "from 0 to 4096"),
    (train_i3d.parse_args, TRAIN + ["--batch-size", "0"], "at least 1"),
    (extract_features.parse_args, EXTRACT + ["--crop", "-1"], "from 0 to 4096"),
    (extract_features.parse_args, EXTRACT + ["--resize", "100000"], "from 0 to 4096"),
    (extract_features.parse_args, EXTRACT + ["--workers", "-2"], "at least 0"),
    (eval_i3d.parse_args, EVAL + ["--max-videos", "-1"], "at least 1"),
    (eval_i3d.parse_args, EVAL + ["--max-videos", "0"], "at least 1"),
    (eval_i3d.parse_args, EVAL + ["--crop", "100000"], "from 0 to 4096"),
    (predict.parse_args, ["x.mp4", "--weights", "w.pt", "--resize", "-3"], "from 0 to 4096"),
])
def test_bad_numeric_flags_are_refused(parse, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_keep_last_zero_and_sizes_in_range_still_parse():
    args = train_i3d.parse_args(TRAIN + ["--keep-last", "0", "--crop", "224", "--resize", "0", "--lr", "1e-3"])
    assert (args.keep_last, args.crop, args.resize, args.lr) == (0, 224, 0, 1e-3)
    assert extract_features.parse_args(EXTRACT + ["--crop", "0"]).crop == 0


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
    ({"RANK": "3", "WORLD_SIZE": "2"}, "RANK=3 WORLD_SIZE=2"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1"),
    ({"WORLD_SIZE": "two"}, "not an integer"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK"),
])
def test_distributed_environment_is_checked(monkeypatch, env, message):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError, match=message):
        dist_env()
    with pytest.raises(UserError, match=message):
        feature_store.parse_shard(None)
    with pytest.raises(UserError, match=message):
        train_i3d.init_distributed()


@pytest.mark.slow
def test_distributed_environment_one_line_from_the_script(tmp_path):
    r = subprocess.run([PY, str(ROOT / "extract_features.py"), *EXTRACT], capture_output=True, text=True,
                       env={**ENV, "RANK": "3", "WORLD_SIZE": "2"}, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "RANK=3 WORLD_SIZE=2" in r.stderr


@pytest.mark.slow
def test_non_finite_weights_refused_at_load(tmp_path):
    state = InceptionI3d(num_classes=10).state_dict()
    key = "Mixed_4b.b1a.conv3d.weight"
    state[key] = state[key].clone()
    state[key].view(-1)[7] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match=rf"nan.pt: tensor {key} holds NaN or inf"):
        weights.load_model(path)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"version": train_state.CKPT_VERSION, "config": {}, "model": state}, ckpt)
    with pytest.raises(UserError, match="holds NaN or inf"):
        train_i3d.load_checkpoint(ckpt, {})
    assert train_i3d.first_non_finite(state) == key


def test_one_training_run_per_save_model(tmp_path):
    save = tmp_path / "run" / "m_"
    save.parent.mkdir()
    holder = subprocess.Popen([PY, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               f"{save}lock"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="another train_i3d.py is running"):
            train_i3d.train(train_i3d.parse_args(["-root", str(tmp_path), "-save_model", str(save)]))
    finally:
        holder.kill()
        holder.wait()
