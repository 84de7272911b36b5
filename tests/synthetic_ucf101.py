"""A synthetic UCF101: motion classes as video files in UCF101's layout, with its split files.

    python tests/synthetic_ucf101.py OUT [--per-class 10] [--classes 4] [--frames 16] [--size 112] [--test-groups 3]

Each video is a textured scene filmed by a camera whose motion is its class (Still, Pan,
Shake, Zoom: see camera_motion; textures, directions and senses random), so motion is the
only cue. Writes
OUT/videos/CLASS/v_CLASS_gGG_cCC.avi (MPEG-4 part 2 in AVI, as UCF101's XviD; group GG,
clip CC) and OUT/ucfTrainTestlist/{classInd.txt, trainlist01.txt, testlist01.txt}, written as
the official files are (Windows line ends; test lists without labels). Groups 1..G_TEST are
the test split (UCF101 splits by group too). Deterministic for a given seed.

The videos are as long as the clips the README's recipe trains on (16 frames, --clip-frames
16), so the whole-video evaluation sees what training saw: with 32-frame videos and 16-frame
training clips the whole-video top-1 stayed at 0.75 (the Still videos went to Zoom) while 3
views of 16 frames scored 1.0.
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

CLASS_NAMES = ("Still", "Pan", "Shake", "Zoom")
FPS = 25.0
SCENE_SEED = 12345  # every video films the same scene: only the motion tells the classes apart


def camera_motion(cls: int, frames: int, rng: np.random.Generator, center: tuple[float, float]) -> list[np.ndarray]:
    """2x3 affine maps, one per frame, of a camera motion class: Still (a tripod), Pan (6
    px/frame, random direction), Shake (random jumps of up to 12 px), Zoom (in or out,
    4 %/frame)."""
    out = []
    angle = rng.uniform(0, 2 * math.pi)
    sign = rng.choice([-1.0, 1.0])
    for t in range(frames):
        if cls == 0:
            m = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float64)
        elif cls == 1:
            m = np.array([[1, 0, 6 * t * math.cos(angle)], [0, 1, 6 * t * math.sin(angle)]], dtype=np.float64)
        elif cls == 2:
            dx, dy = rng.uniform(-12, 12, size=2)
            m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float64)
        else:
            m = cv2.getRotationMatrix2D(center, 0.0, (1.04 ** (sign * t)))
        out.append(m)
    return out


def render(rng: np.random.Generator, cls: int, num_classes: int, frames: int, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a textured scene seen by a camera moving by its class (the view is
    cut from the middle of a larger texture, so no border enters it)."""
    h, w = size, int(round(size * 4 / 3))
    scene = smooth_texture(3 * h, 3 * w, np.random.default_rng(SCENE_SEED), blur=2.0)  # one scene for all
    center = (1.5 * w, 1.5 * h)
    out = np.empty((frames, h, w, 3), np.uint8)
    for t, m in enumerate(camera_motion(cls % len(CLASS_NAMES), frames, rng, center)):
        view = cv2.warpAffine(scene, m, (3 * w, 3 * h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out[t] = view[h:2 * h, w:2 * w]
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


def write_dataset(out: str | Path, per_class: int = 10, num_classes: int = 4, frames: int = 16, size: int = 112,
                  test_groups: int = 3, seed: int = 0) -> Path:
    """Render the dataset; returns OUT/ucfTrainTestlist. Clip g of a class is in group g + 1;
    groups 1..test_groups form testlist01."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"1 to {len(CLASS_NAMES)} classes")
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
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--test-groups", type=int, default=3, help="groups 1..N form testlist01")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_dataset(a.out, a.per_class, a.classes, a.frames, a.size, a.test_groups, seed=a.seed))
