"""extract_features.py / charades_dataset_full.py: exact chunked extraction, outputs, resume,
failures, sharding, HDF5, windows, ten-crop, bounded memory. Small frames and random weights
(batch-norm statistics calibrated so features are of order 1 and tolerances mean something)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import extract_features as ef
import frame_io
from charades_dataset_full import StreamingVideoDataset, VideoSource, input_sources
import benchmark
import feature_store
import streaming

REPO = Path(__file__).resolve().parent.parent


def frames_to_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, C) -> (1, C, T, H, W) in [-1, 1], as the original script."""
    x = (frames.astype(np.float64) / 255.0) * 2 - 1
    return torch.from_numpy(x.astype(np.float32).transpose(3, 0, 1, 2))[None]


def whole_video(model, frames: np.ndarray) -> np.ndarray:
    """The reference: the plain model on the whole video at once, (T', h, w, 1024)."""
    with torch.no_grad():
        return model.extract_features(frames_to_input(frames))[0].permute(1, 2, 3, 0).numpy()


@pytest.fixture(scope="module")
def model5c(random_i3d):
    return random_i3d(final_endpoint="Mixed_5c")


@pytest.fixture(scope="module")
def weights_file(random_i3d_file) -> Path:
    return random_i3d_file(num_classes=157)


def assert_close(out: np.ndarray, ref: np.ndarray, tol: float = 1e-4) -> None:
    """|out - ref| <= tol, relative to the features' scale where it exceeds 1. The random test
    networks amplify float32 rounding a little (two copies of a clip in one batch already differ
    by ~1e-5); with real weights (test_real_weights_*) the bound is absolute."""
    assert out.shape == ref.shape
    err, scale = float(np.abs(out - ref).max()), max(1.0, float(np.abs(ref).max()))
    assert err <= tol * scale, (err, scale)


def random_frames(t: int, h: int = 16, w: int = 16, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, c), dtype=np.uint8)


def make_charades(root: Path, vid: str, t: int, h: int = 32, w: int = 40, seed: int = 0) -> None:
    (root / vid).mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(random_frames(t, h, w, seed=seed), start=1):
        frame_io.write_image(frame_io.charades_frame_path(root, vid, i), img, quality=100)


def write_video(path: Path, t: int, size: int = 32, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (size, size))
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    for i in range(t):  # a moving pattern: cheap to encode, decodes to the stated frame count
        writer.write(np.roll(base, i, axis=1))
    writer.release()


def run_cli(*argv: str) -> int:
    return ef.main([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------
# The uint8 frame streams around the engine (streamed = whole video for every length, chunking
# and endpoint is test_streaming.py's)
# ---------------------------------------------------------------------------------------------

def test_temporal_stride(model5c):
    """From the model's own layers: 8 frames per Mixed_5c step, 4 per Mixed_4f, 2 after Conv3d_1a."""
    assert streaming.temporal_stride(model5c) == 8
    assert streaming.temporal_stride(model5c, "Mixed_4f") == 4
    assert streaming.temporal_stride(model5c.for_inference("fp32"), "Conv3d_1a_7x7") == 2


def test_wrong_length_raises_with_the_true_count(model5c):
    """A stream longer or shorter than the total the engine was built for never gives a result:
    LengthMismatch carries the frames actually pushed (the count to re-read with)."""
    frames = random_frames(40, seed=1)
    for total in (33, 48):
        stream = streaming.VideoStream(model5c, total, chunk_frames=16)
        for i in range(0, 40, 7):
            stream.push(frames[i:i + 7])
        with pytest.raises(streaming.LengthMismatch) as e:
            stream.finish()
        assert e.value.seen == 40 and e.value.expected == total


@pytest.mark.slow
def test_stream_features_rereads_on_wrong_length(model5c):
    frames = random_frames(100, seed=3)
    ref = whole_video(model5c, frames)  # (T', 1, 1, 1024)
    out = streaming.stream_features(model5c, lambda: iter(frames), total=105, chunk_frames=16)
    assert out.shape == (ref.shape[0], 1024, 1, 1)
    assert_close(out.permute(0, 2, 3, 1).numpy(), ref)
    with pytest.raises(streaming.LengthMismatch):
        streaming.stream_features(model5c, iter(frames), total=105, chunk_frames=16)
    with pytest.raises(streaming.LengthMismatch):
        streaming.stream_features(model5c, iter(frames), total=97, chunk_frames=16)
    # A one-shot iterator of unknown length (predict.py's case) is spooled to disk and exact.
    spooled = streaming.stream_features(model5c, (f for f in frames), chunk_frames=16)
    assert_close(spooled.permute(0, 2, 3, 1).numpy(), ref)


# ---------------------------------------------------------------------------------------------
# The script: original semantics, resume, failures, inputs, shards, formats
# ---------------------------------------------------------------------------------------------

def test_original_semantics_at_224_real_weights(tmp_path, rgb_scratch_weights):
    """-root Charades frames, 16 frames of 226x240 (no upscale), crop 224 -> (1, 1, 1, 1024),
    equal to 1e-4 to the plain model on the whole clip as the original script computes it."""
    import weights

    root = tmp_path / "root"
    make_charades(root, "VID01", 16, h=226, w=240)
    assert run_cli("-mode", "rgb", "-load_model", rgb_scratch_weights, "-root", root, "-save_dir", tmp_path / "out",
                   "--workers", "0", "-q") == 0
    out = np.load(tmp_path / "out" / "VID01.npy")
    assert out.shape == (1, 1, 1, 1024) and out.dtype == np.float32
    model = weights.load_model(rgb_scratch_weights, mode="rgb")
    frames = frame_io.center_crop(frame_io.load_charades_frames(root, "VID01", 1, 16), 224)
    assert np.abs(out - whole_video(model, frames)).max() < 1e-4


def test_real_weights_chunked_fast_equals_whole_video(rgb_scratch_weights):
    """Chunks through the fast inference copy vs the plain model on the whole video, real weights."""
    import weights

    model = weights.load_model(rgb_scratch_weights, mode="rgb")
    frames = random_frames(130, h=48, w=48, seed=11)
    ref = whole_video(model, frames)
    out = streaming.stream_features(model.for_inference("fp32"), list(frames), chunk_frames=16)
    assert np.abs(out.permute(0, 2, 3, 1).numpy() - ref).max() < 1e-4


@pytest.mark.slow
def test_resume_skips_finished_and_reports_failures(tmp_path, weights_file):
    root = tmp_path / "root"
    make_charades(root, "A", 12)
    make_charades(root, "B", 20, seed=1)
    make_charades(root, "C", 9, seed=2)
    (root / "C" / "C-000004.jpg").write_bytes(b"not a jpeg")  # corrupt frame
    (root / "EMPTY").mkdir()
    out = tmp_path / "out"
    args = ["-load_model", weights_file, "-root", root, "-save_dir", out, "--resize", "0", "--crop", "32",
            "--workers", "0", "-q"]
    assert run_cli(*args) == 1  # failures -> non-zero, the others finished
    assert sorted(p.name for p in out.glob("*.npy")) == ["A.npy", "B.npy"]
    failures = (out / "failures.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in failures] == ["C", "EMPTY"]
    assert "C-000004.jpg" in failures[0]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files left"
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    make_charades(root, "C", 9, seed=2)  # repaired
    (root / "EMPTY").rmdir()
    assert run_cli(*args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy") if p.name != "C.npy"} == mtimes
    assert (out / "C.npy").is_file() and not (out / "failures.txt").exists()
    assert np.load(out / "B.npy").shape == (2, 1, 1, 1024)


@pytest.mark.slow
def test_bad_input_is_one_line_on_stderr(tmp_path, weights_file, random_i3d_file):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO / "extract_features.py"), "-load_model", str(weights_file),
                        "-root", str(tmp_path / "missing"), "-save_dir", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "missing" in r.stderr
    assert len([line for line in r.stderr.splitlines() if "error" in line]) == 1
    # RGB mode with flow weights: refused by weights.load_model, one line.
    flow_w = random_i3d_file(in_channels=2)
    make_charades(tmp_path / "root", "A", 9)
    r = subprocess.run([sys.executable, str(REPO / "extract_features.py"), "-mode", "rgb", "-load_model", str(flow_w),
                        "-root", str(tmp_path / "root"), "-save_dir", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "flow" in r.stderr


def test_shard_partition():
    sources = [VideoSource(key=f"v{i:03d}", layout="file", path=f"v{i}") for i in range(23)]
    for n in (1, 2, 3, 5, 23, 30):
        parts = [feature_store.shard(list(reversed(sources)), k, n) for k in range(n)]
        keys = [s.key for part in parts for s in part]
        assert sorted(keys) == [s.key for s in sources] and len(set(keys)) == len(keys)  # no gap, no overlap
    assert feature_store.parse_shard("2/4") == (2, 4)
    os.environ.update(RANK="1", WORLD_SIZE="3")
    try:
        assert feature_store.parse_shard(None) == (1, 3)
    finally:
        del os.environ["RANK"], os.environ["WORLD_SIZE"]
    with pytest.raises(feature_store.UserError):
        feature_store.parse_shard("4/4")


@pytest.mark.slow
def test_input_nested_same_names_with_workers_and_shards(tmp_path, weights_file):
    for d in ("a", "b", "b/deeper"):
        write_video(tmp_path / "v" / d / "clip.mp4", 20, seed=len(d) + ord(d[0]))
    frames_dir = tmp_path / "v" / "c" / "clip"
    frames_dir.mkdir(parents=True)
    for i, img in enumerate(random_frames(11, h=32, w=32, seed=9)):
        frame_io.write_image(frames_dir / f"{i:05d}.png", img)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{tmp_path / 'v' / 'a' / 'clip.mp4'}\n{tmp_path / 'v' / 'b'}\n{frames_dir}\n")
    common = ["-load_model", weights_file, "--input", lst, "--resize", "0", "--crop", "32", "-q"]
    outs = [tmp_path / "out0", tmp_path / "out1"]  # one folder per shard: each shows what it took
    assert run_cli(*common, "-save_dir", outs[0], "--workers", "2", "--shard", "0/2") == 0
    assert run_cli(*common, "-save_dir", outs[1], "--workers", "0", "--shard", "1/2") == 0
    got = [{p.relative_to(o).as_posix() for p in o.rglob("*.npy")} for o in outs]
    assert got[0] and got[1] and not got[0] & got[1]  # each shard does its part, none does another's
    assert sorted(got[0] | got[1]) == ["a/clip.npy", "b/clip.npy", "b/deeper/clip.npy", "c/clip.npy"]
    assert got[0] == {s.key + ".npy" for s in feature_store.shard(input_sources([lst]), 0, 2)}
    feats = {k: np.load(o / k) for o, g in zip(outs, got) for k in g}
    assert feats["c/clip.npy"].shape == (1, 1, 1, 1024)
    assert not np.allclose(feats["a/clip.npy"], feats["b/clip.npy"])


@pytest.mark.slow
def test_h5_output_resumes(tmp_path, weights_file):
    import h5py

    root = tmp_path / "root"
    make_charades(root, "A", 17)
    make_charades(root, "B", 9, seed=1)
    out = tmp_path / "out"
    args = ["-load_model", weights_file, "-root", root, "-save_dir", out, "--resize", "0", "--crop", "32",
            "--workers", "0", "-q", "--format", "h5"]
    assert run_cli(*args) == 0
    with h5py.File(out / "features.h5", "r") as f:
        assert sorted(f) == ["A", "B"]
        assert f["A"].shape == (2, 1, 1, 1024) and f["A"].attrs["stride"] == 8 and f["A"].attrs["frames"] == 17
        first = f["A"][()]
    assert not (out / ".pending").exists()
    make_charades(root, "C", 8, seed=2)
    # A video finished by a killed run (pending .npy, never merged) is picked up, not recomputed.
    feature_store.H5Store(out / "features.h5", out / ".pending").save("D", np.zeros((1, 2), np.float32), {"stride": 8})
    assert run_cli(*args) == 0
    with h5py.File(out / "features.h5", "r") as f:
        assert sorted(f) == ["A", "B", "C", "D"]
        np.testing.assert_array_equal(f["A"][()], first)
        assert f["D"].shape == (1, 2)


@pytest.mark.slow
def test_stack_step_windows(tmp_path, weights_file, model5c):
    """--stack 16 --step 8 on 40 frames: windows at 0, 8, 16, 24 (the partial one at 32 is
    dropped), each the mean over time and space of its own forward pass."""
    frames = random_frames(40, seed=4)
    stacker = streaming.WindowStacker(streaming.make_runner(model5c, torch.device("cpu")), 16, 8, batch=3)
    for i in range(0, 40, 7):
        stacker.push(frames[i:i + 7])
    out = stacker.finish()[0].numpy()
    ref = np.stack([whole_video(model5c, frames[s:s + 16]).mean(axis=(0, 1, 2)) for s in (0, 8, 16, 24)])
    assert out.shape == (4, 1024)
    assert_close(out, ref)
    gap = streaming.WindowStacker(streaming.make_runner(model5c, torch.device("cpu")), 8, 20)  # step > stack
    gap.push(frames)
    assert_close(gap.finish()[0].numpy()[1], whole_video(model5c, frames[20:28]).mean(axis=(0, 1, 2)))
    root = tmp_path / "root"
    make_charades(root, "A", 40)
    make_charades(root, "SHORT", 10)
    rc = run_cli("-load_model", weights_file, "-root", root, "-save_dir", tmp_path / "out", "--resize", "0",
                 "--crop", "32", "--workers", "0", "-q", "--stack", "16", "--step", "8")
    assert rc == 1  # SHORT is shorter than one window
    assert np.load(tmp_path / "out" / "A.npy").shape == (4, 1024)
    assert "shorter than one --stack" in (tmp_path / "out" / "failures.txt").read_text()


@pytest.mark.slow
def test_stack_windows_of_several_videos_share_batches(tmp_path, weights_file, model5c):
    """One batcher for all videos: windows of different videos run in the same forward pass
    and each video still gets exactly its own features, in order."""
    runs: list[int] = []
    run = streaming.make_runner(model5c, torch.device("cpu"))

    def counting_run(x):
        runs.append(x.shape[0])
        return run(x)

    batcher = streaming.WindowBatcher(counting_run, batch=4)
    videos = {"A": random_frames(24, seed=7), "B": random_frames(8, seed=8), "C": random_frames(16, seed=9)}
    stackers = {k: streaming.WindowStacker(counting_run, 8, 8, batcher=batcher) for k in videos}
    for k, frames in videos.items():
        stackers[k].push(frames)
    outs = {k: s.finish()[0].numpy() for k, s in stackers.items()}
    assert runs == [4, 2]  # A's 3 windows and B's 1 in one pass, C's 2 in the next
    for k, frames in videos.items():
        ref = np.stack([whole_video(model5c, frames[s:s + 8]).mean(axis=(0, 1, 2)) for s in range(0, len(frames), 8)])
        assert_close(outs[k], ref)
    root = tmp_path / "root"
    for vid, t in (("A", 24), ("B", 8), ("C", 16)):
        make_charades(root, vid, t, seed=len(vid) + t)
    for batch in ("1", "6"):
        assert run_cli("-load_model", weights_file, "-root", root, "-save_dir", tmp_path / f"out{batch}", "--resize",
                       "0", "--crop", "32", "--workers", "0", "-q", "--stack", "8", "--batch-windows", batch) == 0
    for vid in "ABC":
        assert_close(np.load(tmp_path / "out6" / f"{vid}.npy"), np.load(tmp_path / "out1" / f"{vid}.npy"))


@pytest.mark.slow
def test_ten_crop_and_flow_flip(model5c, random_i3d):
    frames = random_frames(9, h=40, w=48, seed=5)
    run = streaming.make_runner(model5c, torch.device("cpu"), ten_crop=32)
    out = run(torch.from_numpy(frames)[None])[0].numpy()  # (10, T', 1, 1, 1024)
    assert out.shape == (10, 1, 1, 1, 1024)
    center = whole_video(model5c, frame_io.center_crop(frames, 32))
    assert_close(out[4], center)
    assert_close(out[9], whole_video(model5c, frame_io.center_crop(frames, 32)[:, :, ::-1].copy()))
    stream = streaming.VideoStream(model5c.for_inference("fp32"), 9, ten_crop=32, chunk_frames=8)
    stream.push(frames)
    assert_close(stream.finish().numpy(), out)  # the streamed ten crops (a batch of 10) equal the runner's
    flow_model = random_i3d(in_channels=2, final_endpoint="Mixed_5c")
    flow = random_frames(9, h=32, w=32, c=2, seed=6)
    got = streaming.make_runner(flow_model, torch.device("cpu"), mode="flow", ten_crop=32)(torch.from_numpy(flow)[None])[0]
    x = frames_to_input(flow).flip(-1)
    x[:, 0] = -x[:, 0]  # mirrored flow: x displacement negated
    with torch.no_grad():
        ref = flow_model.extract_features(x)[0].permute(1, 2, 3, 0).numpy()
    assert_close(got[5].numpy(), ref)


@pytest.mark.slow
def test_cli_ten_crop_and_endpoint(tmp_path, weights_file):
    """--ten-crop --endpoint Mixed_4f from the command line: (10, T_E, 832), crop k the
    endpoint's map of that crop averaged over space (4: the center crop, 9: its mirror)."""
    import weights

    root = tmp_path / "root"
    make_charades(root, "A", 16, h=40, w=48)
    assert run_cli("-load_model", weights_file, "-root", root, "-save_dir", tmp_path / "out", "--resize", "0",
                   "--crop", "32", "--ten-crop", "--endpoint", "Mixed_4f", "--workers", "0", "-q") == 0
    out = np.load(tmp_path / "out" / "A.npy")
    assert out.shape == (10, 4, 832)
    model = weights.load_model(weights_file, mode="rgb")
    frames = frame_io.center_crop(frame_io.load_charades_frames(root, "A", 1, 16, resize=0), 32)
    for k, clip in ((4, frames), (9, frames[:, :, ::-1].copy())):
        with torch.no_grad():
            ref = model(frames_to_input(clip), return_endpoints=True)[1]["Mixed_4f"][0].mean(dim=(2, 3)).T.numpy()
        assert_close(out[k], ref)
    assert not np.allclose(out[4], out[9], atol=1e-3)


def test_streaming_dataset_pieces(tmp_path):
    root = tmp_path / "root"
    make_charades(root, "A", 70, h=30, w=40)
    items = list(StreamingVideoDataset([VideoSource("A", "charades", str(root), "A")], resize=None, crop=224))
    assert [it["frames"].shape[0] for it in items] == [64, 6]
    assert items[0]["frames"].dtype == torch.uint8 and tuple(items[0]["frames"].shape[1:]) == (224, 224, 3)
    assert items[-1]["last"] and items[-1]["count"] == 70 and items[0]["total"] == 70


# ---------------------------------------------------------------------------------------------
# Memory does not grow with length
# ---------------------------------------------------------------------------------------------

# One process extracts videos of 250 and 2000 frames (imports, model, engine buffers and the
# allocator's kept memory warm: the peak RSS still rises ~90 MB over them, then levels off),
# then one of 4000: what the peak RSS gains on that one is what length costs.
_PEAK_CODE = """
import ctypes, sys
import cli, extract_features, streaming
cli.keep_freed_memory()  # as extract_features.py's __main__
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
def live():  # bytes malloc has handed out and not got back (all arenas, mmapped blocks included)
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd
early, peak = int(sys.argv[1]), [0, 0]
push = streaming.VideoStream.push
def sampled(self, frames):  # what the process holds between chunks, at fixed points
    for when in range(2):
        peak[1] = max(peak[1], live())
        if self.seen <= early:
            peak[0] = peak[1]
        if when == 0:
            push(self, frames)
streaming.VideoStream.push = sampled
out, videos, rest = sys.argv[2], sys.argv[3:5], sys.argv[5:]
for v in videos:
    peak[:] = [0, 0]
    assert extract_features.main(["--input", v, "-save_dir", out + "/" + v.split("/")[-1], *rest]) == 0
print(*peak, flush=True)
"""


@pytest.mark.slow
def test_peak_memory_bounded(tmp_path, weights_file):
    """Memory does not grow with length. In one process, after a warm-up video, what the process
    holds over a 1100-frame video exceeds what it held over the first 100 frames by less than half
    of what keeping the 1000 frames in between would take (1000 x 64x64 RGB uint8 = 12.3 MB; it
    moves by +-2.5 MB from piece to piece, without a trend: 600 frames ended 2.5 MB under the start).
    Measured is what malloc has handed out and not got back (glibc mallinfo2), sampled around
    every push into the engine. The peak RSS is no measure of it: glibc's arenas grow with freed,
    fragmented blocks (600 -> 1600 frames at 160x160: +62 MB of heap for +1.5 MB held)."""
    lengths, early, size = (50, 1100), 100, 64
    videos = [tmp_path / f"v{n}.mp4" for n in lengths]
    for v, n in zip(videos, lengths):
        write_video(v, n, size=size)
    cmd = [sys.executable, "-c", _PEAK_CODE, str(early), str(tmp_path / "o"), *map(str, videos), "-load_model",
           str(weights_file), "--resize", "0", "--crop", str(size), "--workers", "0", "-q", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    held_early, held = map(int, r.stdout.split()[-2:])
    assert np.load(tmp_path / "o" / "v1100.mp4" / "v1100.npy").shape[0] == -(-1100 // 8) - 1
    frames = (lengths[1] - early) * size * size * 3
    assert held - held_early < frames / 2, (held_early, held, frames)


@pytest.mark.slow
@pytest.mark.parametrize("offset", [3, -5])
def test_wrong_container_frame_count_is_reread(tmp_path, weights_file, monkeypatch, caplog, offset):
    """A container that reports the wrong frame count (more or fewer than decoded) costs a
    re-read with the true count, never a wrong result."""
    import charades_dataset_full

    video = tmp_path / "v" / "clip.mp4"
    write_video(video, 100, size=32)
    args = ["-load_model", weights_file, "--input", video, "--resize", "0", "--crop", "32", "--workers", "0",
            "--chunk-frames", "16", "-q"]
    assert run_cli(*args, "-save_dir", tmp_path / "good") == 0
    real_info = frame_io.video_info
    monkeypatch.setattr(charades_dataset_full.frame_io, "video_info",
                        lambda p: (real_info(p)[0] + offset,) + real_info(p)[1:])
    with caplog.at_level("INFO", logger="extract_features"):
        assert run_cli(*args, "-save_dir", tmp_path / "reread") == 0
    assert "re-reading" in caplog.text
    np.testing.assert_array_equal(np.load(tmp_path / "reread" / "clip.npy"), np.load(tmp_path / "good" / "clip.npy"))


def test_count_video_frames(tmp_path):
    write_video(tmp_path / "clip.mp4", 37, size=32)
    assert frame_io.count_video_frames(tmp_path / "clip.mp4") == 37


@pytest.mark.slow
def test_benchmark_extraction_rows():
    """Whole processes: the original pytorch-i3d path and extract_features.py at default flags
    give equal features (else the benchmark raises); seconds rows, then peak-RSS rows."""
    import types

    args = types.SimpleNamespace(extract_frames=24, extract_memory_frames=(16, 40), extract_height=226,
                                 extract_width=240, random_weights=True)
    rows = benchmark.benchmark_extraction(args)
    assert [r["unit"] for r in rows] == ["s", "s", "GiB", "GiB"]
    for r in rows:
        assert set(r) >= {"section", "row", "unit", "value", "baseline_row", "baseline_value", "note"}
        assert r["section"] == "extract" and r["value"] > 0
    assert rows[0]["row"] == rows[0]["baseline_row"] == rows[1]["baseline_row"]
    assert rows[0]["row"].startswith("original pytorch-i3d path, 24 frames")
    assert rows[1]["row"].startswith("extract_features.py defaults, 24 frames")
    assert float(rows[1]["note"].split("max abs diff ")[1]) <= 1e-4 * 10
    assert rows[2]["row"] == rows[2]["baseline_row"] == rows[3]["baseline_row"] and "16 frames" in rows[2]["row"]
    assert "40 frames" in rows[3]["row"] and all(0.1 < r["value"] < 64 for r in rows[2:])


@pytest.mark.slow
def test_mode_both_from_charades_flow_frames(tmp_path, weights_file, random_i3d_file):
    root = tmp_path / "root"
    make_charades(root, "A", 10)
    for i, img in enumerate(random_frames(10, 32, 40, c=2, seed=7), start=1):
        frame_io.write_image(frame_io.charades_frame_path(root, "A", i, "x"), img[..., 0])
        frame_io.write_image(frame_io.charades_frame_path(root, "A", i, "y"), img[..., 1])
    flow_w = random_i3d_file(in_channels=2)
    out = tmp_path / "out"
    common = ["-root", root, "--resize", "0", "--crop", "32", "--workers", "0", "-q"]
    assert run_cli("-mode", "both", "-load_model", weights_file, "--flow-model", flow_w, "-save_dir", out, *common) == 0
    rgb, flow = np.load(out / "rgb" / "A.npy"), np.load(out / "flow" / "A.npy")
    assert rgb.shape == flow.shape == (1, 1, 1, 1024) and not np.allclose(rgb, flow)
    # each stream of -mode both is what that stream alone gives: RGB from the RGB frames and
    # weights, flow from the x/y frames and the flow weights
    assert run_cli("-mode", "rgb", "-load_model", weights_file, "-save_dir", tmp_path / "rgb", *common) == 0
    assert run_cli("-mode", "flow", "-load_model", flow_w, "-save_dir", tmp_path / "flow", *common) == 0
    np.testing.assert_array_equal(rgb, np.load(tmp_path / "rgb" / "A.npy"))
    np.testing.assert_array_equal(flow, np.load(tmp_path / "flow" / "A.npy"))


def test_split_file_selects_videos(tmp_path, weights_file):
    import json

    root = tmp_path / "root"
    for vid in ("A", "B", "C"):
        make_charades(root, vid, 9)
    split = tmp_path / "charades.json"
    split.write_text(json.dumps({"A": {"subset": "training", "duration": 1.0, "actions": [[0, 0.0, 1.0]]},
                                 "C": {"subset": "testing", "duration": 1.0, "actions": []}}))
    out = tmp_path / "out"
    assert run_cli("-load_model", weights_file, "-root", root, "-split", split, "-save_dir", out,
                   "--resize", "0", "--crop", "32", "--workers", "0", "-q") == 0
    assert sorted(p.name for p in out.glob("*.npy")) == ["A.npy", "C.npy"]


RECIPE_KEYS = {"mode", "endpoint", "stack", "step", "centring", "sample_fps", "resize", "crop", "ten_crop", "precision",
               "weights_sha256", "code_version"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_outputs_carry_their_recipe_and_a_stale_rerun_is_refused(tmp_path, weights_file, fmt):
    """The issue's case: --stack 16 --step 8, then --step 4 into the same SAVE_DIR. The rerun
    refuses in one line naming the difference and keeps the step-8 arrays; --overwrite
    recomputes them; every output records its recipe."""
    from errors import UserError
    import weights

    root = tmp_path / "root"
    make_charades(root, "A", 24)
    out = tmp_path / "out"
    common = ["-load_model", weights_file, "-root", root, "-save_dir", out, "--resize", "0", "--crop", "32",
              "--workers", "0", "-q", "--stack", "16", "--format", fmt, "--device", "cpu"]

    def stored() -> tuple[np.ndarray, dict]:
        store = ef._store(ef.parse_args([str(a) for a in common]), out, "")
        return store.load("A")

    assert run_cli(*common, "--step", "8") == 0
    first, attrs = stored()
    assert first.shape == (2, 1024)
    assert RECIPE_KEYS <= set(attrs), RECIPE_KEYS - set(attrs)
    assert attrs["step"] == 8 and attrs["stack"] == 16 and attrs["precision"] == "fp32" and attrs["crop"] == 32
    assert attrs["weights_sha256"] == weights.file_sha256(weights_file) and attrs["mode"] == "rgb"
    assert run_cli(*common, "--step", "8") == 0  # the same recipe: skipped as done
    with pytest.raises(UserError, match=r"was made with another recipe \(step 8 there, 4 asked\); give --overwrite"):
        run_cli(*common, "--step", "4")
    assert np.array_equal(stored()[0], first)  # the step-8 arrays are kept, not passed off as step 4
    assert run_cli(*common, "--step", "4", "--overwrite") == 0
    again, attrs = stored()
    assert again.shape == (3, 1024) and attrs["step"] == 4
    assert_close(again[::2], first)  # the windows at 0 and 8 are the same computation
