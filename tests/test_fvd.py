"""fvd.py: the reference's numbers (151.392 for zeros vs 255s at 30 frames), the TF1 resize rule
against an independent loop, the Frechet distance against closed forms, statistics files,
torchrun with 2 processes equal to one, and bad input (one line, non-zero exit)."""
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
    """TF (google-research + TF-Hub) prints 151.39244 for 8 zero vs 8 all-255 videos, 30 x 64x64."""
    a, b = constant_sets(tmp_path, 8, 30)
    r = cli(a, b, "--weights", rgb_scratch_weights, "--json", "--batch-size", "8", check_rc=0)
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
