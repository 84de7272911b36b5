"""Charades clips for training: annotations, per-frame multi-hot labels, random 64-frame clips.

Annotations come in both forms people have:
- the original pytorch-i3d `charades.json`:
  {VID: {"subset": "training"|"testing", "duration": seconds, "actions": [[class, start_s, end_s], ...]}}
- the official `Charades_v1_train.csv` / `Charades_v1_test.csv` (columns id, ..., actions,
  length; actions written "c092 11.90 21.20;c147 0.00 12.60"; the subset from the file name).
Frames are read from the original layout by frame_io (root/VID/VID-000001.jpg; flow
VID-000001x.jpg / y.jpg), kept uint8 until the last step, then scaled to [-1, 1].
"""
from __future__ import annotations


import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

import frame_io
from errors import UserError

log = logging.getLogger(__name__)

SUBSETS = ("training", "testing")
NUM_CLASSES = 157


@dataclass
class VideoAnnotation:
    subset: str  # "training" or "testing"
    duration: float  # seconds
    actions: list[tuple[int, float, float]] = field(default_factory=list)  # (class, start_s, end_s)


def _check_action(path: Path, vid: str, cls, start, end) -> tuple[int, float, float]:
    try:
        cls, start, end = int(cls), float(start), float(end)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: video {vid}: bad action {[cls, start, end]!r}") from e
    if cls < 0:
        raise UserError(f"{path}: video {vid}: negative class {cls}")
    return cls, start, end


def _read_json(path: Path) -> dict[str, VideoAnnotation]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a valid charades.json ({e})") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a valid charades.json (expected an object of videos)")
    out = {}
    for vid, entry in data.items():
        if not isinstance(entry, dict) or not {"subset", "duration", "actions"} <= entry.keys():
            raise UserError(f"{path}: video {vid}: needs subset, duration and actions")
        if entry["subset"] not in SUBSETS:
            raise UserError(f"{path}: video {vid}: subset {entry['subset']!r} is not training or testing")
        try:
            duration = float(entry["duration"])
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: video {vid}: bad duration {entry['duration']!r}") from e
        if not isinstance(entry["actions"], list) or any(not isinstance(a, (list, tuple)) or len(a) != 3
                                                         for a in entry["actions"]):
            raise UserError(f"{path}: video {vid}: actions must be [[class, start, end], ...]")
        out[vid] = VideoAnnotation(entry["subset"], duration,
                                   [_check_action(path, vid, *a) for a in entry["actions"]])
    return out


def _read_csv(path: Path, subset: str | None) -> dict[str, VideoAnnotation]:
    if subset is None:
        name = path.name.lower()
        subset = "testing" if "test" in name else "training" if "train" in name else None
        if subset is None:
            raise UserError(f"{path}: cannot tell training from testing by the file name; give the subset")
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a readable Charades CSV ({e})") from e
    if not rows or not {"id", "actions", "length"} <= set(rows[0]):
        raise UserError(f"{path}: not a Charades CSV (needs columns id, actions, length)")
    out = {}
    for row in rows:
        vid = row["id"]
        actions = []
        for item in filter(None, (row["actions"] or "").split(";")):
            parts = item.split()
            if len(parts) != 3 or not parts[0].startswith("c"):
                raise UserError(f"{path}: video {vid}: bad action {item!r} (expected 'c092 11.90 21.20')")
            actions.append(_check_action(path, vid, parts[0][1:], parts[1], parts[2]))
        try:
            duration = float(row["length"])
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: video {vid}: bad length {row['length']!r}") from e
        out[vid] = VideoAnnotation(subset, duration, actions)
    return out


def read_annotations(paths: str | Path | Sequence[str | Path], subset: str | None = None) -> dict[str, VideoAnnotation]:
    """Videos of one or more annotation files (charades.json and/or Charades CSVs), merged.
    Anything invalid raises UserError naming the file."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: dict[str, VideoAnnotation] = {}
    for p in map(Path, paths):
        if not p.is_file():
            raise UserError(f"{p}: no such split file")
        out.update(_read_csv(p, subset) if p.suffix.lower() == ".csv" else _read_json(p))
    return out


def frame_labels(actions: Sequence[tuple[int, float, float]], num_frames: int, fps: float,
                 num_classes: int) -> np.ndarray:
    """(num_classes, num_frames) float32 multi-hot: frame f (0-based) has class c when
    start < f / fps < end, as the original (built without a Python loop over frames)."""
    labels = np.zeros((num_classes, num_frames), dtype=bool)
    if actions and num_frames:
        acts = np.asarray(actions, dtype=np.float64).reshape(-1, 3)
        cls = acts[:, 0].astype(np.int64)
        if cls.max() >= num_classes:
            raise UserError(f"class {cls.max()} in the annotations, but the model has {num_classes} classes")
        t = np.arange(num_frames) / fps
        inside = (t[None, :] > acts[:, 1:2]) & (t[None, :] < acts[:, 2:3])
        np.logical_or.at(labels, cls, inside)
    return labels.astype(np.float32)


@dataclass
class VideoItem:
    vid: str
    num_frames: int
    labels: np.ndarray  # (num_classes, num_frames) float32


def find_videos(annotations: dict[str, VideoAnnotation], subset: str, root: str | Path,
                mode: str) -> tuple[list[tuple[str, int]], list[str]]:
    """([(vid, frame count)] found under root, [vids missing there]) of a subset's videos,
    sorted by name. A root that is not a folder is an error."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such {mode} frames root")
    found, missing = [], []
    for vid in sorted(v for v, a in annotations.items() if a.subset == subset):
        n = frame_io.count_charades_frames(root, vid, mode) if (root / vid).is_dir() else 0
        if n:
            found.append((vid, n))
        else:
            missing.append(vid)
    return found, missing


def make_dataset(annotations: dict[str, VideoAnnotation], subset: str, root: str | Path, mode: str,
                 num_classes: int = NUM_CLASSES) -> list[VideoItem]:
    """The subset's videos found under root, with their per-frame labels. Videos missing from
    root are skipped with a warning; none found is an error. Short videos are kept (padded
    when loaded), unlike the original, which dropped videos under 66 frames."""
    found, missing = find_videos(annotations, subset, root, mode)
    items = []
    for vid, n in found:
        ann = annotations[vid]
        fps = n / ann.duration if ann.duration > 0 else 24.0
        items.append(VideoItem(vid, n, frame_labels(ann.actions, n, fps, num_classes)))
    if missing:
        log.warning("%d of %d %s videos have no %s frames under %s (e.g. %s); skipped",
                    len(missing), len(missing) + len(items), subset, mode, root, missing[0])
    if not items:
        raise UserError(f"{root}: none of the split's {len(missing)} {subset} videos has {mode} frames there "
                        f"(expected {frame_io.charades_frame_path(root, 'VID', 1, 'x' if mode == 'flow' else '')})")
    return items




def load_clip(root: str | Path, item: VideoItem, start: int, clip_frames: int, mode: str,
              resize: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Frames start..start+clip_frames-1 (0-based) as uint8 (T, H, W, C) and their labels
    (num_classes, T); past the video's end the last frame (and its labels) repeats."""
    n_real = min(clip_frames, item.num_frames - start)
    frames = frame_io.load_charades_frames(root, item.vid, start + 1, n_real, mode=mode, resize=resize)
    labels = item.labels[:, start:start + n_real]
    if n_real < clip_frames:
        pad = clip_frames - n_real
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
        labels = np.concatenate([labels, np.repeat(labels[:, -1:], pad, axis=1)], axis=1)
    return frames, labels


class Charades(Dataset):
    """Random clips of a Charades subset: (clip (C, T, H, W) float32 in [-1, 1], labels (classes, T)).

    Every random choice of item i in epoch e (the clip start and the transforms' draws) comes
    from a Generator seeded with (seed, e, i), so an item is the same in any worker, on any
    rank, and after a resume. Call set_epoch(e) at the start of each epoch."""

    def __init__(self, split_file: str | Path | Sequence[str | Path], subset: str, root: str | Path,
                 mode: str = "rgb", transforms: Callable | None = None, clip_frames: int = 64,
                 resize: int | None = None, num_classes: int = NUM_CLASSES, seed: int = 0):
        if mode not in ("rgb", "flow"):
            raise UserError(f"mode must be rgb or flow, not {mode!r}")
        self.root, self.mode, self.transforms = Path(root), mode, transforms
        self.clip_frames, self.resize, self.num_classes = clip_frames, resize, num_classes
        self.seed, self.epoch = seed, 0
        self.data = make_dataset(read_annotations(split_file), subset, root, mode, num_classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.data[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        start = int(rng.integers(0, max(1, item.num_frames - self.clip_frames + 1)))
        frames, labels = load_clip(self.root, item, start, self.clip_frames, self.mode, self.resize)
        if self.transforms is not None:
            frames = self.transforms(frames, rng)
        clip = frame_io.to_tensor_layout(frame_io.to_model_range(frames))
        return torch.from_numpy(clip), torch.from_numpy(np.ascontiguousarray(labels))


