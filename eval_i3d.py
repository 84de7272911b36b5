"""Charades mAP of I3D models: classification over whole videos and per-frame localization.

    python eval_i3d.py -mode rgb -root data/Charades_v1_rgb --split data/charades.json -load_model models/rgb_charades.pt
    python eval_i3d.py -mode rgb -root RGB_ROOT --split Charades_v1_test.csv -load_model rgb.pt \\
        --flow-root FLOW_ROOT --flow-model flow.pt --json

What is computed, for every video of the subset (default: testing) found under -root:
- The whole video goes through the network at once, exactly and in bounded memory
  (extract_features.stream_features: overlapping temporal chunks that equal the single
  whole-video pass). Frames: the Charades rule (upscale only when the smaller side is under
  226; --resize N for smaller side N), center crop --crop (224).
- The logits layer (a 1x1x1 convolution) on the pooled features gives per-time logits
  (C, T'), T' = ceil(T/8) - 1, upsampled to the video's T frames as training does
  (upsample_logits: linear, align_corners=False, the default of the original's F.upsample in
  today's PyTorch), and the per-frame probabilities are their sigmoid, (C, T).
- Classification (Charades_v1_classify): a video's score for a class is the max over its
  frames of that probability; its labels are the classes in its annotated actions.
- Localization (Charades_v1_localize): 25 time points per video, t_j = j / 25 * duration
  (j = 0..24); each is one item, scored by the probabilities of frame round(t_j * fps) and
  labelled with the actions for which start <= t_j <= end (the official rule).
- mAP: the mean over classes that have at least one positive (others skipped, as the
  official scripts' NaN handling) of the average precision; see average_precision.
- Two streams (--flow-model): the per-frame probabilities of the RGB and flow models are
  averaged (--fusion prob, default; the late fusion of the I3D paper, which averaged
  predictions) or their logits are averaged before the sigmoid (--fusion logit). A flow
  video with a different frame count is resampled to the RGB count.

Output: one line of the two mAPs (or --json: {"classification_map", "localization_map",
"videos", ...}); --submission PREFIX also writes the official submission files
PREFIX_classify.txt and PREFIX_localize.txt. A video that cannot be read is skipped, named at
the end, and the exit status is 1.

Public API (train_i3d.py uses it): mean_average_precision, average_precision,
upsample_logits, video_frame_probs, evaluate.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import frame_io
from charades_dataset import VideoAnnotation, find_videos, read_annotations
from charades_dataset_full import VideoSource, open_video
from cli import UserError, run_main, select_device, setup_logging
from pytorch_i3d import PRECISIONS, InceptionI3d

log = logging.getLogger("eval_i3d")

LOCALIZE_POINTS = 25  # time points per video in Charades_v1_localize
ALIGN_CORNERS = False  # how per-time logits are stretched to frames (training uses the same)
MODE_CHANNELS = {"rgb": 3, "flow": 2}

# ----------------------------------------------------------------------------------------------
# Average precision
# ----------------------------------------------------------------------------------------------


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one class: sum over score thresholds of (recall gain) * precision, i.e. the mean
    over positives of the precision at the positive's rank. Items with equal scores form one
    threshold (all counted together), so the result does not depend on the order of ties
    (this equals scikit-learn's average_precision_score; without ties it equals the official
    Charades per-positive loop). NaN when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(labels).reshape(-1) > 0
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, tp = scores[order], np.cumsum(positive[order])
    # Last index of each block of tied scores: where the precision is evaluated.
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp_at = tp[last]
    precision = tp_at / (last + 1)
    gain = np.diff(np.r_[0, tp_at]) / n_pos
    return float(np.sum(gain * precision))


def average_precisions(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class AP of (N, C) scores and (N, C) 0/1 labels: (C,), NaN for classes without
    a positive."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (N, C)")
    return np.array([average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])])


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP of (N, C) scores against (N, C) 0/1 labels over the classes with at least one
    positive (NaN if none has, or if a score is NaN: a diverged model must not look fine)."""
    if np.isnan(np.asarray(scores, dtype=np.float64)).any():
        return float("nan")
    aps = average_precisions(scores, labels)
    aps = aps[~np.isnan(aps)]
    return float(aps.mean()) if len(aps) else float("nan")


# ----------------------------------------------------------------------------------------------
# Per-frame probabilities of one video
# ----------------------------------------------------------------------------------------------

def upsample_logits(logits: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-time logits (..., C, T') -> per-frame logits (..., C, num_frames): linear
    interpolation with align_corners=False (each of the T' steps stands for an equal stretch
    of the clip, as the original F.upsample(x, t, mode='linear') computes in PyTorch >= 0.4)."""
    squeeze = logits.dim() == 2
    x = logits[None] if squeeze else logits
    out = F.interpolate(x.float(), size=num_frames, mode="linear", align_corners=ALIGN_CORNERS)
    return out[0] if squeeze else out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DataParallel / DistributedDataParallel."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def inference_model(model: torch.nn.Module, device: torch.device | str | None = None,
                    precision: str = "fp32") -> torch.nn.Module:
    """An eval-only copy for evaluation (model.for_inference: batch norm folded, the source
    model, in train mode or not, is left as it is); a model that is already one is kept."""
    model = unwrap(model)
    if isinstance(model, InceptionI3d):
        if not model._has_logits:
            raise UserError("evaluation needs a model with its logits layer (final_endpoint 'Logits')")
        return model.for_inference(precision=precision, device=device)
    if not hasattr(model, "logits"):
        raise UserError(f"{type(model).__name__} has no logits layer to evaluate")
    return model


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
                      return_logits: bool = False, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Per-frame sigmoid probabilities (C, num_frames) float32 of a Charades-layout video
    (root/VID/VID-000001.jpg; flow VID-000001x.jpg / y.jpg): the whole video through the
    network exactly (stream_features), the logits layer on the pooled features, per-time
    logits upsampled to the frames. return_logits gives the upsampled logits instead.
    An InceptionI3d is first copied with for_inference('fp32') (pass one from
    inference_model to avoid the copy per video). pool: threads that decode ahead."""
    from extract_features import stream_logits

    device = torch.device(device)
    model = inference_model(model, device)
    if pool is not None:
        frames_fn = prefetched_frames(root, vid, num_frames, mode, resize, crop, pool)
    else:
        src = VideoSource(key=vid, layout="charades", path=str(root), vid=vid)
        frames_fn = lambda: open_video(src, mode, resize, crop)[2]  # noqa: E731
    logits = stream_logits(model, frames_fn, device, total=num_frames)  # (C, T')
    frame_logits = upsample_logits(logits, num_frames)
    out = frame_logits if return_logits else torch.sigmoid(frame_logits)
    return out.numpy().astype(np.float32, copy=False)


def resample_frames(values: np.ndarray, num_frames: int) -> np.ndarray:
    """(C, T) -> (C, num_frames) by linear interpolation over the video's duration (for a flow
    stream whose frame count differs from the RGB one)."""
    if values.shape[1] == num_frames:
        return values
    x = torch.from_numpy(np.ascontiguousarray(values))[None]
    return F.interpolate(x, size=num_frames, mode="linear", align_corners=False)[0].numpy()


# ----------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------

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
        where = ", ".join(f"{r}/VID/VID-000001{'x' if m == 'flow' else ''}.jpg" for m, r in roots)
        raise UserError(f"none of the split's {len(vids)} {subset} videos has frames there (expected {where})")
    return out[:max_videos] if max_videos else out


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def _prepare(model: torch.nn.Module | str | Path, mode: str, device: torch.device,
             precision: str) -> torch.nn.Module:
    import weights

    if isinstance(model, (str, Path)):
        model = weights.load_model(weights.resolve_weights(model), mode=mode, device=device)
    fast = inference_model(model, device, precision)
    if fast.in_channels != MODE_CHANNELS[mode]:
        raise UserError(f"a {fast.in_channels}-channel model cannot evaluate {mode} frames "
                        f"({MODE_CHANNELS[mode]} channels)")
    return fast


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
             progress: bool = True) -> dict:
    """Charades classification and localization mAP of a model (or an RGB + flow pair).

    model / flow_model: an InceptionI3d (in train mode or not, possibly DDP-wrapped: it is
    copied with for_inference and left untouched), a FastInceptionI3d, or a weights path or
    name. mode is the first model's stream; with flow_model it must be 'rgb', and flow_root
    holds the flow frames. split: charades.json and/or Charades CSVs. device None: the
    model's. workers: threads decoding frames ahead of the network (0: none).
    Returns {"classification_map", "localization_map", "videos", "num_classes", "classes_scored",
    "localization_classes_scored", "classification_chance", "localization_chance",
    "failed": [[vid, message]]}; with details also "vids",
    "video_scores" (N, C), "video_labels" (N, C), "frame_scores" (N*25, C), "frame_labels".
    Chance is the mean over the scored classes of their positive rate (the mAP of random
    scores, in expectation)."""
    if mode not in MODE_CHANNELS:
        raise UserError(f"mode must be rgb or flow, not {mode!r}")
    if fusion not in ("prob", "logit"):
        raise UserError(f"fusion must be prob or logit, not {fusion!r}")
    if flow_model is not None and mode != "rgb":
        raise UserError("two-stream evaluation: the first model is the RGB one (mode rgb)")
    if flow_model is not None and flow_root is None:
        raise UserError("two-stream evaluation needs flow_root (the flow frames)")
    device = torch.device(device) if device is not None else _model_device(model)
    streams = [(mode, Path(root), _prepare(model, mode, device, precision))]
    if flow_model is not None:
        streams.append(("flow", Path(flow_root), _prepare(flow_model, "flow", device, precision)))
    num_classes = streams[0][2].num_classes
    if any(m.num_classes != num_classes for _, _, m in streams):
        raise UserError(f"the RGB model has {num_classes} classes, the flow model {streams[1][2].num_classes}")
    annotations = read_annotations(split)
    videos = list_videos(annotations, subset, [(m, r) for m, r, _ in streams], num_classes, max_videos)

    vids, v_scores, v_labels, f_scores, f_labels, failed = [], [], [], [], [], []
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode") if workers > 0 else None
    t0, frames_done = time.perf_counter(), 0
    try:
        for vid, counts in tqdm(videos, desc="evaluating", unit="video", disable=not progress):
            try:
                outs = [video_frame_probs(m, r, vid, n, mo, resize, crop, device, len(streams) > 1, pool)
                        for (mo, r, m), n in zip(streams, counts)]
            except Exception as e:  # one unreadable video must not stop the evaluation
                msg = str(e) if isinstance(e, frame_io.FrameError) else f"{e.__class__.__name__}: {e}"
                log.error("%s: %s", vid, msg)
                failed.append([vid, msg])
                continue
            _score_video(vid, counts[0], outs, fusion, annotations[vid], num_classes,
                         (vids, v_scores, v_labels, f_scores, f_labels))
            frames_done += sum(counts)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    dt = time.perf_counter() - t0
    log.info("evaluated %d videos (%d frames, %d stream(s)) in %.1fs: %.1f frames/s; %d failed", len(vids),
             frames_done, len(streams), dt, frames_done / max(dt, 1e-9), len(failed))
    if not vids:
        raise UserError(f"no video could be evaluated ({len(failed)} failed, e.g. {failed[0][0]}: {failed[0][1]})")
    v_scores, v_labels = np.stack(v_scores), np.stack(v_labels)
    f_scores, f_labels = np.concatenate(f_scores), np.concatenate(f_labels)

    def chance(labels: np.ndarray) -> float:
        rate = labels.mean(axis=0)
        rate = rate[labels.sum(axis=0) > 0]
        return float(rate.mean()) if len(rate) else float("nan")

    result = {
        "classification_map": mean_average_precision(v_scores, v_labels),
        "localization_map": mean_average_precision(f_scores, f_labels),
        "videos": len(vids),
        "num_classes": int(num_classes),
        "classes_scored": int((v_labels.sum(axis=0) > 0).sum()),
        "localization_classes_scored": int((f_labels.sum(axis=0) > 0).sum()),
        "classification_chance": chance(v_labels),
        "localization_chance": chance(f_labels),
        "failed": failed,
    }
    if details:
        result.update(vids=vids, video_scores=v_scores, video_labels=v_labels, frame_scores=f_scores,
                      frame_labels=f_labels)
    return result


def write_submission(prefix: str | Path, result: dict) -> tuple[Path, Path]:
    """The official submission files of evaluate(..., details=True): PREFIX_classify.txt
    ('VID s0 s1 ...' per video) and PREFIX_localize.txt ('VID FRAME s0 s1 ...', frames 0..24)."""
    prefix = Path(prefix)
    cls_path, loc_path = Path(f"{prefix}_classify.txt"), Path(f"{prefix}_localize.txt")
    with frame_io.atomic_write(cls_path) as tmp:
        tmp.write_text("".join(f"{v} " + " ".join(f"{s:.6g}" for s in row) + "\n"
                               for v, row in zip(result["vids"], result["video_scores"])))
    rows = result["frame_scores"].reshape(len(result["vids"]), LOCALIZE_POINTS, -1)
    with frame_io.atomic_write(loc_path) as tmp:
        tmp.write_text("".join(f"{v} {j} " + " ".join(f"{s:.6g}" for s in rows[i, j]) + "\n"
                               for i, v in enumerate(result["vids"]) for j in range(LOCALIZE_POINTS)))
    return cls_path, loc_path


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-mode", "--mode", choices=("rgb", "flow"), default="rgb", help="stream of -load_model")
    p.add_argument("-root", "--root", type=Path, required=True, help="frames root: ROOT/VID/VID-000001.jpg")
    p.add_argument("-split", "--split", type=Path, nargs="+", required=True,
                   help="charades.json and/or Charades_v1_test.csv (merged)")
    p.add_argument("-load_model", "--load-model", required=True, help="weights (.pt path or a weights.py name)")
    p.add_argument("--flow-model", default=None, help="flow weights: two-stream evaluation with -mode rgb")
    p.add_argument("--flow-root", type=Path, default=None, help="flow frames root (with --flow-model)")
    p.add_argument("--fusion", choices=("prob", "logit"), default="prob",
                   help="two streams: average the per-frame probabilities (default) or the logits")
    p.add_argument("--subset", choices=("training", "testing"), default="testing")
    p.add_argument("--resize", type=int, default=None,
                   help="smaller side to N pixels (0 keeps); default: the Charades rule (upscale if under 226)")
    p.add_argument("--crop", type=int, default=224, help="center crop size (0: whole frame)")
    p.add_argument("--device", "-gpu", default="auto", help="auto, cpu, cuda, cuda:1 (-gpu N means cuda:N)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default, exact); bf16/fp16 faster")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="threads decoding frames ahead of the network (0: none)")
    p.add_argument("--max-videos", type=int, default=None, help="only the first N videos (sorted), for a quick look")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--submission", type=Path, default=None,
                   help="also write the official submission files PREFIX_classify.txt / PREFIX_localize.txt")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if (args.flow_model is None) != (args.flow_root is None):
        p.error("--flow-model and --flow-root go together")
    if args.flow_model is not None and args.mode != "rgb":
        p.error("two-stream evaluation: -load_model is the RGB model (-mode rgb), --flow-model the flow one")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    device = select_device(args.device)
    result = evaluate(args.load_model, args.split, args.root, args.mode, subset=args.subset,
                      flow_model=args.flow_model, flow_root=args.flow_root, fusion=args.fusion,
                      resize=args.resize, crop=args.crop, device=device, precision=args.precision,
                      max_videos=args.max_videos, workers=args.workers, details=args.submission is not None,
                      progress=not args.quiet)
    if args.submission is not None:
        for path in write_submission(args.submission, result):
            log.info("wrote %s", path)
    summary = {k: v for k, v in result.items() if not isinstance(v, np.ndarray) and k != "vids"}
    if args.json:  # strict JSON: an undefined mAP (no class with a positive) is null, not NaN
        print(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}))
    else:
        print(f"classification mAP {result['classification_map']:.4f}  localization mAP "
              f"{result['localization_map']:.4f}  ({result['videos']} videos, {result['classes_scored']} classes; "
              f"chance {result['classification_chance']:.4f} / {result['localization_chance']:.4f})")
    if result["failed"]:
        log.error("%d video(s) could not be evaluated:", len(result["failed"]))
        for vid, msg in result["failed"]:
            log.error("  %s: %s", vid, msg)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
