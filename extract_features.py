"""Extract I3D features of whole videos: exact, bounded in memory, resumable, sharded.

    python extract_features.py -mode rgb -load_model models/rgb_scratch.pt -root ROOT -save_dir DIR [-split charades.json]
    python extract_features.py -mode rgb -load_model models/rgb_imagenet.pt --input videos/ list.txt clip.mp4 -save_dir DIR

What is computed (per video):
- default: the original pytorch-i3d semantics, i3d.extract_features(whole video) ->
  (T', 1, 1, 1024) float32 with T' = ceil(T/8) - 1 (at least 1), frames resized by the
  Charades rule (upscale only when the smaller side is under 226; --resize N for smaller side N)
  and center cropped to 224 (--crop). Every video streams through streaming.py's engine in
  chunks of --chunk-frames: each layer keeps just the frames it still needs from one chunk to
  the next and the whole video's padding is applied at its ends, so the result equals the
  whole-video computation (no frame computed twice) while memory stays bounded by the chunk,
  whatever the length. The engine needs the frame count first: frame folders know it; for a
  video file the container's count is used, and if decoding finds another count the video is
  read again with the true one (rare; never a wrong result).
- --endpoint E (an earlier endpoint such as Mixed_4f): that endpoint's map averaged over
  space, (T_E, C) with T_E = ceil(T / stride_E). Mixed_5c (default) keeps the pooled output above.
- --stack N --step S (as video_features): one feature per window of N frames starting every S
  frames, each window run through the network on its own, averaged over time and space:
  (windows, C). A partial last window is dropped (as video_features); a video shorter than N
  frames fails with a clear message.
- --ten-crop: 4 corners + center and their horizontal flips (flow: the x channel negated),
  stacked on a leading crop axis: (10, ...) in front of the shapes above.
- -mode both: rgb into SAVE_DIR/rgb, flow into SAVE_DIR/flow (-load_model is the RGB model,
  --flow-model the flow model), the same names under each. From video files (on the CPU) each
  video is decoded once for both streams and its frame pairs go to --workers TV-L1 processes
  while this one runs the networks (video_sources.two_stream_items); -mode flow likewise.

Outputs: SAVE_DIR/KEY.npy (KEY keeps the input's folder structure), or with --format h5 one
SAVE_DIR/features.h5 (features-K-of-N.h5 per shard), one dataset per video with attributes
fps, stride, frames and the recipe (recipe()). Every finished video is first saved atomically as
SAVE_DIR/.pending*/KEY.npz (array and attributes in one file); the HDF5 file is rebuilt from
the previous one plus these in a temporary file (under a lock on SAVE_DIR, after checking the
free space) and renamed at the end of the run, so a kill at any moment leaves the last good
HDF5 file and the finished videos' .npz, which the rerun picks up (never recomputed).
A full disk stops the run with one line (exit status 3); what was finished is kept.

A rerun skips finished videos of the same recipe; one made with another recipe refuses the run
in one line naming the difference, unless --overwrite recomputes it. A video that fails is
named in the log, in SAVE_DIR/failures.txt (failures-K-of-N.txt per shard), the others go on,
and the exit status is 1.
--shard K/N (or torchrun's RANK / WORLD_SIZE) takes videos i % N == K of the sorted list.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

import atomic_io
import frame_io
import weights
from charades_dataset_full import (FlowOptions, StreamingVideoDataset, VideoSource, charades_sources, input_sources,
                                   iter_pieces)
from video_sources import FlowWorkers, default_flow_workers, two_stream_items
from errors import DiskFullError, FrameError, UserError
from cli import (add_allow_gaps, add_device, add_precision, add_resize_crop, add_threads, add_verbosity, add_workers,
                 code_version, keep_freed_memory, nonneg_int, positive_int, progress, run_main, size_or_zero, start)
from runtime import iter_started, worker_init
from feature_store import RECIPE_KEYS, H5Store, NpyStore, closed_unless_stopped, parse_shard, recipe_difference, shard
from streaming import (CHUNK_FRAMES, CONV_ENDPOINTS, LengthMismatch, VideoStream, WindowBatcher, WindowStacker,
                       background, make_runner, temporal_stride)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# The extraction loop
# ----------------------------------------------------------------------------------------------

def _new_state(args: argparse.Namespace, model: torch.nn.Module, run: Callable, mode: str, device: torch.device,
               total: int, batcher: WindowBatcher | None = None):
    if args.stack:
        return WindowStacker(run, args.stack, args.step or args.stack, args.batch_windows, batcher,
                             centered=args.centered)
    return VideoStream(model, total, device, args.endpoint, "pooled" if args.endpoint == "Mixed_5c" else "mean", mode,
                       args.crop if args.ten_crop else 0, args.chunk_frames)


def _finish(state, ten_crop: bool) -> np.ndarray:
    out = state.finish()  # (crops, ...)
    return (out if ten_crop else out[0]).numpy()


def _flow_options(args: argparse.Namespace, device: torch.device) -> FlowOptions:
    # TV-L1 runs in the DataLoader workers (on CPU); in the main process on CUDA with --workers 0
    return FlowOptions(resize=args.flow_resize, jpeg=args.flow_jpeg,
                       keep_dir=str(args.keep_flow) if args.keep_flow else None,
                       device=str(device) if device.type == "cuda" and not args.workers else "cpu")


def window_times(n: int, frames: int, fps: float, args: argparse.Namespace, endpoint: str, stride: int) -> dict:
    """Each output step's frames and seconds: --stack windows [S*k, S*k + N); a whole-video
    Mixed_5c step j (stride 8, then the time pool of 2) frames [8j, 8j + 16); another endpoint's
    step j frames [s*j, s*j + s). Ends are clipped to the frame count; seconds = frame / fps,
    left out where the fps is unknown (frame folders)."""
    if args.stack and args.centered:  # window t: frames t - N//2 .. t + (N-1)//2, ends clipped (padded by repetition)
        centers = list(range(n))
        out = {"window_center_frame": centers, "window_start_frame": [max(0, t - args.stack // 2) for t in centers],
               "window_end_frame": [min(frames, t + (args.stack - 1) // 2 + 1) for t in centers]}
        if fps == fps and fps > 0:
            out.update({f"window_{k}_s": [round(t / fps, 6) for t in out[f"window_{k}_frame"]]
                        for k in ("center", "start", "end")})
        return out
    if args.stack:
        step, width = args.step or args.stack, args.stack
    else:
        step = stride
        width = 2 * step if endpoint == "Mixed_5c" else step
    starts = [step * k for k in range(n)]
    ends = [min(a + width, frames) for a in starts]
    out = {"window_start_frame": starts, "window_end_frame": ends}
    if fps == fps and fps > 0:  # not nan
        out.update(window_start_s=[round(a / fps, 6) for a in starts], window_end_s=[round(b / fps, 6) for b in ends])
    return out


def recipe(args: argparse.Namespace, mode: str, weights_sha256: str) -> dict:
    """Every parameter that shapes a feature array, recorded in each output (sidecar JSON / HDF5
    attributes) and compared on a rerun into the same SAVE_DIR. code_version is recorded too,
    but not compared: a new commit is not a new recipe."""
    r = {"mode": mode, "endpoint": args.endpoint, "stack": int(args.stack),
         "step": int(args.step or args.stack) if args.stack else 0,
         "centring": "ten crops" if args.ten_crop else "center crop",
         "sample_fps": float(args.fps) if args.fps else 0.0,  # 0: every frame
         "resize": "charades-rule" if args.resize is None else int(args.resize), "crop": int(args.crop),
         "ten_crop": bool(args.ten_crop), "precision": args.precision, "weights_sha256": weights_sha256}
    if mode == "flow" and args.input is not None:  # flow computed from video files
        r.update(flow_resize=int(args.flow_resize), flow_jpeg=bool(args.flow_jpeg))
    # outputs made before --centered existed lack the key: read as False (RECIPE_DEFAULTS), they resume
    r["centered"] = bool(getattr(args, "centered", False))
    return r


def select_todo(store, sources: list[VideoSource], wanted: dict, overwrite: bool) -> list[VideoSource]:
    """The sources to extract: not done yet, or done with another recipe when --overwrite is
    given; without it, a done video of another recipe refuses the run in one line."""
    todo = []
    for s in sources:
        if not store.done(s.key):
            todo.append(s)
            continue
        diff = recipe_difference(store.attrs(s.key), wanted)
        if diff is None:
            continue
        if not overwrite:
            raise UserError(f"{store.describe(s.key)} was made with another recipe ({diff}); give --overwrite to "
                            f"recompute, or another -save_dir")
        todo.append(s)
    return todo


def _loader(args: argparse.Namespace, todo: list[VideoSource], mode: str, crop: int, flow: FlowOptions | None,
            device: torch.device):
    dataset = StreamingVideoDataset(todo, mode=mode, resize=args.resize, crop=crop, fps=args.fps, flow=flow)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=args.workers,
                                       pin_memory=device.type == "cuda", prefetch_factor=2 if args.workers else None,
                                       worker_init_fn=worker_init)  # workers end with this process


def _reread(args, model, run, mode: str, device, source: VideoSource, total: int, crop: int, flow) -> np.ndarray:
    """A video whose container reported the wrong frame count (rare), read again with its true
    count, in this process."""
    state = _new_state(args, model, run, mode, device, total)
    for piece in iter_pieces(source, mode, args.resize, crop, fps=args.fps, flow=flow):
        if piece["error"]:
            raise FrameError(piece["error"])
        state.push(piece["frames"].numpy())
    return _finish(state, args.ten_crop)


class _Run:
    """One stream's extraction over its videos: the states of the videos in flight, pushed
    piece by piece, finished and saved with their attributes when their last piece is in."""

    def __init__(self, args, model, mode: str, device, todo: list[VideoSource], store, wanted: dict):
        self.args, self.model, self.mode, self.device, self.todo, self.store = args, model, mode, device, todo, store
        self.run = make_runner(model, device, mode, args.endpoint, args.crop if args.ten_crop else 0)
        self.stride = args.step or args.stack if args.stack else temporal_stride(model, args.endpoint)
        self.crop = 0 if args.ten_crop else args.crop
        self.flow = _flow_options(args, device) if mode == "flow" else None
        # --stack windows of all videos share batches (short videos fill them together)
        self.batcher = WindowBatcher(self.run, args.batch_windows) if args.stack else None
        self.attrs = {**wanted, "code_version": code_version()}
        self.states: dict[int, object] = {}
        self.broken: set[int] = set()
        self.failures: list[tuple[str, str]] = []
        self.done = self.frames = 0

    def _fail(self, i: int, key: str, msg: str) -> None:
        self.broken.add(i)
        self.states.pop(i, None)
        self.failures.append((key, msg))
        log.error("%s", msg)

    def push(self, item: dict) -> None:
        i = item["index"]
        if item["error"] is not None or i in self.broken:
            return
        if i not in self.states:
            self.states[i] = _new_state(self.args, self.model, self.run, self.mode, self.device, item["total"],
                                        self.batcher)
        self.states[i].push(item["frames"].numpy())

    def finish(self, item: dict) -> None:
        i, key, count = item["index"], item["key"], int(item["count"])
        try:
            array = _finish(self.states.pop(i), self.args.ten_crop)
        except LengthMismatch as e:
            log.info("%s: %d frames, not the %d its container reported; re-reading", key, e.seen, item["total"])
            array = _reread(self.args, self.model, self.run, self.mode, self.device, self.todo[i], e.seen,
                            self.crop, self.flow)
        steps = array.shape[-2] if self.args.stack else array.shape[1 if self.args.ten_crop else 0]
        attrs = {"fps": float(item["fps"]), "stride": int(self.stride), "frames": count, **self.attrs,
                 **window_times(steps, count, float(item["fps"]), self.args, self.args.endpoint, self.stride)}
        self.store.save(key, array.astype(np.float32, copy=False), attrs)
        self.done += 1
        self.frames += count

    def take(self, item: dict) -> bool:
        """One item from the loader; True when it ended a video. A video's failure is recorded
        and the others go on; a full disk stops the job."""
        i, key = item["index"], item["key"]
        try:
            self.push(item)
            if not item["last"] or i in self.broken:
                return bool(item["last"])
            if item["error"] is not None:
                self._fail(i, key, item["error"])
            else:
                self.finish(item)
        except DiskFullError:
            raise  # every later video would fail too: stop the job, with one line
        except Exception as e:  # e.g. frames smaller than the crop, out of memory, a bad re-read
            self._fail(i, key, f"{key}: {e}")
        return bool(item["last"])


def extract_videos(args: argparse.Namespace, model: torch.nn.Module, sources: list[VideoSource], mode: str,
                   out_dir: Path, device: torch.device, tag: str = "",
                   wanted: dict | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Extract every source not done yet (or done with another recipe, with --overwrite) into
    out_dir; (videos done, [(key, error)])."""
    from tqdm import tqdm

    wanted = wanted if wanted is not None else recipe(args, mode, "")
    store = _store(args, out_dir, tag)
    with closed_unless_stopped(store):
        todo = select_todo(store, sources, wanted, getattr(args, "overwrite", False))
        log.info("%s: %d videos, %d already done, %d to extract", mode, len(sources), len(sources) - len(todo),
                 len(todo))
        job = _Run(args, model, mode, device, todo, store, wanted)
        progress(len(sources) - len(todo), len(sources), f"{mode} videos done")  # what a stop says
        t0 = time.perf_counter()
        with tqdm(total=len(todo), unit="video", desc=mode, disable=not todo or args.quiet) as bar:
            # decoding overlaps; the loader's workers fork in the decode thread, stop signals blocked
            for item in background(iter_started(_loader(args, todo, mode, job.crop, job.flow, device))):
                if job.take(item):
                    bar.update(1)
                    progress(len(sources) - len(todo) + job.done, len(sources), f"{mode} videos done")
                    bar.set_postfix(fps=f"{job.frames / (time.perf_counter() - t0):.1f}")
    dt = time.perf_counter() - t0
    log.info("%s: extracted %d videos (%d frames) in %.1fs, %.1f frames/s; %d skipped as done; %d failed",
             mode, job.done, job.frames, dt, job.frames / max(dt, 1e-9), len(sources) - len(todo), len(job.failures))
    return job.done, job.failures


def extract_from_videos(args: argparse.Namespace, models: dict, sources: list[VideoSource], device: torch.device,
                        tag: str, recipes: dict, workers: FlowWorkers) -> dict[str, list[tuple[str, str]]]:
    """The streams of `models` (rgb, flow) from video files, each video decoded once, TV-L1 on
    `workers` while this process runs the networks (video_sources.two_stream_items);
    {mode: [(key, error)]}. Features equal the per-stream path (the flow is dense_flow.py's)."""
    from tqdm import tqdm

    modes = list(models)
    out_dirs = {m: args.save_dir / m if args.mode == "both" else args.save_dir for m in modes}
    stores = {m: _store(args, out_dirs[m], tag) for m in modes}
    with closed_unless_stopped(*stores.values()):
        todo = {m: {s.key for s in select_todo(stores[m], sources, recipes[m], getattr(args, "overwrite", False))}
                for m in modes}
        for m in modes:
            log.info("%s: %d videos, %d already done, %d to extract", m, len(sources), len(sources) - len(todo[m]),
                     len(todo[m]))
        videos = [(s, tuple(m for m in modes if s.key in todo[m])) for s in sources]
        videos = [(s, ms) for s, ms in videos if ms]
        srcs = [s for s, _ in videos]
        jobs = {m: _Run(args, models[m], m, device, srcs, stores[m], recipes[m]) for m in modes}
        crop = jobs[modes[0]].crop  # 0 with --ten-crop (the crops are cut later)
        resize, flow_resize = args.resize, args.flow_resize

        def rgb_frame(f: np.ndarray) -> np.ndarray:
            f = frame_io.resize_for_mode(f, resize, "rgb")
            return frame_io.center_crop(f, crop) if crop else f

        def gray_frame(f: np.ndarray) -> np.ndarray:  # dense_flow.py's order: resize, then gray
            return cv2.cvtColor(frame_io.resize_smaller_side(f, flow_resize), cv2.COLOR_RGB2GRAY)

        def flow_frame(f: np.ndarray) -> np.ndarray:
            f = frame_io.resize_for_mode(f, resize, "flow")
            return frame_io.center_crop(f, crop) if crop else f

        t0 = time.perf_counter()
        total = sum(len(ms) for _, ms in videos)
        streams_left = {s.key: len(ms) for s, ms in videos}  # a video is done when all its streams are
        done = len(sources) - len(videos)
        progress(done, len(sources), "videos done")  # what a stop says
        with tqdm(total=total, unit="stream", desc="+".join(modes), disable=not total or args.quiet) as bar:
            for mode, item in two_stream_items(videos, workers, rgb_frame, gray_frame, flow_frame, args.fps,
                                               args.keep_flow):
                if jobs[mode].take(item):
                    bar.update(1)
                    streams_left[item["key"]] -= 1
                    done += streams_left[item["key"]] == 0
                    progress(done, len(sources), "videos done")
    dt = time.perf_counter() - t0
    for m, job in jobs.items():
        log.info("%s: extracted %d videos (%d frames) in %.1fs, %.1f frames/s; %d skipped as done; %d failed", m,
                 job.done, job.frames, dt, job.frames / max(dt, 1e-9), len(sources) - len(todo[m]), len(job.failures))
    return {m: job.failures for m, job in jobs.items()}


def default_workers() -> int:
    """0 (a decode thread) on small machines, where worker processes only compete with the
    network for cores (measured on 2 cores: 31 s CPU for 480 frames vs 42 s with 2 workers)."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 4 else min(4, cores // 4)


def compute_threads(workers: int) -> int:
    """Torch threads beside `workers` decode processes: the cores they leave. The decode thread
    (workers 0) is light and mostly waits on its bounded queue, so it gets no core of its own
    (measured on a quiet 2-core machine, 480 frames: 26.3 s with 1 torch thread, 17.2 s with 2)."""
    return max(1, (os.cpu_count() or 1) - workers)


def check_rates(sources: list[VideoSource], fps: float | None) -> None:
    """--fps against every video's own rate, before anything is written: one line if above."""
    if not fps:
        return
    for src in sources:
        if src.layout != "file":
            raise UserError(f"{src.path}: --fps needs video files (frame folders have no timestamps)")
        try:
            rate = frame_io.video_info(src.path)[1]
        except FrameError:
            continue  # reported with the other failures when its turn comes
        if rate and fps > rate + 1e-6:
            raise UserError(f"--fps {fps:g} is above the {rate:g} fps of {src.path}; give at most {rate:g}")


def _store(args: argparse.Namespace, out_dir: Path, tag: str):
    return (H5Store(out_dir / f"features{tag}.h5", out_dir / f".pending{tag}") if args.format == "h5"
            else NpyStore(out_dir))


def concat_streams(args: argparse.Namespace, sources: list[VideoSource], tag: str) -> list[tuple[str, str]]:
    """--concat: SAVE_DIR/concat/KEY.npy (or its features.h5), each window's RGB then flow
    features on the last axis, with the RGB output's attributes; videos done in both streams."""
    rgb, flow = _store(args, args.save_dir / "rgb", tag), _store(args, args.save_dir / "flow", tag)
    out = _store(args, args.save_dir / "concat", tag)
    failures = []
    with closed_unless_stopped(out):
        for src in sources:
            if not (rgb.done(src.key) and flow.done(src.key)):
                continue
            flow_attrs = flow.attrs(src.key)  # the flow stream's recipe too: either one redone remakes this
            wanted = {**rgb.attrs(src.key), "mode": "rgb+flow",
                      **{f"flow.{k}": flow_attrs[k] for k in RECIPE_KEYS if k in flow_attrs}}
            if out.done(src.key) and recipe_difference(out.attrs(src.key), wanted) is None:
                continue  # made from these very streams
            (a, _), (b, _) = rgb.load(src.key), flow.load(src.key)
            if a.shape[:-1] != b.shape[:-1]:
                msg = f"{src.key}: RGB {a.shape} and flow {b.shape} features do not line up; not concatenated"
                log.error("%s", msg)
                failures.append((f"concat:{src.key}", msg))
                continue
            out.save(src.key, np.concatenate([a, b], axis=-1), wanted)
    return failures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-mode", "--mode", choices=("rgb", "flow", "both"), default="rgb")
    p.add_argument("-load_model", "--load-model", default=None,
                   help="weights (.pt or a name from weights.py); for -mode both the RGB model")
    p.add_argument("--flow-model", default=None,
                   help="flow weights for -mode both (or -mode flow, instead of -load_model)")
    p.add_argument("--keep-flow", type=Path, default=None, metavar="DIR",
                   help="also write the flow computed from videos as dense_flow.py's JPEGs: DIR/KEY/VID-000001x.jpg")
    p.add_argument("--flow-resize", type=size_or_zero, default=256,
                   help="smaller side of the frames TV-L1 runs on, for flow from videos (dense_flow.py's --resize)")
    p.add_argument("--flow-jpeg", action=argparse.BooleanOptionalAction, default=True,
                   help="pass flow from videos through dense_flow.py's JPEG encoding, so the features equal the "
                        "two-step path (default: on)")
    p.add_argument("--concat", action="store_true",
                   help="-mode both: also SAVE_DIR/concat/KEY.npy, RGB then flow features on the last axis (2048-d)")
    p.add_argument("--fps", type=float, default=None,
                   help="sample video files at N frames/s by their timestamps (default: every frame)")
    p.add_argument("-root", "--root", type=Path, default=None, help="Charades frame folders root/VID/VID-000001.jpg")
    p.add_argument("-split", "--split", type=Path, default=None,
                   help="charades.json or Charades CSV: extract its videos (else every folder under -root)")
    p.add_argument("--input", type=Path, nargs="+", default=None,
                   help="video files, frame folders, folders of them, or .txt lists of them")
    p.add_argument("-save_dir", "--save-dir", type=Path, required=True)
    add_device(p)
    add_precision(p, "fp32", "features equal the reference computation to 1e-4; bf16/fp16 are faster")
    p.add_argument("--endpoint", default="Mixed_5c", choices=CONV_ENDPOINTS)
    p.add_argument("--stack", type=nonneg_int, default=0, help="frames per window (0: whole video)")
    p.add_argument("--step", type=nonneg_int, default=0, help="frames between window starts (default: --stack)")
    p.add_argument("--centered", action="store_true",
                   help="with --stack N --step 1: one row per frame, window t centred on frame t (frames "
                        "t-N//2 .. t+(N-1)//2, the ends padded by repeating the first/last frame, as MS-TCN)")
    p.add_argument("--ten-crop", action="store_true", help="10 crops (corners, center, flips) on a crop axis")
    add_resize_crop(p, resize_default=None,
                    resize_help="smaller side to N pixels (0 keeps); default: the Charades rule (upscale if under "
                                "226), the original pytorch-i3d extract_features.py's input, whatever the weights "
                                "(predict.py follows the weights' record instead: 256 for Kinetics models)")
    p.add_argument("--format", choices=("npy", "h5"), default="npy")
    p.add_argument("--shard", default=None, help="K/N: this process takes videos i %% N == K")
    add_workers(p, None, "decode worker processes (default: 0 on up to 4 cores, decoding in a thread of this "
                         "process); for flow from video files on the CPU (-mode flow/both --input): the TV-L1 "
                         "processes, each video's frame pairs split between them (default: the cores less a sixth, "
                         "at least 1; 0: TV-L1 in this process)")
    add_threads(p)
    p.add_argument("--chunk-frames", type=positive_int, default=CHUNK_FRAMES,
                   help="frames per engine step (default %(default)s; bounds memory; does not change the result)")
    p.add_argument("--batch-windows", type=positive_int, default=4,
                   help="--stack windows per forward pass, taken across videos")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute videos SAVE_DIR holds with another recipe (without it such a rerun is refused)")
    add_allow_gaps(p)
    add_verbosity(p)
    args = p.parse_args(argv)
    if (args.root is None) == (args.input is None):
        p.error("give either -root (Charades frame folders) or --input")
    if args.split is not None and args.root is None:
        p.error("-split goes with -root")
    if args.mode == "both" and not args.flow_model:
        p.error("-mode both needs --flow-model (and -load_model for RGB)")
    if args.mode == "rgb" and args.flow_model:
        p.error("--flow-model is for the flow stream: use -mode both (or -mode flow)")
    if args.mode == "flow" and args.flow_model and args.load_model:
        p.error("-mode flow takes one model: give -load_model or --flow-model, not both")
    if args.mode == "flow" and args.flow_model:
        args.load_model = args.flow_model
    if not args.load_model:
        p.error("-load_model is required" + (" (the RGB weights for -mode both)" if args.mode == "both" else ""))
    if args.fps is not None and not (args.fps > 0 and args.fps < float("inf")):
        p.error(f"--fps must be a positive number of frames per second, got {args.fps:g}")
    if args.fps is not None and args.input is None:
        p.error("--fps needs video files (--input); frame folders have no timestamps")
    if args.concat and args.mode != "both":
        p.error("--concat needs -mode both")
    if args.keep_flow is not None and (args.mode == "rgb" or args.input is None):
        p.error("--keep-flow needs -mode flow or both on --input videos")
    if args.stack < 0 or args.step < 0 or (args.step and not args.stack):
        p.error("--step needs --stack; both positive")
    if args.centered and not (args.stack and args.step == 1):
        p.error("--centered needs --stack N --step 1 (one window per frame)")
    if args.ten_crop and not args.crop:
        p.error("--ten-crop needs a --crop size")
    if args.chunk_frames < 8:
        p.error("--chunk-frames must be at least 8")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    k, n = parse_shard(args.shard)  # the inputs and the shard checked before anything else: bad input is one line
    sources = charades_sources(args.root, args.split) if args.root is not None else input_sources(args.input)
    modes = [("rgb", args.load_model), ("flow", args.flow_model)] if args.mode == "both" else [(args.mode, args.load_model)]
    paths = {mode: weights.resolve_weights(name) for mode, name in modes}  # a weights typo: one line too
    device = start(args)
    # flow from video files on the CPU: both streams from one decode, TV-L1 on every core
    engine = args.input is not None and args.mode != "rgb" and device.type == "cpu"
    args.flow_workers = (args.workers if args.workers is not None else default_flow_workers()) if engine else 0
    if args.workers is None:
        # TV-L1 from video files runs where decoding does: a worker process, not the network's threads
        flow_from_videos = args.mode in ("flow", "both") and args.input is not None
        args.workers = max(default_workers(), 1 if flow_from_videos else 0)
    if args.threads or (device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ):
        torch.set_num_threads(args.threads or compute_threads(args.flow_workers if engine else args.workers))
    mine = shard(sources, k, n)
    check_rates(mine, args.fps)
    tag = f"-{k}-of-{n}" if n > 1 else ""
    log.info("shard %d/%d: %d of %d videos", k, n, len(mine), len(sources))
    files = [s for s in mine if s.layout == "file"] if engine else []
    others = [s for s in mine if s.layout != "file"] if engine else mine
    # started before the models are loaded: the forked workers do not carry them
    workers = FlowWorkers(args.flow_workers, args.flow_jpeg, args.keep_flow is not None) if files else None
    try:
        return _extract_all(args, paths, modes, mine, files, others, device, tag, workers)
    finally:
        if workers is not None:
            workers.close()


def _extract_all(args: argparse.Namespace, paths: dict, modes: list, mine: list[VideoSource], files: list[VideoSource],
                 others: list[VideoSource], device: torch.device, tag: str, workers: FlowWorkers | None) -> int:
    models, recipes = {}, {}
    for mode, path in paths.items():  # both loaded first: wrong weights stop the run before anything is written
        model = weights.load_model(path, mode=mode, final_endpoint=args.endpoint, device=device)
        models[mode] = model.for_inference(precision=args.precision, device=device)
        recipes[mode] = recipe(args, mode, weights.file_sha256(path))
        del model  # the plain copy is not used again
    fails_of: dict[str, list[tuple[str, str]]] = {mode: [] for mode, _ in modes}
    for mode, _ in modes:
        if others or not files:
            out_dir = args.save_dir / mode if args.mode == "both" else args.save_dir
            fails_of[mode] += extract_videos(args, models[mode], others, mode, out_dir, device, tag, recipes[mode])[1]
    if files:
        for mode, fails in extract_from_videos(args, models, files, device, tag, recipes, workers).items():
            fails_of[mode] += fails
    failures: list[tuple[str, str]] = []
    for mode, fails in fails_of.items():
        out_dir = args.save_dir / mode if args.mode == "both" else args.save_dir
        failures += [(f"{mode}:{key}" if args.mode == "both" else key, msg) for key, msg in fails]
        failures_file = out_dir / f"failures{tag}.txt"
        if fails:
            atomic_io.atomic_write_bytes(failures_file, "".join(f"{key}\t{msg}\n" for key, msg in fails).encode())
        else:
            failures_file.unlink(missing_ok=True)
    if args.concat:
        failures += concat_streams(args, mine, tag)
    if failures:
        log.error("%d video(s) failed (listed in failures%s.txt):", len(failures), tag)
        for key, msg in failures:
            log.error("  %s", msg)
        return 1
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # streamed chunks reuse freed memory (see cli.keep_freed_memory)
    run_main(main)
