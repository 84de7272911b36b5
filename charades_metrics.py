"""Charades' metrics and ground truth: per-time logits stretched to frames, the video-level
labels (Charades_v1_classify), the 25 time points of Charades_v1_localize, and the chance
level of a mAP. The scores themselves (average precision, mAP) live in metrics.py and are
re-exported here for the original's users; the evaluation driver is charades_eval.py."""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from charades_dataset import VideoAnnotation
from metrics import average_precision, average_precisions, mean_average_precision  # noqa: F401 (old users)


LOCALIZE_POINTS = 25  # time points per video in Charades_v1_localize


ALIGN_CORNERS = False  # how per-time logits are stretched to frames (training uses the same)


def upsample_logits(logits: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-time logits (..., C, T') -> per-frame logits (..., C, num_frames): linear
    interpolation with align_corners=False (each of the T' steps stands for an equal stretch
    of the clip, as the original F.upsample(x, t, mode='linear') computes in PyTorch >= 0.4)."""
    squeeze = logits.dim() == 2
    x = logits[None] if squeeze else logits
    out = F.interpolate(x.float(), size=num_frames, mode="linear", align_corners=ALIGN_CORNERS)
    return out[0] if squeeze else out


def resample_frames(values: np.ndarray, num_frames: int) -> np.ndarray:
    """(C, T) -> (C, num_frames) by linear interpolation over the video's duration (for a flow
    stream whose frame count differs from the RGB one)."""
    if values.shape[1] == num_frames:
        return values
    x = torch.from_numpy(np.ascontiguousarray(values))[None]
    return F.interpolate(x, size=num_frames, mode="linear", align_corners=False)[0].numpy()


def video_labels(ann: VideoAnnotation, num_classes: int) -> np.ndarray:
    """(C,) 0/1: the classes of the video's actions (Charades_v1_classify)."""
    out = np.zeros(num_classes, dtype=np.int8)
    for c, _, _ in ann.actions:
        out[c] = 1
    return out


def localize_points(ann: VideoAnnotation, num_frames: int, num_classes: int,
                    points: int = LOCALIZE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(frame index of each time point (points,), labels (points, C)): t_j = j / points *
    duration, labelled with the actions for which start <= t_j <= end (Charades_v1_localize);
    scored at frame round(t_j * fps) = round(j * num_frames / points)."""
    j = np.arange(points)
    t = j / points * ann.duration
    frames = np.minimum(np.floor(j * num_frames / points + 0.5).astype(np.int64), num_frames - 1)
    labels = np.zeros((points, num_classes), dtype=np.int8)
    for c, start, end in ann.actions:
        labels[(start <= t) & (t <= end), c] = 1
    return frames, labels


def chance_map(labels: np.ndarray) -> float:
    """The mean over the scored classes of their positive rate (random scores' expected mAP)."""
    rate = labels.mean(axis=0)
    rate = rate[labels.sum(axis=0) > 0]
    return float(rate.mean()) if len(rate) else float("nan")
