"""dense_flow.py: our TV-L1 against the ground truth and OpenCV's TV-L1, the 8-bit encoding, and
the command line (video file, frame folder, resume, failures)."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dense_flow as D
from errors import UserError
from frame_io import count_charades_frames, load_charades_frames, write_image
import tvl1
import synthetic_charades

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a TV-L1 solve per pair, several seconds on 2 cores
@pytest.mark.parametrize("kind", ["translation", "rotation", "patch"])
def test_tvl1_matches_ground_truth_and_opencv(kind):
    f0, f1, gt = synthetic_charades.synthetic_pair(96, 128, kind, seed=1)
    ours = tvl1.compute_flow(np.stack([f0, f1]), device="cpu")[0]
    ref = cv2.optflow.DualTVL1OpticalFlow_create().calc(f0, f1, None)
    epe_ours, epe_ref = tvl1.end_point_error(ours, gt, 4), tvl1.end_point_error(ref, gt, 4)
    assert ours.shape == (96, 128, 2) and ours.dtype == np.float32
    assert epe_ours < 0.1
    assert epe_ours <= epe_ref + 0.05
    assert tvl1.end_point_error(ours, ref) < 0.05
    if kind == "translation":  # a known constant shift is found to a hundredth of a pixel
        assert np.allclose(np.median(ours.reshape(-1, 2), 0), gt[0, 0], atol=0.02)


@pytest.mark.slow
def test_batched_equals_one_at_a_time():
    pairs = [synthetic_charades.synthetic_pair(64, 80, k, seed=s) for s, k in enumerate(["translation", "rotation", "patch"])]
    i0 = torch.from_numpy(np.stack([p[0] for p in pairs])).float()[:, None]
    i1 = torch.from_numpy(np.stack([p[1] for p in pairs])).float()[:, None]
    batched = tvl1.tvl1_torch(i0, i1)  # on CPU: pair by pair
    single = torch.cat([tvl1.tvl1_torch(i0[k:k + 1], i1[k:k + 1]) for k in range(3)])
    assert batched.shape == (3, 2, 64, 80)
    assert torch.allclose(batched, single, atol=1e-4)
    # the whole-batch path (CUDA's): stopped pairs dropped from the batch (host looks every
    # iteration) or frozen by a device mask between looks, both give each pair's own result
    for sync_every in (1, 7):
        whole = tvl1.tvl1_torch(i0, i1, per_pair=False, sync_every=sync_every)
        assert torch.allclose(whole, single, atol=1e-4)


@pytest.mark.slow
def test_compute_flow_chunks_and_other_methods():
    f0, f1, _ = synthetic_charades.synthetic_pair(48, 64, "translation", seed=3)
    frames = np.stack([f0, f1, f0])
    whole = tvl1.compute_flow(frames, device="cpu", batch=2)
    chunked = tvl1.compute_flow(frames, device="cpu", batch=1)
    assert whole.shape == (2, 48, 64, 2)
    assert np.allclose(whole, chunked, atol=1e-4)
    for method in ("dis", "farneback", "opencv-tvl1"):
        assert tvl1.compute_flow(frames, method=method).shape == (2, 48, 64, 2)
    with pytest.raises(ValueError):
        tvl1.compute_flow(frames[:1])


def test_building_blocks_match_opencv():
    rng = np.random.default_rng(0)
    img = (rng.random((37, 53)) * 255).astype(np.float32)
    t = torch.from_numpy(img)[None, None]
    # pyramid step (fx = fy = 0.8) and explicit-size upsampling, INTER_LINEAR
    small = cv2.resize(img, None, fx=0.8, fy=0.8)
    ours = tvl1.resize_linear(t, small.shape, (1 / 0.8, 1 / 0.8))[0, 0].numpy()
    assert np.allclose(ours, small, atol=1e-3)
    big = cv2.resize(img, (70, 45))
    assert np.allclose(tvl1.resize_linear(t, (45, 70))[0, 0].numpy(), big, atol=1e-3)
    # 5x5 median: the torch version used on GPU equals cv2.medianBlur
    assert np.array_equal(tvl1.median5_torch(t)[0, 0].numpy(), cv2.medianBlur(img, 5))
    # bicubic warp with zeros outside, against cv2.remap
    u = torch.from_numpy(rng.uniform(-3, 3, (1, 2, 37, 53)).astype(np.float32))
    ys, xs = np.mgrid[0:37, 0:53].astype(np.float32)
    ref = cv2.remap(img, xs + u[0, 0].numpy(), ys + u[0, 1].numpy(), cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
    warped = tvl1.warp_bicubic(t, u)[0, 0].numpy()
    assert np.abs(warped - ref)[4:-4, 4:-4].max() < 0.01


def test_uint8_encoding_round_trip_and_clipping():
    flow = np.array([[[0.0, -20.0], [20.0, 7.3]], [[-35.0, 50.0], [0.08, -0.08]]], np.float32)
    x, y = tvl1.flow_to_uint8(flow)
    assert x.dtype == np.uint8 and x.shape == (2, 2)
    assert x[0, 0] == 128 and y[0, 0] == 0 and x[0, 1] == 255  # round(255 * 20 / 40) = 127.5 -> 128
    assert x[1, 0] == 0 and y[1, 0] == 255  # clipped to +-20
    back = tvl1.uint8_to_flow(x, y)
    inside = np.abs(flow) <= 20
    assert np.all(np.abs(back - flow)[inside] <= 20 / 255 + 1e-6)
    assert back[1, 0, 0] == -20 and back[1, 0, 1] == 20
    assert tvl1.flow_to_color(flow).shape == (2, 2, 3)


def _textured_frames(n, h=48, w=64):
    rng = np.random.default_rng(5)
    tex = synthetic_charades.gray_texture(h + 40, w + 40, rng)
    return [np.repeat(tex[10 + i:10 + i + h, 10 + 2 * i:10 + 2 * i + w, None], 3, axis=2).astype(np.uint8)
            for i in range(n)]


@pytest.fixture()
def tiny_video(tmp_path):
    path = tmp_path / "in" / "clip one.mp4"
    path.parent.mkdir()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for f in _textured_frames(5):
        writer.write(f)
    writer.release()
    return path


@pytest.mark.slow
def test_cli_video_and_folder_exact_layout(tmp_path, tiny_video):
    folder = tmp_path / "in" / "frames_b"
    folder.mkdir()
    for i, f in enumerate(_textured_frames(3)):
        write_image(folder / f"img_{i:03d}.png", f)
    out = tmp_path / "out"
    assert D.main([str(tiny_video), str(folder), "-o", str(out), "--rgb", "--resize", "0", "--batch", "2",
                   "--no-compile", "--visualize"]) == 0
    names = sorted(p.name for p in (out / "clip one").iterdir() if p.name != D.DONE_MARKER)
    expected = sorted([f"clip one-{i:06d}{s}.jpg" for i in range(1, 6) for s in ("", "x", "y")] + ["flow_vis.png"])
    assert names == expected
    assert sorted(p.name for p in (out / "frames_b").iterdir() if p.name != D.DONE_MARKER) == sorted(
        [f"frames_b-{i:06d}{s}.jpg" for i in range(1, 4) for s in ("", "x", "y")] + ["flow_vis.png"])
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    # readable by the training / feature code: equal RGB and flow counts, flow ~ (-2, -1) px
    assert count_charades_frames(out, "clip one", "flow") == count_charades_frames(out, "clip one", "rgb") == 5
    flow = load_charades_frames(out, "frames_b", 1, 3, mode="flow", resize=0)
    assert flow.shape == (3, 48, 64, 2)
    dec = tvl1.uint8_to_flow(flow[1, 12:-12, 12:-12, 0], flow[1, 12:-12, 12:-12, 1])
    assert np.allclose(np.median(dec.reshape(-1, 2), 0), [-2, -1], atol=0.2)  # content moves left 2, up 1
    # --resize makes the smaller side that size
    assert D.main([str(folder), "-o", str(tmp_path / "out32"), "--resize", "32", "--no-compile"]) == 0
    assert cv2.imread(str(tmp_path / "out32" / "frames_b" / "frames_b-000001x.jpg")).shape[:2] == (32, 43)


@pytest.mark.slow
def test_cli_resume_skips_finished_and_redoes_unfinished(tmp_path, tiny_video):
    out = tmp_path / "out"
    args = [str(tiny_video), "-o", str(out), "--resize", "0", "--no-compile"]
    threads = torch.get_num_threads()
    assert D.main(args) == 0
    assert torch.get_num_threads() == threads  # the CLI's 1-thread TV-L1 does not leak into the caller
    done = out / "clip one" / "clip one-000001x.jpg"
    stamp = done.stat().st_mtime_ns
    assert D.main(args) == 0
    assert done.stat().st_mtime_ns == stamp  # finished video not recomputed
    # an unfinished video (temporary folder left by a kill) is redone and its leftovers removed
    (out / ".clip one.abc.tmp").mkdir()
    (out / ".clip one.abc.tmp" / "clip one-000001x.jpg").write_bytes(b"partial")
    import shutil
    shutil.rmtree(out / "clip one")
    assert D.main(args) == 0
    assert (out / "clip one" / "clip one-000005y.jpg").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["clip one"]


@pytest.mark.slow
def test_cli_failures(tmp_path, tiny_video):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\0\0\0\x18ftyp not a video at all")  # binary: tried as a video (text is refused first)
    one = tmp_path / "single"
    one.mkdir()
    write_image(one / "a.png", _textured_frames(1)[0])
    listing = tmp_path / "list.txt"
    listing.write_text(f"{bad}\n# a comment\n{one}\n{tiny_video}\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "dense_flow.py"), "--list", str(listing), "-o", str(out),
                           "--resize", "0", "--no-compile", "--workers", "2"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "broken.mp4: unreadable video" in proc.stderr
    assert "single: 1 frame(s), flow needs at least two" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["clip one"]  # the good one done, nothing half-written
    # an output folder that cannot be written: one line, exit 2
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, str(ROOT / "dense_flow.py"), str(tiny_video), "-o", str(blocker / "sub")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "cannot be written" in proc.stderr
    with pytest.raises(UserError):
        D.main(["-o", str(out)])  # no inputs
