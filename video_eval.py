"""Accuracy of I3D models on labelled video datasets (video_datasets: UCF101, HMDB51, Kinetics,
class folders, lists): the evaluation driver of eval_i3d.py and of training's --eval-every.

A video's scores (C,) come from one of two protocols:
- whole video (views=0, the default): every frame through the network exactly (streaming
  stream_logits), the per-time logits averaged over time (the paper's classifier: logits
  averaged over time, then softmax); a video shorter than clip_frames repeats its last frame;
- views N, crops 1 | 3: N clips of clip_frames frames (every frame_stride-th) uniformly spaced
  over the video, each center cropped or cropped at both ends and the middle of its longer side
  (mmaction2's ThreeCrop), softmax averaged over the N * crops views (mmaction2 / PySlowFast).
Multi-label datasets use the sigmoid instead of the softmax. Two streams: the RGB and flow
probabilities averaged (the I3D paper's late fusion).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

import frame_io
import metrics
import weights
from video_sources import VideoSource, open_video
from errors import FrameError, UserError
from frame_io import MODE_CHANNELS
from streaming import inference_model, stream_logits
from video_datasets import LabelledVideos, Sample, flow_path, frame_count, load_clip

log = logging.getLogger(__name__)


def padded_frames(frames_fn: Callable[[], Iterator[np.ndarray]], total: int) -> Callable[[], Iterator[np.ndarray]]:
    """The stream, then its last frame repeated up to `total` frames."""
    def frames() -> Iterator[np.ndarray]:
        count, last = 0, None
        for last in frames_fn():
            count += 1
            yield last
        if last is not None:
            for _ in range(total - count):
                yield last
    return frames


def prepare_model(model: torch.nn.Module | str | Path, mode: str, device: torch.device,
             precision: str) -> torch.nn.Module:
    if isinstance(model, (str, Path)):
        model = weights.load_model(weights.resolve_weights(model), mode=mode, device=device)
    fast = inference_model(model, device, precision)
    if fast.in_channels != MODE_CHANNELS[mode]:
        raise UserError(f"a {fast.in_channels}-channel model cannot evaluate {mode} frames "
                        f"({MODE_CHANNELS[mode]} channels)")
    return fast


def _to_probs(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


def spatial_crops(frames: np.ndarray, size: int, crops: int) -> list[np.ndarray]:
    """(T, H, W, C) -> 1 center crop, or 3 crops along the longer side (start, middle, end)."""
    if crops == 1 or size == 0:
        return [frame_io.center_crop(frames, size)] if size else [frames]
    h, w = frames.shape[1:3]
    if min(h, w) < size:
        raise FrameError(f"frames of {h}x{w} are smaller than the {size} crop")
    out = []
    for frac in (0.0, 0.5, 1.0):
        top = int(round((h - size) * (frac if h > w else 0.5)))
        left = int(round((w - size) * (frac if w >= h else 0.5)))
        out.append(frames[:, top:top + size, left:left + size])
    return out


def whole_video_logits(model: torch.nn.Module, path: str, mode: str, resize: int | None, crop: int,
                       device: torch.device, min_frames: int) -> torch.Tensor:
    """(C,) logits of the whole video, averaged over time."""
    src = VideoSource(key=Path(path).name, layout="folder" if Path(path).is_dir() else "file", path=path)
    total = open_video(src, mode, resize, crop)[0]
    frames_fn = lambda: open_video(src, mode, resize, crop)[2]  # noqa: E731  (the engine may read twice)
    if total < min_frames:
        frames_fn, total = padded_frames(frames_fn, min_frames), min_frames
    return stream_logits(model, frames_fn, device, total=total).float().mean(dim=1)


def views_probs(model: torch.nn.Module, path: str, mode: str, resize: int | None, crop: int, device: torch.device,
                clip_frames: int, frame_stride: int, views: int, crops: int, multilabel: bool) -> torch.Tensor:
    """(C,) probabilities averaged over views x crops clips."""
    n = frame_count(path, mode)
    span = (clip_frames - 1) * frame_stride + 1
    starts = np.round(np.linspace(0, max(0, n - span), views)).astype(int)
    probs = []
    for s in starts:
        idx = [min(int(s) + k * frame_stride, max(n - 1, 0)) for k in range(clip_frames)]
        clip = load_clip(path, idx, mode, resize)
        x = np.stack([frame_io.to_tensor_layout(frame_io.to_model_range(c)) for c in spatial_crops(clip, crop, crops)])
        with torch.no_grad():
            out = model(torch.from_numpy(x).to(device)).float().mean(dim=2).cpu()
        probs.append(_to_probs(out, multilabel))
    return torch.cat(probs).mean(dim=0)


def video_probs(model: torch.nn.Module, path: str, mode: str, *, resize: int | None, crop: int,
                device: torch.device, clip_frames: int, frame_stride: int = 1, views: int = 0, crops: int = 1,
                multilabel: bool = False) -> np.ndarray:
    """(C,) class probabilities of one video (see the module docstring for the protocols)."""
    if views:
        return views_probs(model, path, mode, resize, crop, device, clip_frames, frame_stride, views, crops,
                           multilabel).numpy()
    return _to_probs(whole_video_logits(model, path, mode, resize, crop, device, clip_frames), multilabel).numpy()


def _stream_path(sample: Sample, mode: str, flow_root: Path | None) -> str:
    return str(flow_path(sample, flow_root)) if mode == "flow" else sample.path


def score(probs: np.ndarray, labels: list[tuple[int, ...]], num_classes: int, multilabel: bool) -> dict:
    """top1, top5, mean_class_accuracy (single-label) or map (multi-label) of (N, C) probabilities."""
    if multilabel:
        hot = np.zeros_like(probs, dtype=np.int8)
        for i, ls in enumerate(labels):
            hot[i, list(ls)] = 1
        order = np.argsort(-probs, axis=1, kind="stable")
        hit = lambda k: float(np.mean([bool(set(o[:k]) & set(ls)) for o, ls in zip(order, labels)]))  # noqa: E731
        return {"top1": hit(1), "top5": hit(5), "mean_class_accuracy": None,
                "map": metrics.mean_average_precision(probs, hot)}
    y = np.array([ls[0] for ls in labels])
    return {"top1": metrics.top_k_accuracy(probs, y, 1), "top5": metrics.top_k_accuracy(probs, y, min(5, num_classes)),
            "mean_class_accuracy": metrics.mean_class_accuracy(probs, y, num_classes)}


def evaluate(model, data: LabelledVideos, mode: str = "rgb", *, flow_model=None, flow_root: str | Path | None = None,
             resize: int | None = None, crop: int = 224, device: torch.device | str = "cpu", precision: str = "fp32",
             clip_frames: int = 64, frame_stride: int = 1, views: int = 0, crops: int = 1,
             max_videos: int | None = None, progress: bool = True,
             on_video: Callable[[int, int], None] | None = None) -> dict:
    """Accuracy of a model (InceptionI3d, possibly in training, a fast copy, or a weights path /
    name), or an RGB + flow pair, on the dataset's samples. mode 'flow' (or flow_model) reads
    dense_flow.py folders under flow_root mirroring the videos' layout. Returns {"top1", "top5",
    "mean_class_accuracy", ("map" for multi-label), "videos", "missing", "failed": [[key, message]],
    "missing_videos": [[path, where]], "keys", "probs" (N, C), "labels"}. on_video(done, total) is
    called before each video (eval_i3d.py: what a stopped run says)."""
    device = torch.device(device)
    if crops not in (1, 3):
        raise UserError(f"crops must be 1 or 3, not {crops}")
    if (mode == "flow" or flow_model is not None) and flow_root is None:
        raise UserError("flow evaluation of a video dataset needs --flow-root (dense_flow.py folders)")
    streams = [(mode, prepare_model(model, mode, device, precision))]
    if flow_model is not None:
        if mode != "rgb":
            raise UserError("two-stream evaluation: the first model is the RGB one (mode rgb)")
        streams.append(("flow", prepare_model(flow_model, "flow", device, precision)))
    for m, net in streams:
        if net.num_classes != data.num_classes:
            raise UserError(f"the {m} model has {net.num_classes} classes, the dataset {data.num_classes}: "
                            f"not a model for this dataset")
    flow_root = Path(flow_root) if flow_root is not None else None
    samples = data.samples[:max_videos] if max_videos else data.samples
    keys, probs, labels, failed = [], [], [], []
    for i, s in enumerate(tqdm(samples, desc="evaluating", unit="video", disable=not progress)):
        if on_video is not None:
            on_video(i, len(samples))
        try:
            ps = [video_probs(net, _stream_path(s, m, flow_root), m, resize=resize, crop=crop, device=device,
                              clip_frames=clip_frames, frame_stride=frame_stride, views=views, crops=crops,
                              multilabel=data.multilabel) for m, net in streams]
        except Exception as e:  # one unreadable video must not stop the evaluation
            msg = str(e) if isinstance(e, FrameError) else f"{s.path}: {e.__class__.__name__}: {e}"
            log.error("%s", msg)
            failed.append([s.key, msg])
            continue
        keys.append(s.key)
        probs.append(np.mean(ps, axis=0))
        labels.append(s.labels)
    if not keys:
        raise UserError(f"no video could be evaluated ({len(failed)} failed"
                        + (f", e.g. {failed[0][1]})" if failed else ")"))
    probs_arr = np.stack(probs).astype(np.float64)
    result = score(probs_arr, labels, data.num_classes, data.multilabel)
    result.update(videos=len(keys), missing=len(data.missing), failed=failed,
                  missing_videos=[[m.path, m.where] for m in data.missing], keys=keys, probs=probs_arr,
                  labels=labels)
    return result
