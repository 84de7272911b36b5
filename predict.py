"""Classify videos with the Kinetics I3D models, as DeepMind's evaluate_sample.py.

    python predict.py INPUT... --weights models/rgb_scratch.pt [--top 5] [--json]
    python predict.py clip.mp4 --weights models/rgb_imagenet.pt \
        --flow-weights models/flow_imagenet.pt [--flow-input flow/clip]   # two-stream

INPUT is a video file (anything OpenCV decodes) or a frame folder (read by kind, frame_io:
its RGB frames VID-000001.jpg, or plain images sorted by name). Frames: the input the weights
expect (weights.py's record: smaller side 256, center crop 224 for the Kinetics models; --resize
and --crop override it), values in [-1, 1]. The logits are
averaged over time; two-stream adds the RGB and flow logits, then softmax. Every video streams
through the network in chunks (streaming.py: each layer keeps just the frames it still needs),
so memory does not grow with length and the result equals running the whole video at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
import torch

import frame_io
import weights as weights_mod
from errors import FrameError, UserError
from cli import (add_device, add_precision, add_resize_crop, add_verbosity, apply_recorded, keep_freed_memory,
                 positive_int, progress, run_main, start)
from streaming import LengthMismatch, VideoStream, stream_logits
from tvl1 import iter_video_flow
from video_datasets import read_recipe
from video_sources import FlowWorkers, VideoSource, default_flow_workers, two_stream_items

log = logging.getLogger(__name__)
DATA_DIR = Path(__file__).resolve().parent / "data"


def load_labels(num_classes: int) -> list[str]:
    """Kinetics-400 / -600 class names by the number of classes, else 'class N'."""
    files = {400: DATA_DIR / "label_map.txt", 600: DATA_DIR / "label_map_600.txt"}
    if num_classes in files and files[num_classes].is_file():
        labels = [line.strip() for line in files[num_classes].read_text().splitlines() if line.strip()]
        if len(labels) == num_classes:
            return labels
    return [f"class {i}" for i in range(num_classes)]


def rgb_clips(source: Path, resize: int | None, crop: int) -> Iterator[np.ndarray]:
    """Frames of a video or frame folder, resized (None: the Charades rule) and center-cropped,
    as uint8 (H, W, 3)."""
    for frame in frame_io.iter_frames(source, resize=resize or 0):
        yield frame_io.center_crop(frame_io.resize_for_mode(frame, None, "rgb") if resize is None else frame, crop)


def flow_frames(folder: Path, resize: int | None, crop: int) -> Iterator[np.ndarray]:
    """x/y flow JPEGs (dense_flow.py's `*x.jpg`, `*y.jpg`) as uint8 (H, W, 2)."""
    for pair in frame_io.flow_folder_frames(folder)[1]:
        yield frame_io.center_crop(frame_io.resize_for_mode(pair, resize, "flow"), crop)


def computed_flow_frames(source: Path, resize: int | None, crop: int, device: torch.device) -> Iterator[np.ndarray]:
    """TV-L1 flow computed on the fly (tvl1.py), frame pair by frame pair in bounded memory,
    encoded exactly as dense_flow.py's JPEGs read back (8-bit, JPEG round trip; frame N repeats
    flow N-1), as uint8 (H, W, 2)."""
    grays = (cv2.cvtColor(frame_io.resize_for_mode(f, resize, "rgb"), cv2.COLOR_RGB2GRAY)
             for f in frame_io.iter_frames(source))
    try:
        for flow in iter_video_flow(grays, device=device):
            yield frame_io.center_crop(flow, crop)
    except ValueError as e:  # fewer than two frames
        raise FrameError(f"{source}: fewer than two frames, no flow") from e


def video_logits(model: torch.nn.Module, frames: Callable[[], Iterable[np.ndarray]], total: int | None,
                 device: torch.device) -> torch.Tensor:
    """Time-averaged logits (num_classes,) of a whole frame stream (`frames` returns a fresh
    iterator; `total` is the expected frame count the engine is built for: if the stream has
    another, it is read again with the true count)."""
    return stream_logits(model, frames, device, total=total).mean(dim=1)


def two_stream_logits(rgb_model: torch.nn.Module, flow_model: torch.nn.Module, source: Path, resize: int | None,
                      crop: int, device: torch.device, workers: FlowWorkers) -> torch.Tensor:
    """RGB + flow time-averaged logits of a video file, decoded once: TV-L1 on `workers` while
    this process runs both networks (video_sources.two_stream_items); the same frames as
    rgb_clips and computed_flow_frames, so the same logits."""
    def rgb_frame(f: np.ndarray) -> np.ndarray:
        return frame_io.center_crop(frame_io.resize_for_mode(f, resize, "rgb"), crop)

    def gray_frame(f: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(frame_io.resize_for_mode(f, resize, "rgb"), cv2.COLOR_RGB2GRAY)

    total = frame_count(source)
    if not total:
        raise FrameError(f"{source}: no frames")
    streams = {"rgb": VideoStream(rgb_model, total, device, out="logits", mode="rgb"),
               "flow": VideoStream(flow_model, total, device, out="logits", mode="flow")}
    items = two_stream_items([(VideoSource(key=source.stem, layout="file", path=str(source)), ("rgb", "flow"))],
                             workers, rgb_frame, gray_frame, lambda f: frame_io.center_crop(f, crop))
    for mode, item in items:
        if item["error"] is not None:
            raise FrameError(item["error"])
        streams[mode].push(item["frames"].numpy())
    try:
        return sum(streams[m].finish()[0].mean(dim=1) for m in ("rgb", "flow"))
    except LengthMismatch:  # the container's frame count was wrong (rare): each stream read again
        return (video_logits(rgb_model, lambda: rgb_clips(source, resize, crop), None, device)
                + video_logits(flow_model, lambda: computed_flow_frames(source, resize, crop, device), None, device))


def frame_count(source: Path) -> int | None:
    """Frames in a folder, or the count a video's container reports (may be off by a few: then
    the video is read again); counted by a grab() pass when the container has none."""
    if source.is_dir():
        return len(frame_io.list_frame_files(source))
    return frame_io.video_info(source)[0] or frame_io.count_video_frames(source) or None


def build_model(weights: Path, mode: str, device: torch.device, precision: str) -> torch.nn.Module:
    model = weights_mod.load_model(weights_mod.resolve_weights(weights), mode=mode, device=device)
    return model.for_inference(precision=precision, device=device)


def input_size(args: argparse.Namespace) -> tuple[int | None, int, str]:
    """(resize, crop, where from): --resize / --crop as given, else the weights record's
    preprocessing (weights.py), else DeepMind's Kinetics input (smaller side 256, crop 224)."""
    info = weights_mod.weights_info(args.weights)
    pre = info.preprocessing if info else weights_mod.KINETICS
    source = f"{Path(args.weights).stem}'s record" if info else "the Kinetics default"
    resize = args.resize if args.resize is not None else pre.resize
    crop = args.crop if args.crop is not None else pre.crop
    return resize, crop, source


def check_inputs(args: argparse.Namespace) -> None:
    """The weights and every INPUT and --flow-input exist, before anything else (exit 2 otherwise)."""
    for p in [*args.inputs, *(args.flow_input or [])]:
        if not p.exists():
            raise UserError(f"{p}: no such video file or frame folder")
        frame_io.refuse_text_file(p)
    for w in (args.weights, args.flow_weights):
        if w is not None:
            weights_mod.resolve_weights(w)  # a missing file or a typo in a name: one line


def top_k(logits: torch.Tensor, labels: list[str], k: int) -> dict:
    logits = logits.double()
    probs = torch.softmax(logits, dim=0)
    order = torch.argsort(probs, descending=True)[:k]
    return {
        "logits_norm": float(torch.linalg.vector_norm(logits)),
        "top": [{"label": labels[i], "index": int(i), "prob": float(probs[i]), "logit": float(logits[i])}
                for i in order.tolist()],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="video files or frame folders")
    p.add_argument("-weights", "--weights", type=Path, default=Path("models/rgb_scratch.pt"),
                   help="RGB weights: a .pt file or a name from `python weights.py --list`")
    p.add_argument("-flow_weights", "--flow-weights", type=Path, default=None,
                   help="flow weights for two-stream prediction")
    p.add_argument("-flow_input", "--flow-input", type=Path, action="append", default=None,
                   help="folder of x/y flow JPEGs for the matching INPUT (repeat per input); "
                        "without it, TV-L1 flow is computed on the fly, as dense_flow.py would")
    p.add_argument("--top", type=positive_int, default=5, help="classes to show per input")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    add_resize_crop(p, resize_default=None, crop_default=None,
                    resize_help="smaller side in pixels (0 keeps the frames; default: what the weights expect, "
                                "weights.py's record: 256 for the Kinetics models, the Charades rule for Charades ones)",
                    crop_help="center crop size (0: no crop; default: the weights' record, 224)")
    add_device(p)
    add_precision(p, "auto", "classification keeps its top classes in bf16")
    add_verbosity(p)
    args = p.parse_args(argv)
    if args.top < 1:
        p.error("--top must be at least 1")
    if args.flow_input and len(args.flow_input) != len(args.inputs):
        p.error(f"--flow-input given {len(args.flow_input)} times for {len(args.inputs)} inputs")
    if args.flow_input and not args.flow_weights:
        p.error("--flow-input needs --flow-weights")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    check_inputs(args)  # before anything else: bad input is one line
    device = start(args)
    # a model trained by train_i3d.py: its crop, resize (when it set one) and class names
    recipe = read_recipe(weights_mod.resolve_weights(args.weights))
    apply_recorded(args, argv, {k: v for k, v in (recipe or {}).items() if k != "resize" or v is not None},
                   {"crop": "--crop", "resize": "--resize"})
    resize, crop, size_from = input_size(args)
    log.info("input: smaller side %s, center crop %d (%s)", "by the Charades rule" if resize is None else resize,
             crop, "--resize/--crop" if args.resize is not None and args.crop is not None else size_from)
    # two-stream from video files on the CPU: decoded once, TV-L1 on every core beside the networks
    # (the workers start before the models are loaded: they do not carry them)
    workers = None
    if args.flow_weights is not None and not args.flow_input and device.type == "cpu" \
            and any(not p.is_dir() for p in args.inputs):
        workers = FlowWorkers(default_flow_workers())
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers.workers))
    rgb_model = build_model(args.weights, "rgb", device, args.precision)
    flow_model = build_model(args.flow_weights, "flow", device, args.precision) if args.flow_weights else None
    if flow_model is not None and flow_model.num_classes != rgb_model.num_classes:
        raise UserError(f"{args.flow_weights}: {flow_model.num_classes} classes, but the RGB weights have "
                        f"{rgb_model.num_classes}")
    names = (recipe or {}).get("classes")
    labels = list(names) if names and len(names) == rgb_model.num_classes else load_labels(rgb_model.num_classes)

    results, failures = [], []
    shown = ", nothing printed (--json prints at the end)" if args.json else " (printed above)"
    for i, source in enumerate(args.inputs):
        progress(i, len(args.inputs), "inputs classified" + shown, resumes=False)  # what a stop says
        try:
            if workers is not None and not source.is_dir():
                logits = two_stream_logits(rgb_model, flow_model, source, resize, crop, device, workers)
            else:
                logits = video_logits(rgb_model, lambda: rgb_clips(source, resize, crop),
                                      frame_count(source), device)
            if flow_model is not None and (workers is None or source.is_dir()):
                if args.flow_input:
                    folder = args.flow_input[i]
                    flow = lambda: flow_frames(folder, resize, crop)  # noqa: E731
                    count = None
                else:  # the same count as the RGB frames (frame N repeats flow N-1)
                    flow = lambda: computed_flow_frames(source, resize, crop, device)  # noqa: E731
                    count = frame_count(source)
                logits = logits + video_logits(flow_model, flow, count, device)
        except FrameError as e:
            print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
            failures.append(source)
            continue
        result = {"input": str(source), "precision": args.precision, "precision_reason": args.precision_reason,
                  **top_k(logits, labels, args.top)}
        results.append(result)
        if not args.json:
            print(f"{source}")
            print(f"Norm of logits: {result['logits_norm']:f}")
            print("Top classes and probabilities")
            for t in result["top"]:
                print(f"{t['prob']:e} {t['logit']:.2f} {t['label']}")
    if workers is not None:  # (on an exception they end with this process: runtime.worker_init)
        workers.close()
    if args.json:
        print(json.dumps(results, indent=2))
    if failures:
        print(f"{Path(sys.argv[0]).name}: error: {len(failures)} of {len(args.inputs)} inputs failed: "
              + ", ".join(map(str, failures)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # streamed chunks reuse freed memory (see cli.keep_freed_memory)
    run_main(main)
