"""Render a small synthetic dataset in the Charades layout, for tests and quick experiments.

    python synthetic_charades.py data/synthetic --videos 40 --classes 4 --frames 48 --size 128 [--flow]

Each video is a static textured background with one or two textured squares. An action of
class k is a square moving in direction 2*pi*k/K (class 0: right, then counter-clockwise)
between its start and end time; outside its action a square stands still. So the only cue
to the class is the motion, which is what I3D must learn. Writes:
- OUT/rgb/VID/VID-000001.jpg ... (24 fps),
- with --flow, OUT/flow/VID/VID-000001x.jpg / y.jpg: the exact ground-truth motion, encoded as
  dense_flow.py encodes TV-L1 flow (frame i holds the motion from frame i to i+1),
- OUT/charades.json (training / testing subsets) and the same as official-style CSVs
  OUT/Charades_v1_train.csv / Charades_v1_test.csv.
Deterministic for a given --seed.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

import atomic_io
import frame_io
from cli import add_verbosity, run_main, start
from pytorch_i3d import InceptionI3d
from tvl1 import flow_to_uint8

log = logging.getLogger(__name__)
FPS = 24.0


def smooth_texture(h: int, w: int, rng: np.random.Generator, blur: float = 2.0) -> np.ndarray:
    """A random RGB texture with detail at several scales (uint8 (h, w, 3))."""
    noise = rng.random((h, w, 3)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), blur) * 0.7 + cv2.GaussianBlur(noise, (0, 0), blur * 4) * 0.3
    tex = (tex - tex.min()) / max(1e-6, float(tex.max() - tex.min()))
    return (tex * 255).astype(np.uint8)


def render_video(rng: np.random.Generator, num_classes: int, num_frames: int, height: int, width: int,
                 object_size: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, float, float]]]:
    """(frames uint8 (T, H, W, 3), flow float32 (T, H, W, 2), actions [(class, start_s, end_s)])."""
    background = smooth_texture(height, width, rng, blur=3.0)
    frames = np.repeat(background[None], num_frames, axis=0)
    flow = np.zeros((num_frames, height, width, 2), np.float32)
    actions = []
    for _ in range(int(rng.integers(1, 3))):
        cls = int(rng.integers(num_classes))
        length = int(rng.integers(max(4, num_frames // 3), num_frames + 1))
        start = int(rng.integers(0, num_frames - length + 1))
        angle = 2 * math.pi * cls / num_classes
        direction = np.array([math.cos(angle), -math.sin(angle)])  # image y points down
        room = np.array([width - object_size, height - object_size], dtype=np.float64)
        speed = min(3.0, 0.8 * float(room.min()) / max(1, length))
        travel = direction * speed * length
        # A start point from which the whole path stays inside the frame.
        lo = np.maximum(0, -travel)
        hi = room - np.maximum(0, travel)
        p0 = lo + rng.random(2) * np.maximum(0, hi - lo)
        patch = smooth_texture(object_size, object_size, rng, blur=1.0)
        for t in range(num_frames):
            moved = min(max(t - start, 0), length)
            x, y = np.round(p0 + direction * speed * moved).astype(int)
            frames[t, y:y + object_size, x:x + object_size] = patch
            if start <= t < start + length:  # moving from frame t to t + 1
                nxt = np.round(p0 + direction * speed * (moved + 1)).astype(int)
                flow[t, y:y + object_size, x:x + object_size] = (nxt[0] - x, nxt[1] - y)
        actions.append((cls, round(start / FPS, 3), round((start + length) / FPS, 3)))
    return frames, flow, actions


def write_dataset(out: str | Path, videos: int = 40, num_classes: int = 4, frames: int = 48, size: int = 128,
                  flow: bool = False, test_fraction: float = 0.3, seed: int = 0, progress: bool = True) -> Path:
    """Render the dataset into `out`; returns the path of its charades.json."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    height, width = size, int(round(size * 1.25))
    annotations = {}
    n_test = max(1, int(round(videos * test_fraction)))
    for i in tqdm(range(videos), desc="rendering", unit="video", disable=not progress):
        vid = f"SYN{i:04d}"
        n = int(rng.integers(max(8, frames * 3 // 4), frames + 1))
        rgb, motion, actions = render_video(rng, num_classes, n, height, width, object_size=max(8, size // 4))
        with atomic_io.atomic_dir(out / "rgb" / vid) as d:
            for t, img in enumerate(rgb, start=1):
                frame_io.write_image(d / frame_io.charades_frame_name(vid, t), img)
        if flow:
            with atomic_io.atomic_dir(out / "flow" / vid) as d:
                for t, f in enumerate(motion, start=1):
                    fx, fy = flow_to_uint8(f)
                    frame_io.write_image(d / frame_io.charades_frame_name(vid, t, "x"), fx)
                    frame_io.write_image(d / frame_io.charades_frame_name(vid, t, "y"), fy)
        annotations[vid] = {"subset": "testing" if i < n_test else "training",
                            "duration": round(n / FPS, 3), "actions": [list(a) for a in actions]}
    split = out / "charades.json"
    with atomic_io.atomic_write(split) as tmp:
        tmp.write_text(json.dumps(annotations, indent=1))
    for subset, name in (("training", "Charades_v1_train.csv"), ("testing", "Charades_v1_test.csv")):
        with atomic_io.atomic_write(out / name) as tmp, tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "subject", "scene", "actions", "length"])
            for vid, a in annotations.items():
                if a["subset"] == subset:
                    acts = ";".join(f"c{c:03d} {s:.2f} {e:.2f}" for c, s, e in a["actions"])
                    w.writerow([vid, "synthetic", "synthetic", acts, f"{a['duration']:.2f}"])
    log.info("wrote %d videos (%d testing) of %d classes to %s", videos, n_test, num_classes, out)
    return split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--classes", type=int, default=4, help="motion directions (classes)")
    p.add_argument("--frames", type=int, default=48, help="longest video, in frames (shortest: 3/4 of it)")
    p.add_argument("--size", type=int, default=128, help="frame height (width is 1.25x)")
    p.add_argument("--flow", action="store_true", help="also write ground-truth flow frames")
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    add_verbosity(p)
    args = p.parse_args(argv)
    start(args)
    if args.videos < 2 or args.classes < 1 or args.frames < 8 or args.size < 32:
        p.error("need --videos >= 2, --classes >= 1, --frames >= 8, --size >= 32")
    write_dataset(args.out, args.videos, args.classes, args.frames, args.size, args.flow, args.test_fraction, args.seed,
                  progress=not args.quiet)
    return 0


def make_jpeg_video(root: Path, vid: str, n: int, h: int = 256, w: int = 340) -> None:
    """Charades-layout JPEGs root/VID/VID-000001.jpg...: moving gradients plus noise."""
    rng, (yy, xx) = np.random.default_rng(0), np.mgrid[0:h, 0:w]
    (root / vid).mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], axis=-1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        frame_io.write_image(frame_io.charades_frame_path(root, vid, i), img)


def make_video_file(path: str | Path, n: int, h: int = 256, w: int = 340, seed: int = 0, fps: float = 25.0) -> Path:
    """An mp4 (mp4v) of n frames h x w: a smooth random texture sliding 2 px right and 1 px down
    per frame (real motion for TV-L1, content for the network). Raises OSError if not written."""
    path, rng = Path(path), np.random.default_rng(seed)
    tex = cv2.cvtColor(smooth_texture(h, w, rng), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(n):
        writer.write(np.roll(tex, (i, 2 * i), axis=(0, 1)))
    writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise OSError(f"{path}: OpenCV wrote no video")
    return path


def calibrated_random_i3d(seed: int = 0, num_classes: int = 157, in_channels: int = 3,
                          final_endpoint: str = "Logits") -> torch.nn.Module:
    """A randomly initialised I3D whose batch-norm statistics are set from one random batch, so
    its activations and features are of order 1 like a trained model's (with the default
    statistics they shrink to ~1e-5, and any tolerance check would be empty). For tests and
    benchmarks without downloaded weights."""
    torch.manual_seed(seed)
    model = InceptionI3d(num_classes=num_classes, in_channels=in_channels, final_endpoint=final_endpoint)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.momentum = 1.0  # running statistics := this batch's
    model.train()
    x = torch.rand(2, in_channels, 24, 32, 32) * 2 - 1
    with torch.no_grad():
        model._features(x)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.momentum = 0.01
    model.eval()
    # Scale the last block's output units (ReLU is positively homogeneous) so the features
    # peak near 1, like a trained model's, rather than ~10.
    last = model._modules[list(model.end_points)[-1]]
    units = [last] if hasattr(last, "bn") else [getattr(last, n) for n in ("b0", "b1b", "b2b", "b3b") if hasattr(last, n)]
    if units:
        with torch.no_grad():
            peak = float(model._features(x).abs().max())
            for u in units:
                u.bn.weight.div_(peak)
                u.bn.bias.div_(peak)
    return model


def gray_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random float32 texture in 0..255: noise blurred at several scales."""
    tex = np.zeros((h, w), np.float32)
    for sigma, weight in ((1.5, 0.5), (4.0, 1.0), (10.0, 1.0)):
        tex += weight * cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma) * sigma
    tex -= tex.min()
    return tex * (255.0 / max(float(tex.max()), 1e-6))


def synthetic_pair(h: int, w: int, kind: str = "translation", seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame0, frame1, flow) with frame0(x) = frame1(x + flow(x)) exactly: uint8 (h, w) frames
    and the float32 (h, w, 2) ground truth. kind: 'translation', 'rotation' or 'patch' (a
    textured square moving over a still textured background)."""
    rng = np.random.default_rng(seed)
    m = 24  # margin so that x + flow stays on the texture
    tex = gray_texture(h + 2 * m, w + 2 * m, rng)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "translation":
        d = rng.uniform(-4, 4, size=2).astype(np.float32)
        flow = np.broadcast_to(d, (h, w, 2)).copy()
    elif kind == "rotation":
        a = np.deg2rad(rng.uniform(-3, 3))
        cx, cy = w / 2, h / 2
        fx = np.cos(a) * (xs - cx) - np.sin(a) * (ys - cy) + cx - xs
        fy = np.sin(a) * (xs - cx) + np.cos(a) * (ys - cy) + cy - ys
        flow = np.stack([fx, fy], -1).astype(np.float32)
    elif kind == "patch":
        frame1 = tex[m:m + h, m:m + w].copy()
        patch_tex = gray_texture(h, w, rng)
        d = rng.uniform(-3, 3, size=2).astype(np.float32)
        ph, pw = h // 3, w // 3
        top, left = h // 3, w // 3
        # frame1: the patch at (top, left); frame0: the same patch shifted by -d
        frame1[top:top + ph, left:left + pw] = patch_tex[:ph, :pw]
        map_x = (xs + d[0]).astype(np.float32)
        map_y = (ys + d[1]).astype(np.float32)
        inside = (map_x >= left) & (map_x <= left + pw - 1) & (map_y >= top) & (map_y <= top + ph - 1)
        frame0 = frame1.copy()
        moved = cv2.remap(frame1, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        frame0[inside] = moved[inside]
        flow = np.zeros((h, w, 2), np.float32)
        flow[inside] = d
        # pixels of frame0 where the patch was in frame1 but is not anymore: background that
        # reappears (occluded in frame1); its true flow is undefined, keep it 0
        return (np.clip(np.rint(frame0), 0, 255).astype(np.uint8),
                np.clip(np.rint(frame1), 0, 255).astype(np.uint8), flow)
    else:
        raise ValueError(f"unknown synthetic kind {kind!r}")
    frame1 = tex[m:m + h, m:m + w]
    frame0 = cv2.remap(tex, xs + flow[..., 0] + m, ys + flow[..., 1] + m, cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REPLICATE)
    return (np.clip(np.rint(frame0), 0, 255).astype(np.uint8),
            np.clip(np.rint(frame1), 0, 255).astype(np.uint8), flow)


if __name__ == "__main__":
    run_main(main)
