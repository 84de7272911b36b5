"""fvd.py: the reference's numbers (151.392 for zeros vs 255s at 30 frames), the TF1 resize rule
against an independent loop, the Frechet distance against closed forms, statistics files,
torchrun with 2 processes equal to one, and bad input (one line, non-zero exit); the protocols:
clip sampling over a set, stride, StyleGAN-V's presets, KVD against a pair-by-pair formula,
statistics files with clip and video counts, FVDMetric equal to fvd.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import fvd
from errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # two cores shared: leave room


def tf1_resize_loop(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False), pixel by pixel, as
    its kernel: scale = in / out in float32, src = x * scale, lower = floor(src), upper =
    min(ceil(src), in - 1), lerp = src - lower; x first, then y."""
    in_h, in_w = img.shape[:2]
    scale_y, scale_x = np.float32(in_h) / np.float32(out_h), np.float32(in_w) / np.float32(out_w)
    out = np.zeros((out_h, out_w, img.shape[2]), np.float32)
    for y in range(out_h):
        sy = np.float32(y) * scale_y
        y0, y1 = int(np.floor(sy)), min(int(np.ceil(sy)), in_h - 1)
        dy = sy - np.floor(sy)
        for x in range(out_w):
            sx = np.float32(x) * scale_x
            x0, x1 = int(np.floor(sx)), min(int(np.ceil(sx)), in_w - 1)
            dx = sx - np.floor(sx)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            out[y, x] = top + (bottom - top) * dy
    return out


@pytest.mark.slow
@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (13, 17)), ((64, 48), (224, 224)), ((100, 90), (37, 41))])
def test_resize_is_tf1_resize_bilinear(in_hw, out_hw):
    img = np.random.default_rng(0).integers(0, 256, (*in_hw, 3)).astype(np.float32)
    ours = fvd.resize_tf1(torch.from_numpy(img)[None], out_hw)[0].numpy()
    np.testing.assert_allclose(ours, tf1_resize_loop(img, *out_hw), rtol=0, atol=1e-5)
    # not the half-pixel rule of F.interpolate(align_corners=False)
    torch_rule = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=out_hw,
                                                 mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(torch_rule - ours).max() > 1.0


def test_preprocess_range_and_layout():
    video = np.zeros((4, 8, 8, 3), np.uint8)
    video[..., 0] = 255
    x = fvd.preprocess(video)
    assert x.shape == (3, 4, 224, 224) and x.dtype == torch.float32
    assert torch.all(x[0] == 1.0) and torch.all(x[1:] == -1.0)
    # float 0..1 input gives the same values as uint8 0..255
    torch.testing.assert_close(fvd.preprocess(video.astype(np.float32) / 255), x, atol=1e-6, rtol=0)
    assert fvd.preprocess(video, resize="none", rescale=False).shape == (3, 4, 8, 8)
    assert fvd.preprocess(video, resize="torch").shape == (3, 4, 224, 224)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    expect = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert fvd.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expect, rel=1e-12)
    # N < dimension: singular covariances; tr sqrt(S1 S2) = sum of sqrt of the product's eigenvalues
    a, b = rng.normal(size=(10, 40)), rng.normal(size=(12, 40)) * 2 + 1
    (m1, c1), (m2, c2) = fvd.feature_stats(a), fvd.feature_stats(b)
    np.testing.assert_allclose(c1, np.cov(a, rowvar=False), rtol=1e-12)  # N-1
    ev = np.clip(np.linalg.eigvals(c1 @ c2).real, 0, None)
    expect = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.sqrt(ev).sum()
    assert fvd.frechet_distance(m1, c1, m2, c2) == pytest.approx(expect, rel=1e-6)
    assert abs(fvd.frechet_distance(m1, c1, m1, c1)) < 1e-6


# ----------------------------------------------------------------------------------------------
# Random-weight checkpoints: the protocol, files and errors do not need the real weights
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpts(random_i3d_file):
    """Calibrated random weights (conftest.random_i3d): logits that move with the input, so FVDs
    between different sets are far from float noise."""
    return {"rgb": random_i3d_file(num_classes=400, in_channels=3),
            "flow": random_i3d_file(num_classes=400, in_channels=2),
            "c157": random_i3d_file(num_classes=157, in_channels=3)}


def write_avi(path: Path, frames: np.ndarray) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (frames.shape[2], frames.shape[1]))
    for f in frames:
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    return path


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("fvd_sets")
    rng = np.random.default_rng(2)
    np.save(d / "a.npy", rng.integers(0, 256, (3, 9, 32, 32, 3), dtype=np.uint8))
    np.save(d / "b.npy", rng.integers(0, 128, (3, 9, 32, 32, 3), dtype=np.uint8))
    vids = d / "videos"
    vids.mkdir()
    for i, n in enumerate((10, 10, 12)):
        write_avi(vids / f"v{i}.avi", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    (vids / "broken.avi").write_bytes(b"not a video at all")
    return d


def cli(*args, check_rc: int | None = None):
    r = subprocess.run([PY, str(ROOT / "fvd.py"), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       env=ENV, timeout=300)
    if check_rc is not None:
        assert r.returncode == check_rc, r.stderr[-2000:]
    return r


@pytest.mark.slow
def test_api_stats_file_and_protocol_check(ckpts, sets, tmp_path):
    ext = fvd.Extractor(weights=ckpts["rgb"], workers=0, progress=False)
    sa, sb = ext.statistics(sets / "a.npy"), ext.statistics(sets / "b.npy")
    assert sa.n == sb.n == 3 and sa.protocol["resize"] == "tf1-bilinear" and sa.protocol["frames"] == 9
    assert sa.mu.shape == (400,) and sa.sigma.shape == (400, 400) and sa.mu.dtype == np.float64
    res = fvd.compute(sa, sb)
    # a set against itself is 0 to float rounding; two different sets are far from that
    assert abs(fvd.compute(sa, sa)["fvd"]) < 1e-6 * res["fvd"] and res["fvd"] > 1.0
    sa.save(tmp_path / "a.npz")
    loaded = fvd.Stats.load(tmp_path / "a.npz")
    assert loaded.n == 3 and loaded.protocol == sa.protocol
    assert fvd.compute(tmp_path / "a.npz", sb)["fvd"] == pytest.approx(res["fvd"], rel=1e-12)
    # an in-memory array is a set too, streamed the same way
    same = ext.statistics(np.load(sets / "a.npy"))
    np.testing.assert_allclose(same.mu, sa.mu, rtol=1e-12)
    # statistics made with another protocol are refused
    other = fvd.Stats(sb.mu, sb.sigma, sb.n, dict(sb.protocol, resize="torch-bilinear-antialias"))
    with pytest.raises(UserError, match="different protocols.*resize"):
        fvd.compute(loaded, other)


@pytest.mark.slow
def test_cli_json_save_stats_and_folder(ckpts, sets, tmp_path):
    r = cli(sets / "a.npy", sets / "b.npy", "--weights", ckpts["rgb"], "--json", "--workers", "1",
            "--save-stats", tmp_path / "a.npz", tmp_path / "b.npz", check_rc=0)
    out = json.loads(r.stdout)
    assert out["fvd"] > 1.0 and out["protocol"]["rescale"] == "2*x/255-1" and out["protocol"]["covariance"] == "float64, N-1"
    r2 = cli(tmp_path / "a.npz", tmp_path / "b.npz", check_rc=0)  # no model needed
    assert r2.stdout.strip() == f"FVD: {out['fvd']:.4f}"  # the same statistics: the same value, as printed
    # a folder with one unreadable video and unequal lengths: --frames 10 --skip-bad lists it
    r3 = cli(sets / "videos", sets / "a.npy", "--weights", ckpts["rgb"], "--frames", "9", "--skip-bad",
             "--workers", "1", check_rc=1)
    assert "FVD:" in r3.stdout and "skipped:" in r3.stderr and "broken.avi" in r3.stderr


@pytest.mark.parametrize("case,expect", [
    ("one", "at least 2 videos"),
    ("lengths", "different lengths need --frames"),
    ("broken", "broken.avi"),
    ("nan", "NaN"),
    ("range", "outside 0..1"),
    ("flow", "flow weights"),
    ("c157", "157-class"),
    ("shape", "expected an array"),
])
@pytest.mark.slow
def test_bad_input_is_one_line(case, expect, ckpts, sets, tmp_path):
    rng = np.random.default_rng(3)
    a, w = sets / "a.npy", ckpts["rgb"]
    if case == "one":
        np.save(tmp_path / "one.npy", rng.integers(0, 256, (1, 9, 32, 32, 3), dtype=np.uint8))
        args = [tmp_path / "one.npy", a]
    elif case == "lengths":
        lst = tmp_path / "list.txt"
        lst.write_text(f"{sets / 'videos' / 'v0.avi'}\n{sets / 'videos' / 'v2.avi'}\n")
        args = [lst, a]
    elif case == "broken":
        lst = tmp_path / "list.txt"
        lst.write_text(f"{sets / 'videos' / 'v0.avi'}\n{sets / 'videos' / 'broken.avi'}\n")
        args = [lst, a, "--frames", "9"]
    elif case in ("nan", "range"):
        x = rng.random((2, 9, 32, 32, 3), dtype=np.float32)
        x[1, 3, 4, 5, 0] = np.nan if case == "nan" else 1.5
        np.save(tmp_path / "f.npy", x)
        args = [a, tmp_path / "f.npy"]
    elif case == "shape":
        np.save(tmp_path / "s.npy", np.zeros((2, 10, 32, 32), np.uint8))
        args = [a, tmp_path / "s.npy"]
    else:
        args, w = [a, a], ckpts[case]
    r = cli(*args, "--weights", w, "--workers", "0")
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line]  # (tqdm's bar may precede it)
    assert len(errors) == 1 and expect in errors[0] and "Traceback" not in r.stderr, r.stderr[-2000:]


def _stats_file(path: Path, **protocol) -> Path:
    base = {"protocol": None, "weights": "rgb_scratch", "weights_sha256": "98da0e30cf61d4ea", "frames": 16,
            "frames_requested": 16, "stride": 1, "num_clips": None, "clips": None, "seed": 0, "resize": "tf1-bilinear",
            "size": 224, "rescale": "2*x/255-1", "features": "400 logits averaged over time",
            "covariance": "float64, N-1", "precision": "fp32", "reference_precision": True, "code_version": "abc"}
    rng = np.random.default_rng(0)
    fvd.Stats(rng.random(400), np.eye(400), 3, {k: v for k, v in dict(base, **protocol).items() if v != "DROP"},
              videos=3).save(path)
    return path


def test_save_stats_over_another_protocol_is_refused(tmp_path):
    """--save-stats over a file made with another protocol: one line naming the difference unless
    --overwrite; the same protocol (or one differing only in name, code version or an unused seed)
    is rewritten; a key a file from before --stride lacks reads as its default (1)."""
    old = fvd.Stats.load(_stats_file(tmp_path / "old.npz")).protocol
    target = _stats_file(tmp_path / "t.npz")
    for same in ({}, {"weights": "renamed"}, {"code_version": "def"}, {"seed": 7}, {"frames": 40}):
        fvd.check_stats_target(target, dict(old, **same), overwrite=False)
    for change, msg in [({"stride": 2}, "stride 1 there, 2 asked"), ({"precision": "bf16"}, "precision 'fp32' there"),
                        ({"frames_requested": 32}, "frames_requested 16 there, 32 asked"),
                        ({"clips": 3}, "clips None there, 3 asked"), ({"weights_sha256": "0" * 16}, "weights_sha256"),
                        ({"resize": "none", "size": None}, "resize 'tf1-bilinear' there, 'none' asked")]:
        with pytest.raises(UserError, match=rf"t.npz was made with another protocol \({msg}.*; give --overwrite"):
            fvd.check_stats_target(target, dict(old, **change), overwrite=False)
        fvd.check_stats_target(target, dict(old, **change), overwrite=True)
    clipped = _stats_file(tmp_path / "c.npz", clips=3)  # random clips: the seed counts
    with pytest.raises(UserError, match=r"seed 0 there, 7 asked"):
        fvd.check_stats_target(clipped, dict(old, clips=3, seed=7), overwrite=False)
    no_stride = _stats_file(tmp_path / "s.npz", stride="DROP")
    fvd.check_stats_target(no_stride, old, overwrite=False)
    with pytest.raises(UserError, match=r"stride 1 there \(not recorded: the default\), 2 asked"):
        fvd.check_stats_target(no_stride, dict(old, stride=2), overwrite=False)
    (tmp_path / "x.npz").write_bytes(b"something else")
    with pytest.raises(UserError, match=r"x.npz: not statistics .*; give --overwrite"):
        fvd.check_stats_target(tmp_path / "x.npz", old, overwrite=False)
    # through main, statistics copied from a stats file (no model): refused before writing, kept, then replaced
    other = _stats_file(tmp_path / "other.npz", precision="bf16", reference_precision=False)
    before = target.read_bytes()
    with pytest.raises(UserError, match=r"precision 'fp32' there, 'bf16' asked"):
        fvd.main([str(other), "--save-stats", str(target), "-q"])
    assert target.read_bytes() == before
    assert fvd.main([str(other), "--save-stats", str(target), "--overwrite", "-q"]) == 0
    assert fvd.Stats.load(target).protocol["precision"] == "bf16"


@pytest.mark.slow
def test_cli_save_stats_rerun_with_another_protocol(ckpts, sets, tmp_path):
    """The CLI: exit 2 with one line and the file kept; --overwrite recomputes it."""
    a, out = sets / "a.npy", tmp_path / "a.npz"
    cli(a, "--weights", ckpts["rgb"], "--workers", "0", "--save-stats", out, check_rc=0)
    first = out.read_bytes()
    r = cli(a, "--weights", ckpts["rgb"], "--workers", "0", "--save-stats", out, "--resize-method", "torch")
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "made with another protocol (resize 'tf1-bilinear' there, 'torch-bilinear-antialias'" \
        " asked); give --overwrite" in errors[0] and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert out.read_bytes() == first
    cli(a, "--weights", ckpts["rgb"], "--workers", "0", "--save-stats", out, "--resize-method", "torch", "--overwrite",
        check_rc=0)
    assert fvd.Stats.load(out).protocol["resize"] == "torch-bilinear-antialias"


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(ckpts, sets, tmp_path):
    args = [sets / "a.npy", sets / "b.npy", "--weights", ckpts["rgb"], "--json", "--workers", "0",
            "--batch-size", "1", "--frames", "9", "--clips", "1", "--seed", "4"]
    one = json.loads(cli(*args, check_rc=0).stdout)
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "fvd.py"), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads(r.stdout)  # rank 0 alone prints
    assert two["n_a"] == one["n_a"] == 3
    assert one["fvd"] > 1.0 and two["fvd"] == pytest.approx(one["fvd"], rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("flag,resize", [(["--resize-method", "torch"], "torch"), (["--no-resize"], "none")])
def test_cli_resize_method_and_no_resize(flag, resize, ckpts, sets):
    """--resize-method torch and --no-resize reach the extractor: the command line gives the
    API's FVD for that resize rule, and not the reference (tf1) one."""
    a, b = sets / "a.npy", sets / "b.npy"
    out = json.loads(cli(a, b, "--weights", ckpts["rgb"], "--json", "--workers", "0", *flag, check_rc=0).stdout)
    kw = dict(weights=ckpts["rgb"], workers=0, progress=False)
    want = fvd.compute(a, b, resize=resize, **kw)
    # float32 logits summed on other thread counts: equal to float rounding, not bit for bit
    assert out["protocol"] == want["protocol"] and out["fvd"] == pytest.approx(want["fvd"], rel=1e-6)
    tf1 = fvd.compute(a, b, **kw)
    assert tf1["protocol"]["resize"] != out["protocol"]["resize"]
    assert abs(out["fvd"] - tf1["fvd"]) > 1e-3 * tf1["fvd"]


# ----------------------------------------------------------------------------------------------
# The real rgb_scratch weights: the reference's numbers
# ----------------------------------------------------------------------------------------------

def constant_sets(tmp_path: Path, n: int, t: int) -> tuple[Path, Path]:
    a, b = tmp_path / f"zeros_{n}x{t}.npy", tmp_path / f"full_{n}x{t}.npy"
    np.save(a, np.zeros((n, t, 64, 64, 3), np.uint8))
    np.save(b, np.full((n, t, 64, 64, 3), 255, np.uint8))
    return a, b


@pytest.mark.slow
def test_reference_zeros_vs_255_30_frames(rgb_scratch_weights, tmp_path):
    """TF (google-research + TF-Hub) prints 151.39244 for 8 zero vs 8 all-255 videos, 30 x 64x64.
    Every video of a set is the same, so the FVD does not depend on N (see the 15-frame test):
    2 vs 2, each set one batch, as TF's 8 were."""
    a, b = constant_sets(tmp_path, 2, 30)
    r = cli(a, b, "--weights", rgb_scratch_weights, "--json", "--batch-size", "2", check_rc=0)
    assert json.loads(r.stdout)["fvd"] == pytest.approx(151.392, abs=0.05)


@pytest.mark.slow
def test_reference_zeros_vs_255_15_frames(rgb_scratch_weights, tmp_path):
    """The 16 vs 16 x 15 frames example. Every video of a set is the same, so the covariances are
    0 and the FVD is the squared distance of the two logit vectors whatever N: 2 vs 2 suffice.
    Our TF-exact 'SAME' padding gives 133.908 (the StyleGAN-V TorchScript port prints 133.70)."""
    a, b = constant_sets(tmp_path, 2, 15)
    res = fvd.compute(a, b, weights=rgb_scratch_weights, workers=0, progress=False)
    assert res["fvd"] == pytest.approx(133.908, abs=0.05)


@pytest.mark.slow
def test_real_videos(rgb_scratch_weights, sample_videos, tmp_path):
    """Random 16-frame clips: bikes vs bigbuckbunny is far, bikes vs other bikes clips is near."""
    bikes, bunny = sample_videos
    (tmp_path / "bikes.txt").write_text(f"{bikes}\n")
    (tmp_path / "bunny.txt").write_text(f"{bunny}\n")
    kw = dict(weights=rgb_scratch_weights, frames=16, clips=3, workers=1, progress=False)
    ext = fvd.Extractor(**kw)
    s_bikes, s_bunny = ext.statistics(tmp_path / "bikes.txt"), ext.statistics(tmp_path / "bunny.txt")
    s_bikes2 = fvd.Extractor(**dict(kw, seed=1)).statistics(tmp_path / "bikes.txt")
    far = fvd.frechet_distance(s_bikes.mu, s_bikes.sigma, s_bunny.mu, s_bunny.sigma)
    near = fvd.frechet_distance(s_bikes.mu, s_bikes.sigma, s_bikes2.mu, s_bikes2.sigma)
    assert s_bikes.n == 3 and np.isfinite(far) and far > 2 * near > 0


# ----------------------------------------------------------------------------------------------
# Protocols: clips over a set, stride, presets, KVD, statistics files, the in-loop metric.
# The model is synthetic_charades' calibrated random I3D (its logits respond to the input).
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live_weights(random_i3d_file) -> Path:
    return random_i3d_file(seed=0, num_classes=400)


def test_sample_plan_uniform_over_videos_reused_only_past_one_each():
    plan = fvd.sample_plan(10, 7, seed=0)
    assert sorted(k for ks in plan.values() for k in ks) == list(range(7))
    assert len(plan) == 7 and all(len(ks) == 1 for ks in plan.values())  # N <= V: all different videos
    assert fvd.sample_plan(10, 7, seed=0) == plan and fvd.sample_plan(10, 7, seed=1) != plan
    many = fvd.sample_plan(3, 8, seed=5)
    assert sorted(len(ks) for ks in many.values()) == [2, 3, 3]  # N > V: each video N // V or N // V + 1 times
    # over seeds every video is chosen about equally often (uniform): 4000 draws of 1 clip from 4 videos
    counts = np.bincount([next(iter(fvd.sample_plan(4, 1, seed=s))) for s in range(4000)], minlength=4)
    assert np.all(np.abs(counts - 1000) < 120), counts


def test_clips_over_a_set_take_frames_stride_apart_from_valid_starts():
    arr = np.zeros((5, 40, 2, 2, 3), np.uint8)
    arr[:] = np.arange(40, dtype=np.uint8)[None, :, None, None, None]  # pixel value = frame index
    arr[:, :, 0, 0, 1] = np.arange(5, dtype=np.uint8)[:, None]         # channel 1 at (0, 0) = video index
    frames, stride, n = 4, 8, 12
    plan = fvd.sample_plan(5, n, seed=3)
    data = fvd.VideoSet("npy", arr, sorted(plan), frames, None, 3, "none", False, stride, plan)
    data._arr = arr
    starts = []
    for j in range(len(data)):
        i, _, clips, err = data[j]
        assert err is None and clips.shape == (len(plan[i]), 3, frames, 2, 2)
        for c in clips:
            t = c[0, :, 1, 1].numpy().astype(int)
            assert np.all(np.diff(t) == stride) and 0 <= t[0] and t[-1] <= 39  # whole clip inside the video
            assert np.all(c[1, :, 0, 0].numpy() == i)
            starts.append(t[0])
    assert len(starts) == n and len(set(starts)) > 3  # random starts, not always 0
    data2 = fvd.VideoSet("npy", arr, sorted(plan), frames, None, 3, "none", False, stride, plan)
    data2._arr = arr
    assert all(torch.equal(data[j][2], data2[j][2]) for j in range(len(data)))  # seeded: reproducible


def kvd_direct(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 of KID with k(a, b) = (a.b / d + 1)^3, pair by pair."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kvd_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)) + 0.5
    mean, std = fvd.kernel_distance(x, y, subsets=3, subset_size=6)  # the whole sets: every subset the same
    assert mean == pytest.approx(kvd_direct(x, y), rel=1e-12) and std < 1e-12
    # subsets: each a draw without replacement; mean and std over them
    x, y = rng.normal(size=(9, 5)), rng.normal(size=(11, 5)) * 1.5
    mean, std = fvd.kernel_distance(x, y, subsets=4, subset_size=5, seed=2)
    g = np.random.default_rng(2)
    values = []
    for _ in range(4):
        xi, yi = g.choice(9, 5, replace=False), g.choice(11, 5, replace=False)
        values.append(kvd_direct(x[xi], y[yi]))
    assert mean == pytest.approx(np.mean(values), rel=1e-12) and std == pytest.approx(np.std(values), rel=1e-9)
    # same distribution: near 0 (unbiased), unlike the biased V-statistic
    a, b = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    assert abs(fvd.kernel_distance(a, b, subsets=5, subset_size=200)[0]) < 0.05


def test_presets_are_stylegan_v_metrics():
    assert fvd.PROTOCOLS["fvd2048_16f"] == dict(num_clips=2048, frames=16, stride=1)
    assert fvd.PROTOCOLS["fvd2048_128f"] == dict(num_clips=2048, frames=128, stride=1)
    assert fvd.PROTOCOLS["fvd2048_128f_subsample8f"] == dict(num_clips=2048, frames=16, stride=8)
    assert fvd._apply_preset("fvd2048_128f_subsample8f", None, None, 1, None) == (16, 2048, 8)
    with pytest.raises(UserError, match="fixes .*drop --frames 32"):
        fvd._apply_preset("fvd2048_16f", 32, None, 1, None)


@pytest.mark.slow
def test_num_clips_stats_file_records_protocol_and_counts(live_weights, tmp_path):
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (3, 20, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + 60, 0, 255).astype(np.uint8)
    kw = dict(weights=live_weights, workers=0, progress=False, frames=9, num_clips=5, stride=2, seed=1)
    ext = fvd.Extractor(**kw)
    sa, sb = ext.statistics(a), ext.statistics(b)
    assert (sa.n, sa.videos, sa.features.shape) == (5, 3, (5, 400))
    p = sa.protocol
    assert (p["num_clips"], p["frames"], p["stride"], p["seed"], p["protocol"]) == (5, 9, 2, 1, None)
    assert "5 clips of 9 frames, every 2th" in p["sampling"]
    sa.save(tmp_path / "a.npz")
    loaded = fvd.Stats.load(tmp_path / "a.npz")
    assert (loaded.n, loaded.videos, loaded.protocol) == (5, 3, p) and np.array_equal(loaded.features, sa.features)
    res = fvd.compute(loaded, sb, kvd=True)
    assert res["fvd"] > 0 and (res["n_a"], res["videos_a"]) == (5, 3) and res["kvd"]["subset_size"] == 5
    assert res["kvd"]["mean"] == pytest.approx(fvd.kernel_distance(sa.features, sb.features, seed=0)[0], rel=1e-12)
    # the same videos give FVD 0 (the same clips: seeded), a brighter set does not
    assert fvd.compute(loaded, ext.statistics(a))["fvd"] == pytest.approx(0.0, abs=1e-6 * res["fvd"])
    # another stride (or frames, or preset) is another protocol: refused
    other = fvd.Extractor(**dict(kw, stride=1)).statistics(b)
    with pytest.raises(UserError, match="different protocols.*stride: 2 vs 1"):
        fvd.compute(loaded, other)


@pytest.mark.slow
def test_metric_equals_fvd_py(live_weights):
    """FVDMetric on uint8 (N, T, H, W, 3) and on float (N, T, 3, H, W) in [0, 1] equals fvd.py's
    number on the same videos to 1e-6 relative."""
    from fvd_metric import FVDMetric
    rng = np.random.default_rng(6)
    real = rng.integers(0, 256, (3, 9, 24, 24, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) // 2 + rng.integers(0, 60, real.shape), 0, 255).astype(np.uint8)
    ref = fvd.compute(real, fake, weights=live_weights, workers=0, progress=False, batch_size=2, kvd=True)
    metric = FVDMetric(live_weights)
    for k in (0, 2):  # batches of 2 (then 1), as fvd.py's
        metric.update(torch.from_numpy(real[k:k + 2]), real=True)
        metric.update(torch.from_numpy(fake[k:k + 2]).permute(0, 1, 4, 2, 3).float() / 255, real=False)
    assert metric.compute() == pytest.approx(ref["fvd"], rel=1e-6)
    assert metric.compute_kvd()[0] == pytest.approx(ref["kvd"]["mean"], rel=1e-6)
    metric.reset()
    with pytest.raises(UserError, match="at least 2 clips"):
        metric.compute()
    with pytest.raises(UserError, match=r"\(N, T, 3, H, W\)"):
        metric.update(torch.rand(2, 10, 24, 24, 3), real=True)


@pytest.mark.parametrize("case,expect", [
    ("one_video", "at least 2 videos"),
    ("short", "not one clip fits"),
    ("stride", "--stride 8 (a span of 65)"),
    ("preset_clash", "fvd2048_16f fixes"),
    ("other_protocol", "different protocols (frames: 9 vs 10"),
    ("kvd_old_stats", "--kvd needs each clip's features"),
])
@pytest.mark.slow
def test_protocol_bad_input_is_one_line(case, expect, live_weights, tmp_path):
    rng = np.random.default_rng(7)
    a = tmp_path / "a.npy"
    np.save(a, rng.integers(0, 256, (3, 20, 32, 32, 3), dtype=np.uint8))
    common = ["--weights", live_weights, "--workers", "0"]
    if case == "one_video":
        np.save(tmp_path / "one.npy", rng.integers(0, 256, (1, 20, 32, 32, 3), dtype=np.uint8))
        args = [tmp_path / "one.npy", a, "--frames", "9", "--num-clips", "4"]
    elif case == "short":
        args = [a, a, "--frames", "21", "--num-clips", "2"]
    elif case == "stride":
        args = [a, a, "--frames", "9", "--stride", "8", "--num-clips", "2"]  # 9 frames 8 apart: 65 > 20
    elif case == "preset_clash":
        args = [a, a, "--protocol", "fvd2048_16f", "--frames", "9"]
    elif case == "other_protocol":
        cli(a, "--frames", "9", "--num-clips", "3", "--save-stats", tmp_path / "s9.npz", *common, check_rc=0)
        args = [tmp_path / "s9.npz", a, "--frames", "10", "--num-clips", "3"]
    else:  # a statistics file without features (as written before --kvd existed)
        fvd.Stats(np.zeros(400), np.eye(400), 3, {"frames": 9}).save(tmp_path / "old.npz")
        args = [tmp_path / "old.npz", tmp_path / "old.npz", "--kvd"]
    r = cli(*args, *common)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and expect in errors[0] and "Traceback" not in r.stderr, r.stderr[-2000:]


METRIC_SCRIPT = '''
import os, sys, json
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[2])
import fvd_metric
rng = np.random.default_rng(0)
real = rng.integers(0, 256, (4, 9, 24, 24, 3), dtype=np.uint8)
fake = np.clip(real.astype(int) + 50, 0, 255).astype(np.uint8)
world = int(os.environ.get("WORLD_SIZE", "1"))
if world > 1:
    dist.init_process_group("gloo")
rank = dist.get_rank() if world > 1 else 0
m = fvd_metric.FVDMetric(sys.argv[1])
for k in range(rank, 4, world):  # each process its share of the clips
    m.update(torch.from_numpy(real[k:k + 1]), real=True)
    m.update(torch.from_numpy(fake[k:k + 1]), real=False)
value = m.compute()
if rank == 0:
    print(json.dumps({"fvd": value, "torchmetrics": fvd_metric.HAVE_TORCHMETRICS}))
'''


@pytest.mark.slow
def test_metric_two_processes_equal_one(live_weights, tmp_path):
    """Under torchrun each process updates its share; compute() gathers them all (torchmetrics'
    sync when it is installed, else the plain class's all_gather) and equals one process."""
    script = tmp_path / "metric.py"
    script.write_text(METRIC_SCRIPT)
    args = [str(script), str(live_weights), str(ROOT)]
    one = subprocess.run([PY, *args], capture_output=True, text=True, env=ENV, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert b["fvd"] == pytest.approx(a["fvd"], rel=1e-9) and a["fvd"] > 0
