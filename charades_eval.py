"""Charades evaluation: per-frame probabilities of a Charades-layout video (the whole video
streamed exactly, per-time logits upsampled to the frames), scored as Charades_v1_classify and
Charades_v1_localize score them; `evaluate` is the whole evaluation in named steps, used by
eval_i3d.py and by training's validation. The metrics live in charades_metrics.py / metrics.py."""
from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

import frame_io
from charades_dataset import VideoAnnotation, find_videos, read_annotations
from charades_metrics import chance_map, localize_points, resample_frames, upsample_logits, video_labels
from errors import FrameError, UserError
from frame_io import MODE_CHANNELS
from metrics import mean_average_precision
from streaming import inference_model, stream_logits
from video_eval import padded_frames, prepare_model
from video_sources import VideoSource, open_video

log = logging.getLogger(__name__)


def prefetched_frames(root: str | Path, vid: str, num_frames: int, mode: str, resize: int | None, crop: int,
                      pool: ThreadPoolExecutor, ahead: int = 64) -> Callable[[], Iterator[np.ndarray]]:
    """A function returning an iterator over the video's frames (resized, center cropped,
    uint8), decoded by the pool's threads at most `ahead` frames in advance (OpenCV releases
    the GIL while decoding, so the threads decode in parallel with the network)."""

    def load(i: int) -> np.ndarray:
        frame = frame_io.load_charades_frames(root, vid, i + 1, 1, mode=mode, resize=resize)[0]
        return frame_io.center_crop(frame, crop)

    def frames() -> Iterator[np.ndarray]:
        queue: collections.deque = collections.deque()
        try:
            for i in range(num_frames):
                queue.append(pool.submit(load, i))
                if len(queue) >= ahead:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
        finally:  # an error (or an abandoned iterator) leaves no work behind
            for f in queue:
                f.cancel()
    return frames


def video_frame_probs(model: torch.nn.Module, root: str | Path, vid: str, num_frames: int, mode: str = "rgb",
                      resize: int | None = None, crop: int = 224, device: torch.device | str = "cpu",
                      return_logits: bool = False, pool: ThreadPoolExecutor | None = None,
                      min_frames: int = 1) -> np.ndarray:
    """Per-frame sigmoid probabilities (C, num_frames) float32 of a Charades-layout video
    (root/VID/VID-000001.jpg; flow VID-000001x.jpg / y.jpg): the whole video through the
    network exactly (stream_logits), the logits layer on the pooled features, per-time
    logits upsampled to the frames. return_logits gives the upsampled logits instead.
    An InceptionI3d is first copied with for_inference('fp32') (pass one from
    inference_model to avoid the copy per video). pool: threads that decode ahead. A video
    shorter than min_frames is padded with its last frame to min_frames (as training pads its
    clips) and the per-frame outputs cut back to its own frames."""
    device = torch.device(device)
    model = inference_model(model, device)
    if pool is not None:
        frames_fn = prefetched_frames(root, vid, num_frames, mode, resize, crop, pool)
    else:
        src = VideoSource(key=vid, layout="charades", path=str(root), vid=vid)
        frames_fn = lambda: open_video(src, mode, resize, crop)[2]  # noqa: E731
    total = max(num_frames, min_frames)
    if total > num_frames:
        frames_fn = padded_frames(frames_fn, total)
    logits = stream_logits(model, frames_fn, device, total=total)  # (C, T')
    frame_logits = upsample_logits(logits, total)[:, :num_frames]
    out = frame_logits if return_logits else torch.sigmoid(frame_logits)
    return out.numpy().astype(np.float32, copy=False)


def list_videos(annotations: dict[str, VideoAnnotation], subset: str, roots: Sequence[tuple[str, Path]],
                num_classes: int, max_videos: int | None = None) -> list[tuple[str, list[int]]]:
    """[(vid, [frame count under each (mode, root)])] of the subset's videos found under every
    root. Videos missing from a root are skipped with a warning; none found is an error."""
    vids = sorted(v for v, a in annotations.items() if a.subset == subset)
    if not vids:
        raise UserError(f"the split has no {subset} videos")
    for v in vids:
        for c, _, _ in annotations[v].actions:
            if c >= num_classes:
                raise UserError(f"video {v}: class {c} in the annotations, but the model has {num_classes} classes")
    counts: dict[str, list[int]] = {v: [] for v in vids}
    for mode, root in roots:
        for v, n in find_videos(annotations, subset, root, mode)[0]:
            counts[v].append(n)
    out = [(v, c) for v, c in counts.items() if len(c) == len(roots)]
    missing = [v for v in vids if len(counts[v]) < len(roots)]
    if missing and out:
        log.warning("%d of %d %s videos have no frames under %s (e.g. %s); skipped", len(missing), len(vids),
                    subset, " / ".join(str(r) for _, r in roots), missing[0])
    if not out:
        where = ", ".join(str(frame_io.charades_frame_path(r, "VID", 1, "x" if m == "flow" else "")) for m, r in roots)
        raise UserError(f"none of the split's {len(vids)} {subset} videos has frames there (expected {where})")
    return out[:max_videos] if max_videos else out


def _model_device(model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def _score_video(vid: str, n: int, outs: list[np.ndarray], fusion: str, ann: VideoAnnotation, num_classes: int,
                 acc: tuple[list, ...]) -> None:
    """Append one video's classification and localization scores and labels to acc."""
    vids, v_scores, v_labels, f_scores, f_labels = acc
    if len(outs) == 1:
        probs = outs[0]
    else:  # two streams: outs are logits, each on its stream's own frame count
        logits = [resample_frames(o, n) for o in outs]
        if fusion == "prob":
            probs = np.mean([1.0 / (1.0 + np.exp(-lg)) for lg in logits], axis=0)
        else:
            probs = 1.0 / (1.0 + np.exp(-np.mean(logits, axis=0)))
    vids.append(vid)
    v_scores.append(probs.max(axis=1))
    v_labels.append(video_labels(ann, num_classes))
    frames, labels = localize_points(ann, n, num_classes)
    f_scores.append(probs[:, frames].T)
    f_labels.append(labels)


def evaluate(model: torch.nn.Module | str | Path, split: str | Path | Sequence[str | Path], root: str | Path,
             mode: str = "rgb", *, subset: str = "testing", flow_model: torch.nn.Module | str | Path | None = None,
             flow_root: str | Path | None = None, fusion: str = "prob", resize: int | None = None,
             crop: int = 224, device: torch.device | str | None = None, precision: str = "fp32",
             max_videos: int | None = None, workers: int = 2, details: bool = False,
             progress: bool = True, clip_frames: int = 64,
             on_video: Callable[[int, int], None] | None = None) -> dict:
    """Charades classification and localization mAP of a model (or an RGB + flow pair).

    model / flow_model: an InceptionI3d (in train mode or not, possibly DDP-wrapped: it is
    copied with for_inference and left untouched), a FastInceptionI3d, or a weights path or
    name. mode is the first model's stream; with flow_model it must be 'rgb', and flow_root
    holds the flow frames. split: charades.json and/or Charades CSVs. device None: the
    model's. workers: threads decoding frames ahead of the network (0: none). clip_frames:
    videos shorter than this are padded with their last frame, as training pads its clips.
    Returns {"classification_map", "localization_map", "videos", "num_classes", "classes_scored",
    "localization_classes_scored", "classification_chance", "localization_chance",
    "failed": [[vid, message]]}; with details also "vids",
    "video_scores" (N, C), "video_labels" (N, C), "frame_scores" (N*25, C), "frame_labels".
    Chance is the mean over the scored classes of their positive rate (the mAP of random
    scores, in expectation). on_video(done, total) is called before each video."""
    _check_request(mode, fusion, flow_model, flow_root)
    device = torch.device(device) if device is not None else _model_device(model)
    streams = _streams(model, mode, root, flow_model, flow_root, device, precision)
    num_classes = streams[0][2].num_classes
    annotations = read_annotations(split)
    videos = list_videos(annotations, subset, [(m, r) for m, r, _ in streams], num_classes, max_videos)
    acc, failed = _score_videos(videos, streams, annotations, fusion, num_classes, device, resize, crop,
                                clip_frames, workers, progress, on_video)
    return _result(acc, failed, num_classes, details)


def _check_request(mode: str, fusion: str, flow_model, flow_root) -> None:
    if mode not in MODE_CHANNELS:
        raise UserError(f"mode must be rgb or flow, not {mode!r}")
    if fusion not in ("prob", "logit"):
        raise UserError(f"fusion must be prob or logit, not {fusion!r}")
    if flow_model is not None and mode != "rgb":
        raise UserError("two-stream evaluation: the first model is the RGB one (mode rgb)")
    if flow_model is not None and flow_root is None:
        raise UserError("two-stream evaluation needs flow_root (the flow frames)")


def _streams(model, mode: str, root, flow_model, flow_root, device: torch.device,
             precision: str) -> list[tuple[str, Path, torch.nn.Module]]:
    """[(mode, frames root, inference model)] of one or two streams, their class counts equal."""
    streams = [(mode, Path(root), prepare_model(model, mode, device, precision))]
    if flow_model is not None:
        streams.append(("flow", Path(flow_root), prepare_model(flow_model, "flow", device, precision)))
    num_classes = streams[0][2].num_classes
    if any(m.num_classes != num_classes for _, _, m in streams):
        raise UserError(f"the RGB model has {num_classes} classes, the flow model {streams[1][2].num_classes}")
    return streams


def _score_videos(videos, streams, annotations, fusion: str, num_classes: int, device: torch.device, resize, crop: int,
                  clip_frames: int, workers: int, progress: bool,
                  on_video: Callable[[int, int], None] | None = None) -> tuple[tuple[list, ...], list]:
    """Every video through every stream (decoding threads ahead); (score lists, failed videos)."""
    acc: tuple[list, ...] = ([], [], [], [], [])
    failed = []
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode") if workers > 0 else None
    t0, frames_done = time.perf_counter(), 0
    try:
        for i, (vid, counts) in enumerate(tqdm(videos, desc="evaluating", unit="video", disable=not progress)):
            if on_video is not None:
                on_video(i, len(videos))
            try:
                outs = [video_frame_probs(m, r, vid, n, mo, resize, crop, device, len(streams) > 1, pool,
                                          min_frames=clip_frames)
                        for (mo, r, m), n in zip(streams, counts)]
            except Exception as e:  # one unreadable video must not stop the evaluation
                msg = str(e) if isinstance(e, FrameError) else f"{e.__class__.__name__}: {e}"
                log.error("%s: %s", vid, msg)
                failed.append([vid, msg])
                continue
            _score_video(vid, counts[0], outs, fusion, annotations[vid], num_classes, acc)
            frames_done += sum(counts)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    dt = time.perf_counter() - t0
    log.info("evaluated %d videos (%d frames, %d stream(s)) in %.1fs: %.1f frames/s; %d failed", len(acc[0]),
             frames_done, len(streams), dt, frames_done / max(dt, 1e-9), len(failed))
    return acc, failed


def _result(acc: tuple[list, ...], failed: list, num_classes: int, details: bool) -> dict:
    vids, v_scores, v_labels, f_scores, f_labels = acc
    if not vids:
        raise UserError(f"no video could be evaluated ({len(failed)} failed, e.g. {failed[0][0]}: {failed[0][1]})")
    v_scores, v_labels = np.stack(v_scores), np.stack(v_labels)
    f_scores, f_labels = np.concatenate(f_scores), np.concatenate(f_labels)
    result = {
        "classification_map": mean_average_precision(v_scores, v_labels),
        "localization_map": mean_average_precision(f_scores, f_labels),
        "videos": len(vids),
        "num_classes": int(num_classes),
        "classes_scored": int((v_labels.sum(axis=0) > 0).sum()),
        "localization_classes_scored": int((f_labels.sum(axis=0) > 0).sum()),
        "classification_chance": chance_map(v_labels),
        "localization_chance": chance_map(f_labels),
        "failed": failed,
    }
    if details:
        result.update(vids=vids, video_scores=v_scores, video_labels=v_labels, frame_scores=f_scores,
                      frame_labels=f_labels)
    return result
