"""Extract I3D features of whole videos: exact, bounded in memory, resumable, sharded.

    python extract_features.py -mode rgb -load_model models/rgb_scratch.pt -root ROOT -save_dir DIR [-split charades.json]
    python extract_features.py -mode rgb -load_model models/rgb_imagenet.pt --input videos/ list.txt clip.mp4 -save_dir DIR

What is computed (per video):
- default: the original pytorch-i3d semantics, i3d.extract_features(whole video) ->
  (T', 1, 1, 1024) float32 with T' = ceil(T/8) - 1 (at least 1), frames resized by the
  Charades rule (upscale only when the smaller side is under 226; --resize N for smaller side N)
  and center cropped to 224 (--crop). Long videos run in overlapping temporal chunks (starts
  on multiples of 8, the length residue mod 8 of the whole video, context beyond the network's
  temporal receptive field on both sides), so the result equals the whole-video computation
  while memory stays bounded by --chunk-frames, whatever the length.
- --endpoint E (an earlier endpoint such as Mixed_4f): that endpoint's map averaged over
  space, (T_E, C) with T_E = ceil(T / stride_E). Mixed_5c (default) keeps the pooled output above.
- --stack N --step S (as video_features): one feature per window of N frames starting every S
  frames, each window run through the network on its own, averaged over time and space:
  (windows, C). A partial last window is dropped (as video_features); a video shorter than N
  frames fails with a clear message.
- --ten-crop: 4 corners + center and their horizontal flips (flow: the x channel negated),
  stacked on a leading crop axis: (10, ...) in front of the shapes above.
- -mode both: rgb into SAVE_DIR/rgb, flow into SAVE_DIR/flow (-load_model is the RGB model,
  --flow-model the flow model), the same names under each.

Outputs: SAVE_DIR/KEY.npy (KEY keeps the input's folder structure), or with --format h5 one
SAVE_DIR/features.h5 (features-K-of-N.h5 per shard), one dataset per video with attributes
fps, stride, frames, endpoint, mode. Every finished video is first saved atomically as
SAVE_DIR/.pending*/KEY.npy; the HDF5 file is rebuilt from the previous one plus these in a
temporary file and renamed at the end of the run, so a kill at any moment leaves the last good
HDF5 file and the finished videos' .npy, which the rerun picks up (never recomputed).

A rerun skips finished videos. A video that fails is named in the log, in SAVE_DIR/failures.txt
(failures-K-of-N.txt per shard), the others go on, and the exit status is 1.
--shard K/N (or torchrun's RANK / WORLD_SIZE) takes videos i % N == K of the sorted list.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

import frame_io
from charades_dataset_full import StreamingVideoDataset, VideoSource, iter_pieces
from cli import UserError, run_main, select_device, setup_logging
from pytorch_i3d import PRECISIONS, VALID_ENDPOINTS, same_padding

log = logging.getLogger("extract_features")

CONV_ENDPOINTS = VALID_ENDPOINTS[:VALID_ENDPOINTS.index("Mixed_5c") + 1]
ALIGN = 8  # chunk starts and length residues are taken mod the network's total temporal stride

# ----------------------------------------------------------------------------------------------
# Temporal geometry: which input frames each output step depends on
# ----------------------------------------------------------------------------------------------

# (kernel, stride) in time of every endpoint; Inception blocks reach one step either side
# (their 3x3x3 convs and 3x3x3 max pool), endpoints not listed are 1 frame wide in time.
_TEMPORAL = {"Conv3d_1a_7x7": (7, 2), "Conv3d_2c_3x3": (3, 1), "MaxPool3d_4a_3x3": (3, 2),
             "MaxPool3d_5a_2x2": (2, 2)}


def temporal_geometry(endpoint: str = "Mixed_5c", pooled: bool = True) -> tuple[int, int, int]:
    """(stride, left, right): output step j of `endpoint` (with pooled, after the final
    AvgPool3d of kernel 2 in time) depends on input frames stride*j - left .. stride*j + right,
    for every TF-SAME padding phase. Mixed_5c pooled gives (8, 47, 62): 110 frames."""
    layers = [_TEMPORAL.get(n, (3, 1) if n.startswith("Mixed") else (1, 1))
              for n in CONV_ENDPOINTS[:CONV_ENDPOINTS.index(endpoint) + 1]]
    stride = math.prod(s for _, s in layers)
    # The padding before depends on the input length's parity at stride-2 layers: try both.
    choices = [sorted({same_padding(n, k, s)[0] for n in (10, 11)}) for k, s in layers]
    if pooled:
        layers, choices = layers + [(2, 1)], choices + [[0]]  # 'valid' average pool
    j = 1000
    left = right = 0
    for pads in itertools.product(*choices):
        a = b = j
        for (k, s), p in zip(reversed(layers), reversed(pads)):
            a, b = s * a - p, s * b - p + k - 1
        left, right = max(left, stride * j - a), max(right, b - stride * j)
    return stride, left, right


class ResidueMismatch(RuntimeError):
    """The stream's length differed (mod 8) from the one its middle chunks were computed for."""

    def __init__(self, total: int):
        super().__init__(f"stream had {total} frames, not the expected length residue; rerun with total={total}")
        self.total = total


class TemporalChunker:
    """Feed a video's frames in order (push), get the whole-video output (finish).

    `run` maps uint8 frames (1, L, H, W, C) to outputs (1, crops, L', ...) with time on axis 2.
    Middle chunks [s, e) start on a multiple of 8, keep `left` frames of context before the
    first output they contribute and `right` after the last, and have e - s = T (mod 8), so
    every TF-SAME padding in them has the whole video's phase: their kept outputs are exact.
    Only `chunk_frames` + context frames are ever buffered."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], stride: int, left: int, right: int,
                 chunk_frames: int = 512, total: int | None = None):
        self.run, self.stride, self.left, self.right = run, stride, left, right
        self.core = max(1, chunk_frames // stride)  # output steps kept per middle chunk
        self.residue = (total or 0) % ALIGN
        self.pieces: list[np.ndarray] = []
        self.buf_start = 0  # frame index of the first buffered frame
        self.seen = 0
        self.next_out = 0  # first output step not computed yet
        self.middle_done = False
        self.outputs: list[torch.Tensor] = []

    def _start(self) -> int:
        s = max(0, self.stride * self.next_out - self.left)
        return s - s % ALIGN

    def _planned_end(self) -> int:
        need = self.stride * (self.next_out + self.core - 1) + self.right + 1
        return need + (self.residue - need) % ALIGN

    def _frames(self, s: int, e: int) -> np.ndarray:
        buf = np.concatenate(self.pieces) if len(self.pieces) > 1 else self.pieces[0]
        self.pieces = [buf]
        return buf[s - self.buf_start:e - self.buf_start]

    def _drop_before(self, s: int) -> None:
        if s > self.buf_start:
            self.pieces = [self._frames(s, self.seen).copy()]
            self.buf_start = s

    def push(self, frames: np.ndarray) -> None:
        if len(frames) == 0:
            return
        self.pieces.append(frames)
        self.seen += len(frames)
        while self.seen >= self._planned_end():
            s, e = self._start(), self._planned_end()
            out = self.run(torch.from_numpy(self._frames(s, e))[None])[0]
            first = self.next_out - s // self.stride
            self.outputs.append(out[:, first:first + self.core])
            self.next_out += self.core
            self.middle_done = True
            self._drop_before(self._start())

    def finish(self) -> torch.Tensor:
        """(crops, T_out, ...) for the whole stream; ResidueMismatch if the guess was wrong."""
        total = self.seen
        if total == 0:
            raise frame_io.FrameError("no frames")
        if self.middle_done and total % ALIGN != self.residue:
            raise ResidueMismatch(total)
        s = self._start()
        out = self.run(torch.from_numpy(self._frames(s, total))[None])[0]
        self.outputs.append(out[:, self.next_out - s // self.stride:])
        self.pieces = []
        return torch.cat(self.outputs, dim=1)


class WindowBatcher:
    """Runs the --stack windows of any number of videos through the network `batch` at a time
    (windows of one shape per batch), handing each window's feature back to its video, so
    short videos fill batches together. A failed batch marks every video that had a window in it."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], batch: int = 4):
        self.run, self.batch = run, max(1, batch)
        self.pending: list[tuple["WindowStacker", np.ndarray]] = []

    def add(self, owner: "WindowStacker", window: np.ndarray) -> None:
        if self.pending and self.pending[0][1].shape != window.shape:
            self.flush()
        self.pending.append((owner, window))
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        owners, windows = zip(*self.pending)
        self.pending = []
        try:
            out = self.run(torch.from_numpy(np.stack(windows)))  # (B, crops, L', [h, w,] C)
        except Exception as e:
            for owner in owners:
                owner.error = owner.error or e
            raise
        for owner, feature in zip(owners, out.flatten(2, -2).mean(dim=2)):  # mean over time and space
            owner.outputs.append(feature[None])


class WindowStacker:
    """--stack N --step S: one feature per window of N frames starting every S frames, each
    window a separate forward pass, averaged over time and space (video_features' clips).
    Windows go through `batcher` (shared by the videos of a run), else batches of `batch` of
    this video's own; a partial last window is dropped."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], stack: int, step: int, batch: int = 4,
                 batcher: WindowBatcher | None = None):
        self.batcher = batcher or WindowBatcher(run, batch)
        self.stack, self.step = stack, step
        self.pieces: list[np.ndarray] = []
        self.buf_start = 0
        self.seen = 0
        self.next_window = 0
        self.outputs: list[torch.Tensor] = []
        self.error: Exception | None = None

    def push(self, frames: np.ndarray) -> None:
        if len(frames) == 0:
            return
        self.pieces.append(frames)
        self.seen += len(frames)
        while self.seen >= self.step * self.next_window + self.stack:
            buf = np.concatenate(self.pieces) if len(self.pieces) > 1 else self.pieces[0]
            s = self.step * self.next_window - self.buf_start
            window = buf[s:s + self.stack]
            self.next_window += 1
            # Keep only frames the next window can use (none of a gap when step > stack).
            drop = min(self.step * self.next_window - self.buf_start, len(buf))
            self.pieces = [buf[drop:].copy()]
            self.buf_start += drop
            self.batcher.add(self, window)

    def finish(self) -> torch.Tensor:
        """(crops, windows, C)."""
        self.batcher.flush()
        if self.error is not None:
            raise self.error
        if not self.outputs:
            raise frame_io.FrameError(f"{self.seen} frames, shorter than one --stack of {self.stack}")
        return torch.cat(self.outputs).transpose(0, 1)


# ----------------------------------------------------------------------------------------------
# Running the network on uint8 frames
# ----------------------------------------------------------------------------------------------

def ten_crop_boxes(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the 4 corners and the center, as torchvision's FiveCrop."""
    return [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)]


def make_runner(model: torch.nn.Module, device: torch.device, mode: str = "rgb", endpoint: str = "Mixed_5c",
                ten_crop: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function: uint8 frames (B, L, H, W, C) -> float32 CPU outputs (B, crops, L', ...):
    Mixed_5c gives extract_features' pooled map as (L', h, w, C); other endpoints their map
    averaged over space, (L', C). ten_crop=S takes 10 crops of S pixels (S=0: the frames as given)."""
    pooled = endpoint == "Mixed_5c"

    def features(x: torch.Tensor) -> torch.Tensor:
        if pooled:
            return model.extract_features(x).permute(0, 2, 3, 4, 1)  # (B, L', h, w, C)
        return model(x).mean(dim=(3, 4)).transpose(1, 2)  # (B, L', C)

    def run(frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(device, non_blocking=True)
        # (B, L, H, W, C) -> (B, C, L, H, W) as a view: already the channels-last-3d layout.
        x = x.permute(0, 4, 1, 2, 3).float().mul_(2.0 / 255.0).sub_(1.0)
        with torch.inference_mode():
            if not ten_crop:
                return features(x).float().cpu()[:, None]
            h, w = x.shape[-2:]
            if min(h, w) < ten_crop:
                raise frame_io.FrameError(f"frames of {h}x{w} are smaller than the {ten_crop} ten-crop")
            outs = []
            for flip in (False, True):
                for top, lft in ten_crop_boxes(h, w, ten_crop):
                    c = x[..., top:top + ten_crop, lft:lft + ten_crop]
                    if flip:
                        c = c.flip(-1)
                        if mode == "flow":  # mirrored motion: x displacement changes sign
                            c = torch.cat([-c[:, :1], c[:, 1:]], dim=1)
                    outs.append(features(c).float().cpu())
            return torch.stack(outs, dim=1)
    return run


def _spooled(frames: Iterable[np.ndarray]) -> tuple[int, Callable[[], Iterator[np.ndarray]], Callable[[], None]]:
    """Copy a one-shot frame stream to a temporary file (memory stays bounded) to learn its
    length: (count, a function that replays the frames, cleanup)."""
    tmp = tempfile.NamedTemporaryFile(prefix="i3d-frames-", suffix=".u8", delete=False)
    shape = None
    count = 0
    with tmp:
        for f in frames:
            if shape is None:
                shape = f.shape
            elif f.shape != shape:
                raise frame_io.FrameError(f"frame {count} is {f.shape[:2]}, the first was {shape[:2]}")
            tmp.write(np.ascontiguousarray(f, dtype=np.uint8).tobytes())
            count += 1

    def replay() -> Iterator[np.ndarray]:
        if count:
            yield from np.memmap(tmp.name, dtype=np.uint8, mode="r", shape=(count, *shape))
    return count, replay, lambda: os.unlink(tmp.name)


def stream_features(model: torch.nn.Module, frames: Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]],
                    device: torch.device | str = "cpu", total: int | None = None,
                    chunk_frames: int = 512) -> torch.Tensor:
    """extract_features of a whole frame stream, exact and in bounded memory: (T', 1024, h, w).

    frames: uint8 (H, W, C) frames, already resized and cropped, or a function returning a
    fresh iterator of them. The chunks' TF-SAME padding needs the length mod 8: give `total`
    (exact, or the container's count) or a sized `frames`; if a guessed total proves wrong, a
    function is read again with the true length and a plain iterator raises ResidueMismatch. A
    plain iterator without any total is first spooled to a temporary file to count it."""
    device = torch.device(device)
    stride, left, right = temporal_geometry("Mixed_5c", pooled=True)
    run = make_runner(model, device)
    if total is None and hasattr(frames, "__len__"):
        total = len(frames)
    cleanup = None
    if total is None and not callable(frames):
        total, frames, cleanup = _spooled(frames)
    try:
        for _ in range(2):
            chunker = TemporalChunker(run, stride, left, right, chunk_frames, total)
            source = frames() if callable(frames) else frames
            batch: list[np.ndarray] = []
            for f in source:
                batch.append(f if f.ndim == 3 else f[..., None])
                if len(batch) == 64:
                    chunker.push(np.stack(batch))
                    batch = []
            if batch:
                chunker.push(np.stack(batch))
            try:
                out = chunker.finish()[0]  # (T', h, w, C)
                return out.permute(0, 3, 1, 2).contiguous()
            except ResidueMismatch as e:
                if not callable(frames):
                    raise
                total = e.total
        raise AssertionError("unreachable")
    finally:
        if cleanup is not None:
            cleanup()


def stream_logits(model: torch.nn.Module, frames: Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]],
                  device: torch.device | str = "cpu", total: int | None = None) -> torch.Tensor:
    """Per-time logits (C, T') of a whole frame stream, exactly as forward() of the whole video:
    the model's logits layer (a 1x1x1 conv) on stream_features, then the mean over space."""
    feats = stream_features(model, frames, device, total=total)  # (T', 1024, h, w)
    head = getattr(model.logits, "conv3d", model.logits)  # InceptionI3d's Unit3D, or the fast model's conv
    p = next(head.parameters())
    with torch.inference_mode():
        x = feats.permute(1, 0, 2, 3)[None].to(device=p.device, dtype=p.dtype)  # (1, 1024, T', h, w)
        return head(x).float().mean(dim=(3, 4))[0].cpu()


# ----------------------------------------------------------------------------------------------
# Which videos, and where their outputs go
# ----------------------------------------------------------------------------------------------

def parse_shard(text: str | None) -> tuple[int, int]:
    """'K/N' -> (K, N); None -> torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= k < n):
        raise UserError(f"--shard {text!r}: need 0 <= K < N")
    return k, n


def shard(items: list, k: int, n: int) -> list:
    """Videos i % n == k of the list sorted by key: shards are disjoint and cover the list."""
    return [v for i, v in enumerate(sorted(items, key=lambda v: v.key)) if i % n == k]


def charades_sources(root: Path, split: Path | None = None) -> list[VideoSource]:
    """Charades videos: those of the split file (all subsets, as the original), or every folder
    under root."""
    if not root.is_dir():
        raise UserError(f"{root}: -root is not a folder")
    if split is not None:
        from charades_dataset import read_annotations

        vids = sorted(read_annotations(split))
    else:
        vids = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not vids:
        raise UserError(f"{root}: no videos (no sub-folders{' in the split' if split else ''})")
    return [VideoSource(key=v, layout="charades", path=str(root), vid=v) for v in vids]


def input_sources(inputs: list[Path]) -> list[VideoSource]:
    """Video files and frame folders from --input: files, folders (a folder holding frame
    images is one video, else its videos and frame folders are searched recursively) and .txt
    lists (one path per line, relative to the current folder). Keys are the paths relative to
    the inputs' common folder, suffix dropped, so equal names in different folders stay apart."""
    paths: list[tuple[Path, str]] = []

    def add(p: Path) -> None:
        if p.is_file() and p.suffix.lower() == ".txt":
            for line in p.read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    add(Path(line.strip()))
        elif p.is_file():
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


class NpyStore:
    """SAVE_DIR/KEY.npy, each written atomically."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def done(self, key: str) -> bool:
        return (self.out_dir / f"{key}.npy").is_file()

    def save(self, key: str, array: np.ndarray, attrs: dict) -> None:
        frame_io.save_npy(self.out_dir / f"{key}.npy", array)

    def close(self) -> None:
        pass


class H5Store:
    """One HDF5 file; finished videos go to PENDING/KEY.npy (atomic) and are merged into a
    rebuilt copy of the HDF5 file that replaces it atomically (close(), or the next run)."""

    def __init__(self, path: Path, pending: Path):
        import h5py

        self.h5py, self.path, self.pending = h5py, path, pending
        self.present: set[str] = set()
        if path.exists():
            try:
                with h5py.File(path, "r", locking=False) as f:
                    f.visititems(lambda name, obj: self.present.add(name) if isinstance(obj, h5py.Dataset) else None)
            except OSError as e:
                raise UserError(f"{path}: unreadable HDF5 file ({e}); move it away to start over") from e

    def _pending(self, key: str) -> Path:
        return self.pending / f"{key}.npy"

    def done(self, key: str) -> bool:
        return key in self.present or self._pending(key).is_file()

    def save(self, key: str, array: np.ndarray, attrs: dict) -> None:
        frame_io.save_npy(self._pending(key), array)
        with frame_io.atomic_write(self.pending / f"{key}.attrs.json") as tmp:
            tmp.write_text(json.dumps(attrs))

    def close(self) -> None:
        new = sorted(p for p in self.pending.rglob("*.npy") if not p.name.startswith(".")) if self.pending.is_dir() else []
        if not new:
            return

        with frame_io.atomic_write(self.path, suffix=".tmp.h5") as tmp:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
            with self.h5py.File(tmp, "a", locking=False) as f:
                for p in new:
                    key = p.relative_to(self.pending).with_suffix("").as_posix()
                    if key in f:
                        continue
                    ds = f.create_dataset(key, data=np.load(p, allow_pickle=False))
                    attrs_file = p.with_name(p.name[:-4] + ".attrs.json")
                    if attrs_file.is_file():
                        for k, v in json.loads(attrs_file.read_text()).items():
                            ds.attrs[k] = v
        shutil.rmtree(self.pending, ignore_errors=True)
        log.info("wrote %s (%d new videos)", self.path, len(new))


# ----------------------------------------------------------------------------------------------
# The extraction loop
# ----------------------------------------------------------------------------------------------

def _new_state(args: argparse.Namespace, run: Callable, endpoint: str, total: int,
               batcher: WindowBatcher | None = None):
    if args.stack:
        return WindowStacker(run, args.stack, args.step or args.stack, args.batch_windows, batcher)
    stride, left, right = temporal_geometry(endpoint, pooled=endpoint == "Mixed_5c")
    return TemporalChunker(run, stride, left, right, args.chunk_frames, total)


def _finish(state, ten_crop: bool) -> np.ndarray:
    out = state.finish()  # (crops, ...)
    return (out if ten_crop else out[0]).numpy()


def extract_videos(args: argparse.Namespace, model: torch.nn.Module, sources: list[VideoSource], mode: str,
                   out_dir: Path, device: torch.device, tag: str = "") -> tuple[int, list[tuple[str, str]]]:
    """Extract every source not done yet into out_dir; (videos done, [(key, error)])."""
    store = (H5Store(out_dir / f"features{tag}.h5", out_dir / f".pending{tag}") if args.format == "h5"
             else NpyStore(out_dir))
    todo = [s for s in sources if not store.done(s.key)]
    log.info("%s: %d videos, %d already done, %d to extract", mode, len(sources), len(sources) - len(todo), len(todo))
    endpoint = args.endpoint
    run = make_runner(model, device, mode, endpoint, args.crop if args.ten_crop else 0)
    stride = args.step or args.stack if args.stack else temporal_geometry(endpoint, endpoint == "Mixed_5c")[0]
    crop = 0 if args.ten_crop else args.crop
    failures: list[tuple[str, str]] = []
    done = frames_total = 0
    t0 = time.perf_counter()
    from tqdm import tqdm

    dataset = StreamingVideoDataset(todo, mode=mode, resize=args.resize, crop=crop)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=args.workers,
                                         pin_memory=device.type == "cuda",
                                         prefetch_factor=2 if args.workers else None)
    # --stack windows of all videos share batches (short videos fill them together).
    batcher = WindowBatcher(run, args.batch_windows) if args.stack else None
    states: dict[int, object] = {}
    broken: set[int] = set()
    bar = tqdm(total=len(todo), unit="video", desc=mode, disable=not todo or args.quiet)
    try:
        for item in loader:
            i, key = item["index"], item["key"]
            if item["error"] is None and i not in broken:
                try:
                    if i not in states:
                        states[i] = _new_state(args, run, endpoint, item["total"], batcher)
                    states[i].push(item["frames"].numpy())
                except Exception as e:  # e.g. frames smaller than the crop, out of memory
                    broken.add(i)
                    states.pop(i, None)
                    failures.append((key, f"{key}: {e}"))
                    log.error("%s: %s", key, e)
            if not item["last"]:
                continue
            bar.update(1)
            if i in broken:
                continue
            if item["error"] is not None:
                states.pop(i, None)
                failures.append((key, item["error"]))
                log.error("%s", item["error"])
                continue
            try:
                try:
                    array = _finish(states.pop(i), args.ten_crop)
                except ResidueMismatch as e:
                    # The container's frame count was off mod 8: read this video again, in
                    # this process, now that its length is known.
                    log.info("%s: %d frames, not the %d its container reported; re-reading", key,
                             e.total, item["total"])
                    state = _new_state(args, run, endpoint, e.total)
                    for piece in iter_pieces(todo[i], mode, args.resize, crop):
                        if piece["error"]:
                            raise frame_io.FrameError(piece["error"])
                        state.push(piece["frames"].numpy())
                    array = _finish(state, args.ten_crop)
                attrs = {"fps": float(item["fps"]), "stride": int(stride), "frames": int(item["count"]),
                         "endpoint": endpoint, "mode": mode}
                store.save(key, array.astype(np.float32, copy=False), attrs)
                done += 1
                frames_total += int(item["count"])
                bar.set_postfix(fps=f"{frames_total / (time.perf_counter() - t0):.1f}")
            except Exception as e:
                failures.append((key, f"{key}: {e}"))
                log.error("%s: %s", key, e)
    finally:
        bar.close()
        store.close()
    dt = time.perf_counter() - t0
    log.info("%s: extracted %d videos (%d frames) in %.1fs, %.1f frames/s; %d skipped as done; %d failed",
             mode, done, frames_total, dt, frames_total / max(dt, 1e-9), len(sources) - len(todo), len(failures))
    return done, failures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-mode", "--mode", choices=("rgb", "flow", "both"), default="rgb")
    p.add_argument("-load_model", "--load-model", required=True,
                   help="weights (.pt or a name from weights.py); for -mode both the RGB model")
    p.add_argument("--flow-model", default=None, help="flow weights for -mode both")
    p.add_argument("-root", "--root", type=Path, default=None, help="Charades frame folders root/VID/VID-000001.jpg")
    p.add_argument("-split", "--split", type=Path, default=None,
                   help="charades.json or Charades CSV: extract its videos (else every folder under -root)")
    p.add_argument("--input", type=Path, nargs="+", default=None,
                   help="video files, frame folders, folders of them, or .txt lists of them")
    p.add_argument("-save_dir", "--save-dir", type=Path, required=True)
    p.add_argument("--device", "-gpu", default="auto", help="auto, cpu, cuda, cuda:1 (-gpu N means cuda:N)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default: equals the reference computation to 1e-4); bf16/fp16 faster")
    p.add_argument("--endpoint", default="Mixed_5c", choices=CONV_ENDPOINTS)
    p.add_argument("--stack", type=int, default=0, help="frames per window (0: whole video)")
    p.add_argument("--step", type=int, default=0, help="frames between window starts (default: --stack)")
    p.add_argument("--ten-crop", action="store_true", help="10 crops (corners, center, flips) on a crop axis")
    p.add_argument("--resize", type=int, default=None,
                   help="smaller side to N pixels (0 keeps); default: the Charades rule (upscale if under 226)")
    p.add_argument("--crop", type=int, default=224, help="center crop size (0: whole frame)")
    p.add_argument("--format", choices=("npy", "h5"), default="npy")
    p.add_argument("--shard", default=None, help="K/N: this process takes videos i %% N == K")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader decode workers")
    p.add_argument("--chunk-frames", type=int, default=512,
                   help="frames per temporal chunk (bounds memory; does not change the result)")
    p.add_argument("--batch-windows", type=int, default=4,
                   help="--stack windows per forward pass, taken across videos")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if (args.root is None) == (args.input is None):
        p.error("give either -root (Charades frame folders) or --input")
    if args.split is not None and args.root is None:
        p.error("-split goes with -root")
    if args.mode == "both" and not args.flow_model:
        p.error("-mode both needs --flow-model (and -load_model for RGB)")
    if args.stack < 0 or args.step < 0 or (args.step and not args.stack):
        p.error("--step needs --stack; both positive")
    if args.ten_crop and not args.crop:
        p.error("--ten-crop needs a --crop size")
    if args.chunk_frames < 8:
        p.error("--chunk-frames must be at least 8")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    import weights

    device = select_device(args.device)
    k, n = parse_shard(args.shard)
    sources = charades_sources(args.root, args.split) if args.root is not None else input_sources(args.input)
    mine = shard(sources, k, n)
    tag = f"-{k}-of-{n}" if n > 1 else ""
    log.info("shard %d/%d: %d of %d videos", k, n, len(mine), len(sources))
    modes = [("rgb", args.load_model), ("flow", args.flow_model)] if args.mode == "both" else [(args.mode, args.load_model)]
    failures: list[tuple[str, str]] = []
    for mode, weights_name in modes:
        out_dir = args.save_dir / mode if args.mode == "both" else args.save_dir
        model = weights.load_model(weights.resolve_weights(weights_name), mode=mode,
                                   final_endpoint=args.endpoint, device=device)
        model = model.for_inference(precision=args.precision, device=device)
        _, fails = extract_videos(args, model, mine, mode, out_dir, device, tag)
        failures += [(f"{mode}:{key}" if args.mode == "both" else key, msg) for key, msg in fails]
        failures_file = out_dir / f"failures{tag}.txt"
        if fails:
            with frame_io.atomic_write(failures_file) as tmp:
                tmp.write_text("".join(f"{key}\t{msg}\n" for key, msg in fails))
        else:
            failures_file.unlink(missing_ok=True)
    if failures:
        log.error("%d video(s) failed (listed in failures%s.txt):", len(failures), tag)
        for key, msg in failures:
            log.error("  %s", msg)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------
# Benchmark (called by benchmark.py)
# ----------------------------------------------------------------------------------------------

def calibrated_random_i3d(seed: int = 0, num_classes: int = 157, in_channels: int = 3,
                          final_endpoint: str = "Logits") -> torch.nn.Module:
    """A randomly initialised I3D whose batch-norm statistics are set from one random batch, so
    its activations and features are of order 1 like a trained model's (with the default
    statistics they shrink to ~1e-5, and any tolerance check would be empty). For tests and
    benchmarks without downloaded weights."""
    from pytorch_i3d import InceptionI3d

    torch.manual_seed(seed)
    model = InceptionI3d(num_classes=num_classes, in_channels=in_channels, final_endpoint=final_endpoint)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.momentum = 1.0  # running statistics := this batch's
    model.train()
    x = torch.rand(2, in_channels, 24, 32, 32) * 2 - 1
    with torch.no_grad():
        model._features(x)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.momentum = 0.01
    model.eval()
    # Scale the last block's output units (ReLU is positively homogeneous) so the features
    # peak near 1, like a trained model's, rather than ~10.
    last = model._modules[list(model.end_points)[-1]]
    units = [last] if hasattr(last, "bn") else [getattr(last, n) for n in ("b0", "b1b", "b2b", "b3b") if hasattr(last, n)]
    if units:
        with torch.no_grad():
            peak = float(model._features(x).abs().max())
            for u in units:
                u.bn.weight.div_(peak)
                u.bn.bias.div_(peak)
    return model


def _bench_arg(args, name: str, default):
    value = getattr(args, name, None) if args is not None else None
    return default if value is None else value


def benchmark_extraction(args: argparse.Namespace | None = None) -> list[dict]:
    """frames/s extracting one video from JPEG frames: a loop like the original script
    (cv2.imread, float64 (img/255)*2-1, eager model on the whole video) against ours (decode
    workers, uint8 until the device, for_inference), in the same run on the same frames, after
    the same short warm-up, timed round-robin. Reads from args (all optional; benchmark.py's
    --frames/--size are its model clip and are not used here): extract_frames (500),
    extract_height (256), extract_width (340), extract_repeat (1), device ('auto'),
    random_weights (False: models/rgb_scratch.pt when present), workers (2). Each row's note
    gives the max abs difference of its features to the original-style ones."""
    import cv2
    import weights as weights_mod

    n = _bench_arg(args, "extract_frames", 500)
    h, w = _bench_arg(args, "extract_height", 256), _bench_arg(args, "extract_width", 340)
    resize, crop = _bench_arg(args, "extract_resize", None), _bench_arg(args, "extract_crop", 224)
    repeat, workers = _bench_arg(args, "extract_repeat", 1), _bench_arg(args, "workers", 2)
    device = select_device(_bench_arg(args, "device", "auto"))
    real = weights_mod.MODELS_DIR / "rgb_scratch.pt"
    if real.is_file() and not _bench_arg(args, "random_weights", False):
        model = weights_mod.load_model(real, mode="rgb", device=device)
    else:
        model = calibrated_random_i3d().to(device)
    rows: list[dict] = []
    section, unit = "extract", "frames/s"
    base_row = "original-style loop (imread, float64 [-1,1], eager fp32, whole video)"
    with tempfile.TemporaryDirectory() as tmp:
        root, vid = Path(tmp), "BENCH"
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:h, 0:w]
        (root / vid).mkdir()
        for i in range(1, n + 1):  # moving gradients plus noise: JPEGs of a realistic size
            img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], axis=-1)
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            frame_io.write_image(frame_io.charades_frame_path(root, vid, i), img)

        def original_style(count: int) -> np.ndarray:
            frames = []
            for i in range(1, count + 1):
                img = cv2.imread(str(frame_io.charades_frame_path(root, vid, i)))[:, :, [2, 1, 0]]
                ih, iw = img.shape[:2]
                if resize is None and min(ih, iw) < 226:
                    d = 226.0 - min(ih, iw)
                    sc = 1 + d / min(ih, iw)
                    img = cv2.resize(img, dsize=(0, 0), fx=sc, fy=sc)
                elif resize:
                    img = frame_io.resize_smaller_side(img, resize)
                frames.append((img / 255.0) * 2 - 1)
            arr = np.asarray(frames, dtype=np.float32)
            arr = frame_io.center_crop(arr, crop)
            x = torch.from_numpy(arr.transpose([3, 0, 1, 2]))[None].to(device)
            with torch.no_grad():
                return model.extract_features(x).squeeze(0).permute(1, 2, 3, 0).cpu().numpy()

        def ours(count: int, precision: str) -> np.ndarray:
            fast = model.for_inference(precision=precision, device=device)
            src = VideoSource(key=vid, layout="charades", path=str(root), vid=vid)
            dataset = StreamingVideoDataset([src], mode="rgb", resize=resize, crop=crop)
            stride, left, right = temporal_geometry()
            chunker = TemporalChunker(make_runner(fast, device), stride, left, right, 512, count)
            loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                                 pin_memory=device.type == "cuda",
                                                 prefetch_factor=4 if workers else None)
            for item in loader:
                if item["error"]:
                    raise frame_io.FrameError(item["error"])
                chunker.push(item["frames"].numpy())
            return chunker.finish()[0].numpy()

        paths = {"fp32": "ours, fp32 (default; for_inference, uint8 until the model, decode workers)",
                 "bf16": "ours, bf16 (opt-in --precision bf16)"}
        fns = {base_row: lambda: original_style(n)}
        fns.update({label: (lambda p=p: ours(n, p)) for p, label in paths.items()})
        original_style(min(n, 16))  # the same short warm-up for every path
        for p in paths:
            ours(min(n, 16), p)
        times: dict[str, list[float]] = {k: [] for k in fns}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(repeat):  # round-robin, so load from other processes hits all alike
            for label, fn in fns.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                outputs[label] = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[label].append(time.perf_counter() - t0)
        ref = outputs[base_row]
        base_fps = n / float(np.median(times[base_row]))
        for label in fns:
            fps = n / float(np.median(times[label]))
            out = outputs[label]
            diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
            # fp32 must agree to 1e-4 (relative to the features' scale where it exceeds 1).
            if label == paths["fp32"] and not diff <= 1e-4 * max(1.0, float(np.abs(ref).max())):
                raise AssertionError(f"fp32 extraction differs from the original-style output by {diff}")
            rows.append({"section": section, "row": label, "unit": unit, "value": fps, "baseline_row": base_row,
                         "baseline_value": base_fps,
                         "note": f"{n} frames {h}x{w} JPEG, max abs diff {diff:.1e}"})
            log.info("%s: %.2f frames/s (x%.2f), max abs diff %.2e", label, fps, fps / base_fps, diff)
    return rows


if __name__ == "__main__":
    run_main(main)
