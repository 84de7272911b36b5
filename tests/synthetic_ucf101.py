"""A synthetic UCF101: motion classes as video files in UCF101's layout, with its split files.

    python tests/synthetic_ucf101.py OUT [--per-class 10] [--classes 4] [--frames 32] [--size 112]

Each video is a textured background with one textured square moving the whole time in the
direction of its class (class k: angle 2*pi*k/K), so motion is the only cue. Writes
OUT/videos/CLASS/v_CLASS_gGG_cCC.avi (MPEG-4 part 2 in AVI, as UCF101's XviD; group GG,
clip CC) and OUT/ucfTrainTestlist/{classInd.txt, trainlist01.txt, testlist01.txt}, written as
the official files are (Windows line ends; test lists without labels). Groups 1..G_TEST are
the test split (UCF101 splits by group too). Deterministic for a given seed.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from synthetic_charades import smooth_texture  # noqa: E402

CLASS_NAMES = ("MoveRight", "MoveUp", "MoveLeft", "MoveDown", "MoveUpRight", "MoveUpLeft", "MoveDownLeft",
               "MoveDownRight")
FPS = 25.0


def render(rng: np.random.Generator, cls: int, num_classes: int, frames: int, size: int) -> np.ndarray:
    h, w = size, int(round(size * 4 / 3))
    obj = max(8, size // 4)
    background = smooth_texture(h, w, rng, blur=3.0)
    patch = smooth_texture(obj, obj, rng, blur=1.0)
    angle = 2 * math.pi * cls / num_classes + rng.uniform(-0.2, 0.2)
    d = np.array([math.cos(angle), -math.sin(angle)])
    room = np.array([w - obj, h - obj], dtype=np.float64)
    speed = min(3.0, 0.8 * float(room.min()) / frames)
    travel = d * speed * (frames - 1)
    lo, hi = np.maximum(0, -travel), room - np.maximum(0, travel)
    p0 = lo + rng.random(2) * np.maximum(0, hi - lo)
    out = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        x, y = np.round(p0 + d * speed * t).astype(int)
        out[t, y:y + obj, x:x + obj] = patch
    return out


def write_video(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write MPEG-4 video here")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def write_dataset(out: str | Path, per_class: int = 10, num_classes: int = 4, frames: int = 32, size: int = 112,
                  test_groups: int = 3, seed: int = 0) -> Path:
    """Render the dataset; returns OUT/ucfTrainTestlist. Clip g of a class is in group g + 1;
    groups 1..test_groups form testlist01."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = CLASS_NAMES[:num_classes]
    train, test = [], []
    for c, name in enumerate(names):
        for g in range(per_class):
            rel = f"{name}/v_{name}_g{g + 1:02d}_c01.avi"
            write_video(out / "videos" / rel, render(rng, c, num_classes, frames, size))
            (test if g < test_groups else train).append((rel, c + 1))
    lists = out / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    crlf = lambda lines: ("\r\n".join(lines) + "\r\n").encode()  # noqa: E731  (the official files' line ends)
    (lists / "classInd.txt").write_bytes(crlf([f"{i + 1} {n}" for i, n in enumerate(names)]))
    (lists / "trainlist01.txt").write_bytes(crlf([f"{r} {c}" for r, c in train]))
    (lists / "testlist01.txt").write_bytes(crlf([r for r, _ in test]))
    return lists


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_dataset(a.out, a.per_class, a.classes, a.frames, a.size, seed=a.seed))
