"""Exact, bounded-memory streaming of whole videos through I3D (the engine behind
extract_features.py, eval_i3d.py, predict.py and training's validation).

- temporal_geometry: which input frames each output step of an endpoint depends on.
- TemporalChunker: overlapping temporal chunks whose kept outputs equal the whole-video pass.
- WindowStacker / WindowBatcher: --stack windows, batched across videos.
- make_runner: uint8 frames -> model outputs (optionally ten crops).
- stream_features / stream_logits: a whole frame stream -> features / per-time logits.
- unwrap / inference_model: the eval-only copy of a (possibly wrapped) model.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import tempfile
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

import frame_io
from cli import UserError
from pytorch_i3d import VALID_ENDPOINTS, InceptionI3d, same_padding

log = logging.getLogger(__name__)


CONV_ENDPOINTS = VALID_ENDPOINTS[:VALID_ENDPOINTS.index("Mixed_5c") + 1]


ALIGN = 8  # chunk starts and length residues are taken mod the network's total temporal stride


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
        x = frame_io.to_model_range(x.permute(0, 4, 1, 2, 3))
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
                            c = frame_io.negate_flow_x(c, axis=1)
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
