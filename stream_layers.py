"""The layer stages behind streaming.StreamingI3D (internal: jobs use streaming.py).

Each stage takes a layer's input on the time axis in pieces and returns the output steps they
complete. A temporal conv / pool (TemporalStream) keeps, from one piece to the next, only the
input frames its next output window still needs, and applies the whole video's temporal
padding at the first and last piece (zero frames: right for convs, and for max pools, whose
inputs follow a ReLU); every frame passes every layer once. Everything a stage knows of its
layer is the layer's public contract (pytorch_i3d.py): `layer.time` says kernel, stride,
padding and tile, `layer(x, (0, 0))` runs it on a slice with no temporal padding, and a layer
with `branches` (an Inception block) is streamed branch by branch (layer_stage). The branches
have different temporal latencies: a block (Block) queues each branch's output and emits the
steps all four have.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

# ----------------------------------------------------------------------------------------------
# Time-axis helpers
# ----------------------------------------------------------------------------------------------

def _empty(shape, like: torch.Tensor, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last_3d if channels_last and len(shape) == 5 else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def _cat_time(parts: list[torch.Tensor | None], channels_last: bool | None = None) -> torch.Tensor | None:
    """Concatenate on time into a fresh tensor of the given layout (channels-last 3D keeps later
    layers fast; torch.cat alone may fall back to contiguous). None = layout of the first part."""
    parts = [p for p in parts if p is not None and p.shape[2] > 0]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    if channels_last is None:
        channels_last = parts[0].dim() == 5 and parts[0].is_contiguous(memory_format=torch.channels_last_3d)
    shape = list(parts[0].shape)
    shape[2] = sum(p.shape[2] for p in parts)
    return torch.cat(parts, dim=2, out=_empty(shape, parts[0], channels_last))


def empty_like_time(x: torch.Tensor) -> torch.Tensor:
    """A fresh 0-frame tensor like x (a 0-frame slice of x would keep x's storage alive)."""
    return torch.empty((x.shape[0], x.shape[1], 0, *x.shape[3:]), dtype=x.dtype, device=x.device)


def _copy(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A compact copy of a view (so a kept tail does not hold its whole source tensor alive)."""
    return _empty(x.shape, x, channels_last).copy_(x)


# ----------------------------------------------------------------------------------------------
# Stages: push(x) -> new output frames or None; finish() -> the rest or None
# ----------------------------------------------------------------------------------------------

class Pointwise:
    """A layer of temporal kernel 1 and stride 1: no state, each chunk on its own."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n_in: int):
        self.fn, self.n_out = fn, n_in

    def push(self, x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None or x.shape[2] == 0 else self.fn(x)

    def finish(self) -> None:
        return None


class TemporalStream:
    """A temporal conv / pool with contract `spec` (pytorch_i3d.TimeSpec) over an input of n_in
    frames (whole video), padded by spec.pads(n_in) = (pf, pb) zero frames. `op` runs the layer
    on a slice of the padded timeline with no temporal padding. Output j reads padded frames
    j*s .. j*s+k-1; the buffer holds the padded frames from `start` on that are still needed.
    Outputs are computed in multiples of spec.tile until the last call (a Winograd layer's
    tile: its tiles then fall where a whole-video forward puts them, so the rounding is the same)."""

    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor], spec, n_in: int, channels_last: bool = False):
        self.op, self.k, self.s, self.n_in, self.granule = op, spec.span, spec.stride, n_in, spec.tile
        self.pf, self.pb = spec.pads(n_in)
        self.n_out = spec.out_frames(n_in)
        if self.n_out < 1:
            raise ValueError(f"temporal kernel {self.k} longer than its padded input ({n_in} frames)")
        self.channels_last = channels_last
        self.buf: torch.Tensor | None = None
        self.start = 0  # padded-timeline index of buf[:, :, 0]
        self.skip = 0  # incoming frames to drop (when s > k, windows leave gaps)
        self.done = 0  # outputs emitted
        self.seen = 0  # real input frames received
        self.template: torch.Tensor | None = None

    def _zeros(self, n: int) -> torch.Tensor:
        t = self.template
        return _empty((t.shape[0], t.shape[1], n, *t.shape[3:]), t, self.channels_last).zero_()

    def push(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or x.shape[2] == 0:
            return None
        self.seen += x.shape[2]
        if self.template is None:  # the first frames: the whole video's front padding
            self.template = empty_like_time(x)
            x = _cat_time([self._zeros(self.pf), x], self.channels_last) if self.pf else x
        if self.seen > self.n_in:
            raise RuntimeError(f"layer input longer than planned ({self.seen} > {self.n_in} frames)")
        return self._feed(x)

    def _feed(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.skip:
            drop = min(self.skip, x.shape[2])
            x, self.skip = x[:, :, drop:], self.skip - drop  # self.start is already past them
        data = _cat_time([self.buf, x], self.channels_last)
        if data is None:
            return None
        avail = self.start + data.shape[2]  # padded frames received so far
        j, k, s = self.done, self.k, self.s
        m = min(self.n_out - j, (avail - k - j * s) // s + 1) if avail >= j * s + k else 0
        if m < self.n_out - j:
            m -= m % self.granule
        out = None
        if m > 0:
            lo, hi = j * s - self.start, (j + m - 1) * s + k - self.start
            out = self.op(data.narrow(2, lo, hi - lo))
            self.done += m
        keep = self.done * s - self.start  # the next window's first frame, in data
        if self.done == self.n_out or keep >= data.shape[2]:
            self.skip = 0 if self.done == self.n_out else keep - data.shape[2]
            self.buf, self.start = None, self.start + data.shape[2] + self.skip
        elif keep > 0 or data is x:
            self.buf, self.start = _copy(data[:, :, keep:], self.channels_last), self.start + keep
        else:
            self.buf = data
        return out

    def finish(self) -> torch.Tensor | None:
        if self.seen != self.n_in:
            raise RuntimeError(f"layer input shorter than planned ({self.seen} < {self.n_in} frames)")
        out = self._feed(self._zeros(self.pb)) if self.pb else None
        if self.done != self.n_out:
            raise RuntimeError(f"stream produced {self.done} outputs, expected {self.n_out}")
        self.buf = None
        return out


def run_chain(stages: list, x: torch.Tensor | None) -> torch.Tensor | None:
    for st in stages:
        if x is None:
            return None
        x = st.push(x)
    return x


def finish_chain(stages: list) -> torch.Tensor | None:
    y = None
    for st in stages:
        y = _cat_time([st.push(y) if y is not None else None, st.finish()])
    return y


class Block:
    """An Inception block: `entry` maps the block input to the four branches' inputs (the plain
    block's input four times, or the fast block's fused 1x1 heads split plus the input); each
    branch streams through its own stages, and the block emits the steps all branches have."""

    def __init__(self, entry: Callable, branches: list[list], channels_last: bool, n_out: int):
        self.entry, self.branches, self.channels_last, self.n_out = entry, branches, channels_last, n_out
        self.pending: list[list[torch.Tensor]] = [[] for _ in branches]

    def _add(self, i: int, y: torch.Tensor | None) -> None:
        if y is not None and y.shape[2] > 0:
            self.pending[i].append(y)

    def _emit(self) -> torch.Tensor | None:
        counts = [sum(p.shape[2] for p in q) for q in self.pending]
        n = min(counts)
        if n == 0:
            return None
        first = self.pending[0][0]
        chans = [q[0].shape[1] for q in self.pending]
        out = _empty((first.shape[0], sum(chans), n, *first.shape[3:]), first, self.channels_last)
        c0 = 0
        for i, q in enumerate(self.pending):
            t0 = 0
            while t0 < n:
                piece = q[0]
                take = min(n - t0, piece.shape[2])
                out[:, c0:c0 + chans[i], t0:t0 + take].copy_(piece[:, :, :take])
                if take == piece.shape[2]:
                    q.pop(0)
                else:  # a compact copy of the few frames left: the view would hold all of piece
                    q[0] = _copy(piece[:, :, take:], self.channels_last)
                t0 += take
            c0 += chans[i]
        return out

    def push(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or x.shape[2] == 0:
            return None
        for i, (stages, xi) in enumerate(zip(self.branches, self.entry(x))):
            self._add(i, run_chain(stages, xi))
        return self._emit()

    def finish(self) -> torch.Tensor | None:
        for i, stages in enumerate(self.branches):
            self._add(i, finish_chain(stages))
        out = self._emit()
        if any(self.pending):
            raise RuntimeError("Inception branches ended with different lengths")
        return out



def layer_stage(layer: nn.Module, frames: int, channels_last: bool) -> Pointwise | TemporalStream | Block:
    """The stage of a layer over an input of `frames` frames, from its public contract: a layer
    with branches (an Inception block) streams each branch on its own; any other layer by its
    time contract, run on slices with no temporal padding."""
    if layer.branches:
        branches, lengths = [], []
        for layers in layer.branches:
            stages, n = [], frames
            for inner in layers:
                stages.append(layer_stage(inner, n, channels_last))
                n = stages[-1].n_out
            branches.append(stages)
            lengths.append(n)
        if len(set(lengths)) != 1:
            raise ValueError(f"Inception branches of different output lengths {lengths}")
        return Block(layer.branch_inputs, branches, channels_last, lengths[0])
    spec = layer.time.over(frames)
    if spec.kernel == 1 and spec.stride == 1:
        return Pointwise(lambda x: layer(x, (0, 0)), frames)
    return TemporalStream(lambda x: layer(x, (0, 0)), spec, frames, channels_last)
