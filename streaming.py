"""The one streaming engine every job uses (extract_features.py, predict.py, eval_i3d.py,
training's validation): an I3D over a frame stream of any length, exact and bounded in memory.

    engine = StreamingI3D(model, total_frames=T)          # InceptionI3d (eval) or FastInceptionI3d
    outs = [engine.push(chunk) for chunk in chunks]       # chunk: (B, C, t, H, W), model range
    outs.append(engine.finish())
    features = torch.cat(outs, dim=2)                     # == model.extract_features(whole video)

- StreamingI3D: every temporal conv / pool keeps, from one chunk to the next, just the frames
  it still needs; the whole video's TF-SAME padding is applied at the first and last chunk;
  every frame passes every layer once (stream_layers.py: the layer stages, built from each
  layer's public time contract, pytorch_i3d.TimeSpec). The front padding of a stride-2 layer
  depends on the video's length, so the engine needs the frame count T before the first
  chunk; a stream of another length raises LengthMismatch (never a silently wrong result).
- VideoStream: uint8 frames (n, H, W, C) of one video -> the engine in chunks of
  `chunk_frames` (ten crops as a batch of 10), in the output layouts of extract_features.py.
- stream_features / stream_logits: a whole frame stream -> features / per-time logits; a
  frame count that proves wrong (a video container's figure) costs a re-read with the true one.
- WindowStacker / WindowBatcher / make_runner: --stack windows, each its own forward pass.
- unwrap / inference_model: the eval-only copy of a (possibly wrapped) model.
"""
from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn

import frame_io
from errors import FrameError, UserError
from fast_i3d import FastInceptionI3d
from pytorch_i3d import VALID_ENDPOINTS, InceptionI3d
from stream_layers import Pointwise, empty_like_time, finish_chain, layer_stage, run_chain

log = logging.getLogger(__name__)

CONV_ENDPOINTS = VALID_ENDPOINTS[:VALID_ENDPOINTS.index("Mixed_5c") + 1]
HEADS = ("none", "pooled", "logits")
# Default frames per engine push: bounds activation memory (any value gives the same result);
# fewer frames per push mean less memory for a little more time per frame (README, Feature
# extraction: peak memory by chunk size).
CHUNK_FRAMES = 16


class LengthMismatch(RuntimeError):
    """The stream's frame count differs from the total the engine was built for; `seen` is the
    number of frames the stream had (at least, when it had more than `expected`)."""

    def __init__(self, seen: int, expected: int):
        if seen < expected:
            msg = f"stream ended after {seen} frames, not total_frames={expected}"
        else:
            msg = f"stream has at least {seen} frames, more than total_frames={expected}"
        super().__init__(msg)
        self.seen = seen
        self.expected = expected


class StreamingI3D:
    """Push a video's frames in chunks, get the whole-video output of `model` step by step.

    model: InceptionI3d (in eval mode) or FastInceptionI3d. total_frames: the video's length T.
    head: 'none' -> the map of `endpoint` (any convolutional endpoint the model has);
    'pooled' -> `endpoint` + final_avg_pool (for Mixed_5c: model.extract_features);
    'logits' -> per-time logits (B, classes, T') as model.forward with final_endpoint 'Logits'.
    push(x) takes (B, C, t, H, W) in model range (t may be 0, H, W fixed for the stream) and
    returns the newly completed output steps (possibly 0); finish() returns the rest.
    Concatenated on axis 2 they equal the whole-video output. Memory is bounded by the chunk.
    """

    def __init__(self, model: nn.Module, total_frames: int, endpoint: str = "Mixed_5c", head: str = "pooled"):
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; one of {', '.join(HEADS)}")
        if int(total_frames) < 1:
            raise ValueError(f"total_frames must be >= 1, got {total_frames}")
        self.fast = isinstance(model, FastInceptionI3d)
        if not self.fast and not isinstance(model, InceptionI3d):
            raise TypeError(f"expected InceptionI3d or FastInceptionI3d, got {type(model).__name__}")
        if not self.fast and model.training:
            raise ValueError("put the model in eval mode (model.eval()): batch statistics cannot be streamed")
        layers = dict(model.layers())
        if endpoint not in layers:
            raise ValueError(f"endpoint {endpoint!r} not in this model ({', '.join(layers)})")
        if head == "logits" and (endpoint != "Mixed_5c" or not model.has_logits):
            raise ValueError("head 'logits' needs endpoint Mixed_5c and a model with final_endpoint Logits")
        self.model, self.total, self.endpoint, self.head = model, int(total_frames), endpoint, head
        self.device = model.device if self.fast else next(model.parameters()).device
        self.dtype = model.dtype if self.fast else None
        self.in_channels = model.in_channels
        self.stages: list = []
        self.layers: list[nn.Module] = []
        self.lengths = [self.total]  # input length of every stage over the whole video
        for i, (name, m) in enumerate(layers.items()):
            # The fast model is channels-last after the stem (its input is taken as given).
            stage = layer_stage(m, self.lengths[-1], self.fast and i > 0)
            self.stages.append(stage)
            self.lengths.append(stage.n_out)
            self.layers.append(m)
            if name == endpoint:
                break
        n = self.lengths[-1]
        if self.fast:  # the fast model's outputs are float32 (pooled and logits computed in fp32)
            self.stages.append(Pointwise(lambda x: x.float(), n))
        if head != "none":
            self.stages.append(layer_stage(model.avg_pool, n, self.fast))
            n = self.stages[-1].n_out
        if head == "logits":
            self.stages.append(Pointwise(model.classify, n))
        self.out_steps = n
        self.seen = 0
        self.emitted = 0
        self.finished = False
        self._empty_out: torch.Tensor | None = None
        self._template: torch.Tensor | None = None

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, t, H, W), got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype) if self.fast else x.to(self.device)

    def _result(self, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            if self._empty_out is None:
                self._empty_out = self._empty_output()
            return self._empty_out
        if self._empty_out is None:
            self._empty_out = empty_like_time(y)
        self.emitted += y.shape[2]
        return y.contiguous()

    @torch.inference_mode()
    def push(self, x: torch.Tensor) -> torch.Tensor:
        """Feed the next t frames; returns the output steps they complete (B, C', t', ...)."""
        if self.finished:
            raise RuntimeError("push after finish")
        x = self._prepare(x)
        if self.seen + x.shape[2] > self.total:
            raise LengthMismatch(self.seen + x.shape[2], self.total)
        if self._template is None:
            self._template = empty_like_time(x)
        elif x.shape[0] != self._template.shape[0] or x.shape[3:] != self._template.shape[3:]:
            raise ValueError(f"chunk {tuple(x.shape)} differs in batch or frame size from the stream's first "
                             f"{tuple(self._template.shape)}")
        self.seen += x.shape[2]
        return self._result(run_chain(self.stages, x) if x.shape[2] else None)

    @torch.inference_mode()
    def finish(self) -> torch.Tensor:
        """The remaining output steps, once all total_frames frames were pushed."""
        if self.finished:
            raise RuntimeError("finish called twice")
        if self.seen != self.total:
            raise LengthMismatch(self.seen, self.total)
        self.finished = True
        out = self._result(finish_chain(self.stages))
        if self.emitted != self.out_steps:
            raise RuntimeError(f"streamed {self.emitted} output steps, expected {self.out_steps}")
        return out

    def _empty_output(self) -> torch.Tensor:
        """(B, C', 0, ...): the output of a push that completes no step (shape from the layers)."""
        t = self._template
        c, h, w = t.shape[1], t.shape[3], t.shape[4]
        for m in self.layers:
            c = c if m.out_channels is None else m.out_channels
            h, w = -(-h // m.window.stride[1]), -(-w // m.window.stride[2])
        dtype = torch.float32 if self.fast else t.dtype
        if self.head != "none":
            _, kh, kw = self.model.avg_pool.window.kernel
            h, w = h - min(kh, h) + 1, w - min(kw, w) + 1
        if self.head == "logits":
            c = self.model.num_classes
            if self.model.spatial_squeeze:
                return torch.empty((t.shape[0], c, 0), dtype=dtype, device=t.device)
        return torch.empty((t.shape[0], c, 0, h, w), dtype=dtype, device=t.device)



def run_stream(model: nn.Module, chunks: Iterable[torch.Tensor], total_frames: int, endpoint: str = "Mixed_5c",
               head: str = "pooled") -> torch.Tensor:
    """Stream `chunks` (each (B, C, t, H, W)) through `model`; the whole-video output."""
    engine = StreamingI3D(model, total_frames, endpoint, head)
    outs = [engine.push(c) for c in chunks]
    outs.append(engine.finish())
    return torch.cat(outs, dim=2)


def temporal_stride(model: nn.Module, endpoint: str = "Mixed_5c") -> int:
    """Input frames per output step of `endpoint`, from the model's own layers (8 for Mixed_5c)."""
    n = 4096  # a multiple of every stride: ceil(n / s) = n / s
    return n // StreamingI3D(model, n, endpoint, head="none").lengths[-1]


# ----------------------------------------------------------------------------------------------
# Frames of one video -> the engine
# ----------------------------------------------------------------------------------------------

OUTPUTS = {"pooled": "pooled", "mean": "none", "logits": "logits"}


class VideoStream:
    """uint8 frames (n, H, W, C) of one video, pushed in pieces of any size, through
    StreamingI3D in chunks of `chunk_frames`; finish() gives the whole-video output:
    out='pooled' -> (crops, T', h, w, C), endpoint + final avg pool (Mixed_5c: extract_features);
    out='mean' -> (crops, T_E, C), the endpoint's map averaged over space (per chunk: small);
    out='logits' -> (crops, classes, T'), as forward() of the whole video.
    ten_crop=S: 4 corners + center and their flips (flow: x negated), run as a batch of 10.
    A stream of another length than `total` raises LengthMismatch from finish(), its `seen`
    the frames actually pushed, so the caller can read the video again with that length."""

    def __init__(self, model: nn.Module, total: int, device: torch.device | str = "cpu", endpoint: str = "Mixed_5c",
                 out: str = "pooled", mode: str = "rgb", ten_crop: int = 0, chunk_frames: int = CHUNK_FRAMES):
        if out not in OUTPUTS:
            raise ValueError(f"unknown output {out!r}; one of {', '.join(OUTPUTS)}")
        self.engine = StreamingI3D(model, total, endpoint, OUTPUTS[out])
        self.device, self.out, self.mode, self.ten_crop = torch.device(device), out, mode, ten_crop
        self.total, self.chunk = int(total), max(1, int(chunk_frames))
        self.pending: list[torch.Tensor] = []
        self.buffered = self.seen = 0
        self.overflow = False  # more frames than total: only counted from then on
        self.outputs: list[torch.Tensor] = []

    def push(self, frames: np.ndarray | torch.Tensor) -> None:
        frames = torch.as_tensor(frames)
        frames = frames[..., None] if frames.dim() == 3 else frames
        self.seen += frames.shape[0]
        if self.overflow or frames.shape[0] == 0:
            return
        self.pending.append(frames)
        self.buffered += frames.shape[0]
        while self.buffered >= self.chunk:
            self._run(self.chunk)

    def _run(self, n: int) -> None:
        buf = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
        rest = buf[n:]
        self.pending, self.buffered = ([rest] if rest.shape[0] else []), rest.shape[0]
        try:
            y = self.engine.push(self._input(buf[:n]))
        except LengthMismatch:
            self.overflow, self.pending, self.buffered = True, [], 0
            return
        self.outputs.append(self._format(y))

    def _input(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.device, non_blocking=True)
        # (n, H, W, C) -> (1, C, n, H, W) as a view: already the channels-last-3d layout.
        x = frame_io.to_model_range(x.permute(3, 0, 1, 2)[None])
        return torch.cat(ten_crops(x, self.ten_crop, self.mode)) if self.ten_crop else x

    def _format(self, y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        if self.out == "pooled":
            y = y.permute(0, 2, 3, 4, 1)
        elif self.out == "mean":
            y = y.mean(dim=(3, 4)).transpose(1, 2)
        return y.cpu()

    def finish(self) -> torch.Tensor:
        if self.overflow:
            raise LengthMismatch(self.seen, self.total)
        if self.buffered:
            self._run(self.buffered)
            if self.overflow:
                raise LengthMismatch(self.seen, self.total)
        self.outputs.append(self._format(self.engine.finish()))
        out = torch.cat(self.outputs, dim=2 if self.out == "logits" else 1)
        self.outputs = []
        return out


def background(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate `items` in a thread, up to `depth` ahead, so decoding overlaps the network
    (OpenCV and numpy release the GIL; no worker processes to start or feed). The producer's
    exceptions are raised here, in order; closing the iterator stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((end, None))
        except BaseException as e:  # handed to the consumer
            q.put((end, e))

    thread = threading.Thread(target=produce, name="decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:  # wait for the producer to leave its current item: a thread still inside OpenCV
        stop.set()  # when the interpreter exits is torn down there and aborts the process
        thread.join(timeout=10.0)  # ("FATAL: exception not rethrown", exit 134 after a Ctrl-C)


def _pieces(frames: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for f in frames:
        batch.append(f)
        if len(batch) == n:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


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
                raise FrameError(f"frame {count} is {f.shape[:2]}, the first was {shape[:2]}")
            tmp.write(np.ascontiguousarray(f, dtype=np.uint8).tobytes())
            count += 1

    def replay() -> Iterator[np.ndarray]:
        if count:
            yield from np.memmap(tmp.name, dtype=np.uint8, mode="r", shape=(count, *shape))
    return count, replay, lambda: os.unlink(tmp.name)


def _stream(model: nn.Module, frames, device, total: int | None, chunk_frames: int, out: str) -> torch.Tensor:
    device = torch.device(device)
    if total is None and hasattr(frames, "__len__"):
        total = len(frames)
    cleanup = None
    if total is None and not callable(frames):
        total, frames, cleanup = _spooled(frames)
    elif total is None:  # a count pass over a re-readable stream
        total = sum(1 for _ in frames())
    try:
        while True:
            if total < 1:
                raise FrameError("no frames")
            stream = VideoStream(model, total, device, out=out, chunk_frames=chunk_frames)
            for piece in background(_pieces(frames() if callable(frames) else frames, stream.chunk)):
                stream.push(piece)
            try:
                return stream.finish()[0]
            except LengthMismatch as e:
                if not callable(frames):
                    raise
                # The expected count (a container's figure) was wrong: read again with the true one.
                log.info("stream had %d frames, not the expected %d; re-reading", e.seen, total)
                total = e.seen
    finally:
        if cleanup is not None:
            cleanup()


def stream_features(model: nn.Module, frames: Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]],
                    device: torch.device | str = "cpu", total: int | None = None,
                    chunk_frames: int = CHUNK_FRAMES) -> torch.Tensor:
    """extract_features of a whole frame stream, exact and in bounded memory: (T', 1024, h, w).

    frames: uint8 (H, W, C) frames, already resized and cropped, or a function returning a
    fresh iterator of them. The engine needs the frame count: give `total` (exact, or the
    container's count) or a sized `frames`; if it proves wrong, a function is read again with
    the true length and a plain iterator raises LengthMismatch. A plain iterator without any
    total is first spooled to a temporary file to count it; a function is counted first."""
    return _stream(model, frames, device, total, chunk_frames, "pooled").permute(0, 3, 1, 2).contiguous()


def stream_logits(model: nn.Module, frames: Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]],
                  device: torch.device | str = "cpu", total: int | None = None,
                  chunk_frames: int = CHUNK_FRAMES) -> torch.Tensor:
    """Per-time logits (C, T') of a whole frame stream, exactly as forward() of the whole
    video (the logits layer on the pooled features, averaged over space); frames and total as
    for stream_features. The model needs its logits layer (final_endpoint 'Logits')."""
    return _stream(model, frames, device, total, chunk_frames, "logits")


# ----------------------------------------------------------------------------------------------
# --stack windows: each window its own forward pass
# ----------------------------------------------------------------------------------------------

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
    this video's own; a partial last window is dropped.
    centered (with step 1): one window per frame, window t covering frames t - N//2 .. t + (N-1)//2,
    the ends padded by repeating the first / last frame (MS-TCN's per-frame I3D features)."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], stack: int, step: int, batch: int = 4,
                 batcher: WindowBatcher | None = None, centered: bool = False):
        if centered and step != 1:
            raise ValueError("centered windows need step 1 (one window per frame)")
        self.batcher = batcher or WindowBatcher(run, batch)
        self.stack, self.step, self.centered = stack, step, centered
        self.last: np.ndarray | None = None
        self.pieces: list[np.ndarray] = []
        self.buf_start = 0
        self.seen = 0
        self.next_window = 0
        self.outputs: list[torch.Tensor] = []
        self.error: Exception | None = None

    def push(self, frames: np.ndarray) -> None:
        if len(frames) == 0:
            return
        if self.centered and self.last is None:  # the first frame stands in for the N//2 before it
            frames = np.concatenate([np.repeat(frames[:1], self.stack // 2, axis=0), frames])
        self.last = frames[-1:]
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
        if self.centered and self.last is not None:  # the last frame stands in for the (N-1)//2 after it
            last, self.centered = self.last, False
            self.push(np.repeat(last, (self.stack - 1) // 2, axis=0))
        self.batcher.flush()
        if self.error is not None:
            raise self.error
        if not self.outputs:
            raise FrameError(f"{self.seen} frames, shorter than one --stack of {self.stack}")
        return torch.cat(self.outputs).transpose(0, 1)


def ten_crop_boxes(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the 4 corners and the center, as torchvision's FiveCrop."""
    return [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)]


def ten_crops(x: torch.Tensor, size: int, mode: str = "rgb") -> list[torch.Tensor]:
    """The ten crops of x (..., H, W): the 4 corners and the center, then the same mirrored
    (flow: x displacement negated, on channel axis 1, as mirrored motion changes its sign)."""
    h, w = x.shape[-2:]
    if min(h, w) < size:
        raise FrameError(f"frames of {h}x{w} are smaller than the {size} ten-crop")
    crops = [x[..., top:top + size, left:left + size] for top, left in ten_crop_boxes(h, w, size)]
    flipped = [c.flip(-1) for c in crops]
    if mode == "flow":
        flipped = [frame_io.negate_flow_x(c, axis=1) for c in flipped]
    return crops + flipped


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
            return torch.stack([features(c).float().cpu() for c in ten_crops(x, ten_crop, mode)], dim=1)
    return run


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DataParallel / DistributedDataParallel."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def inference_model(model: torch.nn.Module, device: torch.device | str | None = None,
                    precision: str = "fp32") -> torch.nn.Module:
    """An eval-only copy for evaluation (model.for_inference: batch norm folded, the source
    model, in train mode or not, is left as it is); a model that is already one is kept."""
    model = unwrap(model)
    if isinstance(model, InceptionI3d):
        if not model.has_logits:
            raise UserError("evaluation needs a model with its logits layer (final_endpoint 'Logits')")
        return model.for_inference(precision=precision, device=device)
    if not hasattr(model, "logits"):
        raise UserError(f"{type(model).__name__} has no logits layer to evaluate")
    return model
