"""Whole videos, streamed: the dataset extract_features.py reads (any video file, frame folder or
Charades frame folder; charades_dataset_full.py, the original name, re-exports this module).

Each video is decoded in a DataLoader worker and handed over as consecutive pieces of uint8
frames (n, H, W, C), resized by the Charades rule (or --resize) and center cropped, so frames
stay 1 byte per value until the model's device and memory never holds a whole long video.
Frame reading is frame_io's (the same as charades_dataset.py): Charades frame folders
(root/VID/VID-000001.jpg, flow VID-000001x.jpg / y.jpg), video files, and frame folders.

A video that cannot be read yields one item with `error` set; the others go on.

Flow and RGB of video files (two_stream_items, FlowWorkers): each video decoded once in this
process, its frame pairs solved by TV-L1 worker processes in runs of a few pairs, RGB items
yielded at once and flow items as their jobs come back, in order: the networks run while the
workers solve, and the flow is exactly dense_flow.py's stored flow.

Which videos: charades_sources (-root / -split) and input_sources (--input files, folders, lists).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

import atomic_io
import frame_io
import tvl1
from charades_dataset import read_annotations
from errors import FrameError, UserError
from runtime import stop_pool

PIECE_FRAMES = 64  # frames per item: big enough to amortise IPC, small enough to stay bounded


@dataclass(frozen=True)
class VideoSource:
    """One video to extract. key is its output name (relative path without suffix, '/'-separated).
    layout: 'charades' (root/VID/VID-000001.jpg), 'file' (a video file) or 'folder' (frame images)."""
    key: str
    layout: str
    path: str  # the video file / frame folder; for 'charades' the root
    vid: str = ""  # Charades video id


@dataclass(frozen=True)
class FlowOptions:
    """TV-L1 on the fly for flow from video files, as dense_flow.py computes and stores it:
    frames resized to a smaller side of `resize` (its --resize), flow quantised to 8 bits and,
    with jpeg, passed through its JPEG files' encoding; keep_dir also writes those files
    (KEEP/KEY/VID-000001x.jpg, dense_flow.py's layout)."""
    resize: int = 256
    jpeg: bool = True
    keep_dir: str | None = None
    device: str = "cpu"


def _video_flow(src: VideoSource, flow: FlowOptions, fps: float | None) -> Iterator[np.ndarray]:
    frames = frame_io.sample_frames(src.path, fps, resize=flow.resize) if fps else \
        frame_io.iter_frames(src.path, resize=flow.resize)
    grays = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames)  # dense_flow.py's order: resize, then gray
    if flow.keep_dir is None:
        yield from tvl1.iter_video_flow(grays, device=flow.device, jpeg=flow.jpeg)
        return
    vid = Path(src.path).stem
    with atomic_io.atomic_dir(Path(flow.keep_dir) / src.key) as tmp:  # renamed once the video is complete

        def keep(index: int, bx: bytes, by: bytes) -> None:
            atomic_io.write_bytes_checked(tmp / frame_io.charades_frame_name(vid, index, "x"), bx)
            atomic_io.write_bytes_checked(tmp / frame_io.charades_frame_name(vid, index, "y"), by)
        yield from tvl1.iter_video_flow(grays, device=flow.device, jpeg=flow.jpeg, keep=keep)


def sampled_count(count: int, src_fps: float, fps: float | None) -> int:
    """Frames sample_frames gives at `fps` from `count` frames at `src_fps` (an estimate, as
    the count is the container's: the engine re-reads if it proves wrong)."""
    if not fps or not src_fps or count <= 0:
        return count
    return int(math.floor((count - 1) / src_fps * fps + 1e-9)) + 1


def open_video(src: VideoSource, mode: str, resize: int | None = None,
               crop: int = 224, fps: float | None = None,
               flow: FlowOptions | None = None) -> tuple[int, float, Iterator[np.ndarray]]:
    """(frame count, fps, frame iterator) of a source. The count is exact for frame folders and
    the container's figure for video files (counted by a grab() pass where the container has
    none; the caller checks it against what was decoded);
    fps is nan where unknown. Frames are uint8 (H, W, 3) RGB or (H, W, 2) flow, resized and
    cropped. fps (video files): frames sampled at that rate by their timestamps. Flow of a
    video file is TV-L1 computed on the fly (`flow`). Raises FrameError for a missing or
    unreadable source."""
    if fps and src.layout != "file":
        raise FrameError(f"{src.path}: --fps needs a video file (frame folders have no timestamps)")
    if src.layout == "file":
        total, src_fps, _, _ = frame_io.video_info(src.path)
        if total <= 0:  # no count in the container (some webm, gif): count the frames first
            total = frame_io.count_video_frames(src.path)
        if fps and src_fps and fps > src_fps + 1e-6:
            raise FrameError(f"{src.path}: --fps {fps:g} is above the video's {src_fps:g} fps")
        total = sampled_count(total, src_fps, fps)
        if mode == "flow":
            frames = _video_flow(src, flow or FlowOptions(), fps)
        elif fps:
            frames = frame_io.sample_frames(src.path, fps)
        else:
            frames = frame_io.iter_frames(src.path)
        frames = (frame_io.resize_for_mode(f, resize, mode) for f in frames)
        if crop:
            frames = (frame_io.center_crop(f, crop) for f in frames)
        return total, float(fps or src_fps or math.nan), frames
    if src.layout == "charades":
        total = frame_io.count_charades_frames(src.path, src.vid, mode)
        if total == 0:
            raise FrameError(f"{Path(src.path) / src.vid}: no frames "
                                      f"({frame_io.charades_frame_name(src.vid, 1, 'x' if mode == 'flow' else '')} missing)")

        def gen() -> Iterator[np.ndarray]:
            # Through load_charades_frames in small runs, the one Charades frame loader.
            for start in range(1, total + 1, 16):
                frames = frame_io.load_charades_frames(src.path, src.vid, start, min(16, total + 1 - start), mode,
                                                       resize=resize)
                yield from frames
        frames, fps = gen(), math.nan
    elif mode == "flow":
        if src.layout != "folder":
            raise FrameError(f"{src.path}: flow mode needs a video file or a folder of x/y flow JPEGs")
        total, frames = frame_io.flow_folder_frames(src.path)
        frames, fps = (frame_io.resize_for_mode(f, resize, mode) for f in frames), math.nan
    else:  # a folder of frame images
        files = frame_io.list_frame_files(src.path)
        if not files:
            raise FrameError(f"{src.path}: no frame images in folder")
        total, fps = len(files), math.nan
        frames = (frame_io.resize_for_mode(f, resize, mode) for f in frame_io.iter_frames(src.path))
    if crop:
        frames = (frame_io.center_crop(f, crop) for f in frames)
    return total, fps, frames


def iter_pieces(src: VideoSource, mode: str, resize: int | None, crop: int,
                piece_frames: int = PIECE_FRAMES, fps: float | None = None,
                flow: FlowOptions | None = None) -> Iterator[dict]:
    """The items of one video: dicts with frames (n, H, W, C) uint8 tensor, start (first frame
    index), total (expected frame count), fps, last (True on the final item, whose `count` is
    the number of frames actually decoded) and error (None, or one line naming the file)."""
    base = {"key": src.key, "start": 0, "total": 0, "fps": math.nan, "last": False, "count": 0, "error": None,
            "frames": torch.empty(0, dtype=torch.uint8)}
    count = 0
    try:
        total, rate, frames = open_video(src, mode, resize, crop, fps, flow)
        base.update(total=total, fps=rate)
        buf: list[np.ndarray] = []
        for f in frames:
            buf.append(f if f.ndim == 3 else f[..., None])
            if len(buf) == piece_frames:
                yield {**base, "start": count, "frames": torch.from_numpy(np.stack(buf))}
                count += len(buf)
                buf = []
        tail = torch.from_numpy(np.stack(buf)) if buf else base["frames"]
        count += len(buf)
        if count == 0:
            raise FrameError(f"{src.path}: no frames decoded")
        yield {**base, "start": count - len(buf), "frames": tail, "last": True, "count": count}
    except Exception as e:  # one bad video must not stop the others: report it as an item
        msg = str(e) if isinstance(e, FrameError) else f"{src.key}: {e.__class__.__name__}: {e}"
        yield {**base, "last": True, "count": count, "error": msg}


class StreamingVideoDataset(IterableDataset):
    """An IterableDataset over whole videos, yielding iter_pieces items video after video.

    Each video is read by exactly one worker (video i goes to worker i % num_workers), so a
    video's items arrive in order, while items of different workers' videos interleave.
    Use batch_size=None in the DataLoader (items are already batches of frames)."""

    def __init__(self, sources: list[VideoSource], mode: str = "rgb", resize: int | None = None,
                 crop: int = 224, piece_frames: int = PIECE_FRAMES, fps: float | None = None,
                 flow: FlowOptions | None = None):
        self.sources = list(sources)
        self.mode, self.resize, self.crop, self.piece_frames = mode, resize, crop, piece_frames
        self.fps, self.flow = fps, flow

    def __len__(self) -> int:  # number of videos, for progress bars
        return len(self.sources)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(wid, len(self.sources), nw):
            for item in iter_pieces(self.sources[i], self.mode, self.resize, self.crop, self.piece_frames,
                                    self.fps, self.flow):
                item["index"] = i
                yield item


# ----------------------------------------------------------------------------------------------
# Both streams from one decode, TV-L1 on every core (extract_features.py -mode both/flow --input,
# predict.py's two-stream prediction of a video file)
# ----------------------------------------------------------------------------------------------

FLOW_JOB_PAIRS = 4  # frame pairs per worker job: small, so a video's last job keeps no core waiting long
BOTH_PIECE_FRAMES = 16  # frames per item: the network runs in small steps between feeding the workers


def default_flow_workers() -> int:
    """TV-L1 processes for flow from video files, beside the process that decodes and runs the
    networks: every core but that process's share (the networks of -mode both take about a
    sixth of its CPU time on 2 cores; the rule for many cores is not measured)."""
    cores = os.cpu_count() or 1
    return max(1, cores - cores // 6)


def _flow_job(grays: np.ndarray, jpeg: bool, files: bool, compile_step: bool) -> tuple:
    """A worker's job: the stored flow frames of the len(grays) - 1 consecutive pairs of grays,
    (uint8 (k, H, W, 2), [(x, y) JPEG bytes] or None, None), or (None, None, error)."""
    try:
        flows = tvl1.compute_flow(grays, device="cpu", batch=len(grays) - 1, compile_step=compile_step)
        out = [tvl1.encode_flow(fl, jpeg, files) for fl in flows]
        return np.stack([frame for frame, _ in out]), ([b for _, b in out] if files else None), None
    except Exception as e:  # handed to the parent: the video fails, the others go on
        return None, None, f"TV-L1 failed: {e.__class__.__name__}: {e}"


class _Done:
    """The result of a job run in this process (FlowWorkers(0)), with AsyncResult's API."""

    def __init__(self, value: tuple):
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self) -> tuple:
        return self.value


class FlowWorkers:
    """TV-L1 flow (CPU) on `workers` processes started once for the run (0: in this process): runs
    of FLOW_JOB_PAIRS consecutive frame pairs go out as jobs (a pair is solved on its own, so
    the flow does not depend on the split), the results come back as dense_flow.py's stored
    flow (tvl1.encode_flow), the JPEG bytes too with files=True. The workers are tvl1.start_pool's,
    one thread each, as dense_flow.py's."""

    def __init__(self, workers: int, jpeg: bool = True, files: bool = False):
        self.workers, self.jpeg, self.files = max(0, workers), jpeg, files
        self.compile_step = tvl1.compile_available(torch.device("cpu"))  # in-process jobs too
        self.pool = None
        if self.workers:
            self.pool, self.compile_step = tvl1.start_pool(self.workers, 1, torch.device("cpu"), self.compile_step)

    def submit(self, grays: np.ndarray):
        args = (grays, self.jpeg, self.files, self.compile_step)
        if self.pool is not None:
            return self.pool.apply_async(_flow_job, args)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a worker: the same float sums as dense_flow.py
        try:
            return _Done(_flow_job(*args))
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        if self.pool is not None:
            stop_pool(self.pool)
            self.pool = None

    def __enter__(self) -> "FlowWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _Flight:
    """A video whose flow is still being computed."""
    index: int
    src: VideoSource
    base: dict
    sent: int = 0  # flow frames yielded so far
    failed: bool = False
    last: tuple | None = None  # the last flow frame (and its JPEG bytes): frame N repeats it
    keep: contextlib.ExitStack | None = None
    keep_tmp: Path | None = None


def two_stream_items(videos: list[tuple[VideoSource, tuple[str, ...]]], workers: FlowWorkers,
                     rgb_frame: Callable[[np.ndarray], np.ndarray], gray_frame: Callable[[np.ndarray], np.ndarray],
                     flow_frame: Callable[[np.ndarray], np.ndarray], fps: float | None = None,
                     keep_dir: str | Path | None = None,
                     piece_frames: int = BOTH_PIECE_FRAMES) -> Iterator[tuple[str, dict]]:
    """(mode, item) for video files: each video decoded once, in this process, for the streams
    its `modes` name ('rgb', 'flow'); items as iter_pieces' plus `index` (the video's place in
    `videos`). rgb_frame(frame) is an RGB frame for the network; gray_frame(frame) the
    grayscale frame TV-L1 runs on; flow_frame(flow) a stored flow frame (H, W, 2) for the
    network. The pairs go to `workers` while this process runs the network on what it yields
    (RGB ahead, flow as it comes back, in order); videos follow each other without a pause for
    the last pairs. A video that cannot be decoded yields an error item for each stream; a
    failed flow job an error item for its flow. keep_dir: also KEEP/KEY/VID-000001x.jpg, as
    dense_flow.py writes them, renamed into place when the video's flow is complete."""
    flights: deque = deque()  # (flight, job result or None at the end of a video's frames)
    limit = 2 * max(1, workers.workers) + 1  # jobs in flight: every worker busy, memory bounded

    def item(flight: _Flight, frames: list[np.ndarray], start: int, **kw) -> dict:
        stacked = torch.from_numpy(np.stack([f if f.ndim == 3 else f[..., None] for f in frames])) if frames \
            else torch.empty(0, dtype=torch.uint8)
        return {**flight.base, "start": start, "frames": stacked, **kw}

    def fail(flight: _Flight, msg: str) -> dict:
        flight.failed = True
        if flight.keep is not None:
            flight.keep.__exit__(FrameError, FrameError(msg), None)  # the kept frames' temporary folder goes
        return {**flight.base, "last": True, "count": flight.sent, "error": msg, "frames": torch.empty(0, dtype=torch.uint8)}

    def out(flight: _Flight, result, end: dict | None) -> Iterator[tuple[str, dict]]:
        if flight.failed:
            return
        if end is not None:  # all of the video's pairs are in
            if end["error"] is not None:
                yield "flow", fail(flight, end["error"])
                return
            if flight.last is None:
                yield "flow", fail(flight, f"{flight.src.path}: fewer than two frames, no flow")
                return
            frame, files = flight.last  # frame N repeats flow N-1, as dense_flow.py writes it
            if flight.keep is not None:
                _keep_flow(flight, flight.sent + 1, files)
                flight.keep.close()  # renamed into place
            yield "flow", item(flight, [flow_frame(frame)], flight.sent, last=True, count=flight.sent + 1)
            return
        frames, files, error = result.get()
        if error is not None:
            yield "flow", fail(flight, f"{flight.src.path}: {error}")
            return
        if keep_dir is not None:
            if flight.keep is None:
                flight.keep = contextlib.ExitStack()
                flight.keep_tmp = flight.keep.enter_context(atomic_io.atomic_dir(Path(keep_dir) / flight.src.key))
            for k, b in enumerate(files):
                _keep_flow(flight, flight.sent + k + 1, b)
        flight.last = (frames[-1], files[-1] if files else None)
        yield "flow", item(flight, [flow_frame(f) for f in frames], flight.sent)
        flight.sent += len(frames)

    def pop(wait: bool) -> Iterator[tuple[str, dict]]:
        """The flow items whose jobs are done, in order; with wait, at least the oldest."""
        while flights and (wait or flights[0][1] is None or flights[0][1].ready()):
            flight, result, end = flights.popleft()
            wait = False
            yield from out(flight, result, end)

    try:
        for index, (src, modes) in enumerate(videos):
            base = {"key": src.key, "index": index, "start": 0, "total": 0, "fps": math.nan, "last": False,
                    "count": 0, "error": None}
            flight = _Flight(index, src, base)
            rgb, grays, count, error = [], [], 0, None
            frames: Iterator[np.ndarray] = iter(())
            try:
                total, rate, frames = open_video(src, "rgb", 0, 0, fps)  # the decoded frames, unchanged
                base.update(total=total, fps=rate)
            except Exception as e:
                error = _video_error(src, e)
            while error is None:
                job = piece = None
                try:  # decoding and conversion only: a failure here is this video's
                    f = next(frames, None)
                    if f is None:
                        if count == 0:
                            raise FrameError(f"{src.path}: no frames decoded")
                        break
                    if "flow" in modes:
                        grays.append(gray_frame(f))
                        if len(grays) == FLOW_JOB_PAIRS + 1:
                            job, grays = np.stack(grays), grays[-1:]
                    if "rgb" in modes:
                        rgb.append(rgb_frame(f))
                        if len(rgb) == piece_frames:
                            piece, rgb = item(flight, rgb, count + 1 - len(rgb)), []
                    count += 1
                except Exception as e:
                    error = _video_error(src, e)
                    break
                if job is not None:
                    flights.append((flight, workers.submit(job), None))
                    yield from pop(len(flights) >= limit)
                if piece is not None:
                    yield "rgb", piece
            if "rgb" in modes:
                try:
                    last = item(flight, rgb, count - len(rgb), last=True, count=count) if error is None else None
                except Exception as e:
                    error = _video_error(src, e)
                yield "rgb", last if error is None else {**base, "last": True, "count": count, "error": error,
                                                         "frames": torch.empty(0, dtype=torch.uint8)}
            if "flow" in modes:
                if error is None and len(grays) >= 2:
                    flights.append((flight, workers.submit(np.stack(grays)), None))
                flights.append((flight, None, {"error": error}))
                yield from pop(False)
        while flights:
            yield from pop(True)
    finally:  # stopped early: the kept frames' temporary folders go
        for flight, _, _ in flights:
            if flight.keep is not None and not flight.failed:
                flight.failed = True
                flight.keep.__exit__(FrameError, FrameError("stopped"), None)


def _video_error(src: VideoSource, e: Exception) -> str:
    return str(e) if isinstance(e, FrameError) else f"{src.key}: {e.__class__.__name__}: {e}"


def _keep_flow(flight: _Flight, index: int, files: tuple[bytes, bytes]) -> None:
    vid = Path(flight.src.path).stem
    for axis, data in zip("xy", files):
        atomic_io.write_bytes_checked(flight.keep_tmp / frame_io.charades_frame_name(vid, index, axis), data)


def charades_sources(root: Path, split: Path | None = None) -> list[VideoSource]:
    """Charades videos: those of the split file (all subsets, as the original), or every folder
    under root."""
    if not root.is_dir():
        raise UserError(f"{root}: -root is not a folder")
    if split is not None:
        vids = sorted(read_annotations(split))
    else:
        vids = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not vids:
        raise UserError(f"{root}: no videos (no sub-folders{' in the split' if split else ''})")
    return [VideoSource(key=v, layout="charades", path=str(root), vid=v) for v in vids]


def input_sources(inputs: list[Path]) -> list[VideoSource]:
    """Video files and frame folders from --input: files, folders (a folder holding frame
    images is one video, else its videos and frame folders are searched recursively) and .txt
    lists (frame_io.read_list: one path per line, relative to the list file). Keys are the paths relative to
    the inputs' common folder, suffix dropped, so equal names in different folders stay apart."""
    paths: list[tuple[Path, str]] = []

    def add(p: Path) -> None:
        if p.is_file() and p.suffix.lower() in frame_io.LIST_EXTS:
            for entry in frame_io.read_list(p):
                add(entry)
        elif p.is_file():
            frame_io.refuse_text_file(p)
            paths.append((p, "file"))
        elif p.is_dir():
            if any(f.suffix.lower() in frame_io.IMAGE_EXTS for f in p.iterdir()):
                paths.append((p, "folder"))
            else:
                for c in sorted(p.iterdir()):
                    if c.is_dir() or frame_io.is_video_file(c):
                        add(c)
        else:
            raise UserError(f"{p}: no such video file or folder")

    for p in inputs:
        add(p)
    if not paths:
        raise UserError("no videos found in --input")
    absolute = [p.resolve() for p, _ in paths]
    parents = [a.parent for a in absolute]
    common = Path(os.path.commonpath(parents))
    out, seen = [], {}
    for (p, layout), a in zip(paths, absolute):
        rel = a.relative_to(common)
        key = (rel.with_suffix("") if layout == "file" else rel).as_posix()
        if key in seen and seen[key] != a:
            raise UserError(f"{seen[key]} and {a} would both be saved as {key}; rename one")
        if key not in seen:
            seen[key] = a
            out.append(VideoSource(key=key, layout=layout, path=str(p)))
    return out
