"""The layer stages behind streaming.StreamingI3D (internal: jobs use streaming.py).

Each stage takes a layer's input on the time axis in pieces and returns the output steps they
complete. A temporal conv / pool (TemporalStream) keeps, from one piece to the next, only the
input frames its next output window still needs, and applies the whole video's TF-'SAME'
temporal padding at the first and last piece (zero frames: right for convs, and for max pools,
whose inputs follow a ReLU); every frame passes every layer once. The geometry (kernel, stride)
is read from the model's own layer objects (layer_stage). Inception branches have different
temporal latencies: a block (_Block) queues each branch's output and emits the steps all four
have.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pytorch_i3d import (InceptionModule, MaxPool3dSamePadding, Unit3D, _conv3d, _FastInception, _FastMaxPool,
                         _FastUnit, _triple, same_padding, separable_max3)
from winograd import TILE as WINOGRAD_TILE

# _FastInception's branch-3 pool is the function _max_pool_3x3x3 (no layer object): kernel 3,
# stride 1 in time, as the InceptionModule.b3a it replaces.
_FAST_BLOCK_POOL = (3, 1)

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


def _spatial_pad(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """'SAME' zero padding of H and W only (time is handled by the stream)."""
    ph = same_padding(x.shape[3], kernel[1], stride[1])
    pw = same_padding(x.shape[4], kernel[2], stride[2])
    if ph == pw == (0, 0):
        return x
    return F.pad(x, (pw[0], pw[1], ph[0], ph[1]))


# ----------------------------------------------------------------------------------------------
# Stages: push(x) -> new output frames or None; finish() -> the rest or None
# ----------------------------------------------------------------------------------------------

class Pointwise:
    """A layer of temporal kernel 1 and stride 1: no state, each chunk on its own."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def push(self, x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None or x.shape[2] == 0 else self.fn(x)

    def finish(self) -> None:
        return None


class TemporalStream:
    """A temporal conv / pool of kernel k and stride s over an input of n_in frames (whole video)
    padded by (pf, pb) zero frames. `op` runs the layer on a slice of the padded timeline with
    no temporal padding (its spatial padding as the layer does it). Output j reads padded frames
    j*s .. j*s+k-1; the buffer holds the padded frames from `start` on that are still needed.
    Outputs are computed in multiples of `granule` until the last call (a Winograd layer's tile:
    its tiles then fall where a whole-video forward puts them, so the rounding is the same)."""

    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor], k: int, s: int, n_in: int,
                 pads: tuple[int, int] | None = None, channels_last: bool = False, granule: int = 1):
        self.op, self.k, self.s, self.n_in, self.granule = op, k, s, n_in, granule
        self.pf, self.pb = same_padding(n_in, k, s) if pads is None else pads
        self.n_out = (n_in + self.pf + self.pb - k) // s + 1
        if self.n_out < 1:
            raise ValueError(f"temporal kernel {k} longer than its padded input ({n_in} frames)")
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


class _Block:
    """An Inception block: `entry` maps the block input to the four branches' inputs (the plain
    block's input four times, or the fast block's fused 1x1 heads split plus the input); each
    branch streams through its own stages, and the block emits the steps all branches have."""

    def __init__(self, entry: Callable, branches: list[list], channels_last: bool):
        self.entry, self.branches, self.channels_last = entry, branches, channels_last
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


# ----------------------------------------------------------------------------------------------
# Layer -> stage, for the plain and the fast model
# ----------------------------------------------------------------------------------------------

def _plain_unit_op(unit: Unit3D) -> Callable[[torch.Tensor], torch.Tensor]:
    def op(x: torch.Tensor) -> torch.Tensor:
        x = unit.conv3d(_spatial_pad(x, unit._kernel_shape, unit._stride))
        if unit._use_batch_norm:
            x = unit.bn(x)
        return unit._activation_fn(x) if unit._activation_fn is not None else x
    return op


def _plain_pool_op(pool: MaxPool3dSamePadding) -> Callable[[torch.Tensor], torch.Tensor]:
    kernel, stride = _triple(pool.kernel_size), _triple(pool.stride)
    return lambda x: nn.MaxPool3d.forward(pool, _spatial_pad(x, kernel, stride))


def _fast_unit_op(unit: _FastUnit) -> Callable[[torch.Tensor], torch.Tensor]:
    def op(x: torch.Tensor) -> torch.Tensor:
        if (y := unit.winograd_conv(x, (0, 0))) is not None:
            x = y
        elif unit._padding is not None:  # symmetric: pad H, W inside the conv, as the layer does
            x = _conv3d(x, unit.conv, (0, unit._padding[1], unit._padding[2]))
        else:
            x = _conv3d(_spatial_pad(x, unit._kernel, unit._stride), unit.conv, (0, 0, 0))
        return F.relu_(x) if unit._relu else x
    return op


def _fast_pool_op(pool: _FastMaxPool) -> Callable[[torch.Tensor], torch.Tensor]:
    """_FastMaxPool with no temporal padding: the slice holds exactly the windows' frames."""
    kernel, stride = pool._kernel, pool._stride

    def op(x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[3:]
        before = [same_padding(n, k, s)[0] for n, k, s in zip(sizes, kernel[1:], stride[1:])]
        ceil_out = [-(-(n + 2 * b - k) // s) + 1 for n, b, k, s in zip(sizes, before, kernel[1:], stride[1:])]
        if ceil_out == [-(-n // s) for n, s in zip(sizes, stride[1:])] and all(
                2 * b <= k for b, k in zip(before, kernel[1:])):
            return F.max_pool3d(x, kernel, stride, (0, *before), ceil_mode=True)
        return F.max_pool3d(_spatial_pad(x, kernel, stride), kernel, stride)
    return op


def _fast_block_pool(x: torch.Tensor) -> torch.Tensor:
    """_max_pool_3x3x3 with a valid time axis (L -> L-2 frames) and clipped H, W borders; the max
    is exact, so the order of the separable passes does not change any value."""
    n = x.shape[2] - 2
    out = _empty((x.shape[0], x.shape[1], n, *x.shape[3:]), x, True)
    torch.maximum(x.narrow(2, 0, n), x.narrow(2, 1, n), out=out)
    torch.maximum(out, x.narrow(2, 2, n), out=out)
    return separable_max3(out, (4, 3))


def _unit_stage(op, module_fn, k: int, s: int, n: int, cl: bool, granule: int = 1):
    if k == 1 and s == 1:
        return Pointwise(module_fn)
    return TemporalStream(op, k, s, n, channels_last=cl, granule=granule)


def layer_stage(m: nn.Module, n: int, fast: bool, first: bool) -> tuple[object, int]:
    """The stage for one endpoint's layer over an input of n frames, and its output length."""
    cl = fast and not first  # the fast model is channels-last after the stem (its input is not)
    if isinstance(m, Unit3D):
        k, s = m._kernel_shape[0], m._stride[0]
        stage = _unit_stage(_plain_unit_op(m), m, k, s, n, cl)
    elif isinstance(m, _FastUnit):
        k, s = m._kernel[0], m._stride[0]
        stage = _unit_stage(_fast_unit_op(m), m, k, s, n, cl, 1 if m.winograd is None else WINOGRAD_TILE)
    elif isinstance(m, MaxPool3dSamePadding):
        k, s = _triple(m.kernel_size)[0], _triple(m.stride)[0]
        stage = _unit_stage(_plain_pool_op(m), m, k, s, n, cl)
    elif isinstance(m, _FastMaxPool):
        k, s = m._kernel[0], m._stride[0]
        stage = _unit_stage(_fast_pool_op(m), m, k, s, n, cl)
    elif isinstance(m, InceptionModule):
        def branch(*layers):
            out = []
            for layer in layers:
                st, n_out = layer_stage(layer, n, False, False)
                if n_out != n:
                    raise ValueError("an Inception branch with a temporal stride")
                out.append(st)
            return out
        branches = [branch(m.b0), branch(m.b1a, m.b1b), branch(m.b2a, m.b2b), branch(m.b3a, m.b3b)]
        return _Block(lambda x: (x, x, x, x), branches, False), n
    elif isinstance(m, _FastInception):
        def entry(x, m=m):
            y0, y1, y2 = F.relu_(_conv3d(x, m.heads, (0, 0, 0))).split(m._splits, dim=1)
            return y0, y1, y2, x
        b1, _ = layer_stage(m.b1b, n, True, False)
        b2, _ = layer_stage(m.b2b, n, True, False)
        b3b, _ = layer_stage(m.b3b, n, True, False)
        pool = TemporalStream(_fast_block_pool, *_FAST_BLOCK_POOL, n, channels_last=True)
        return _Block(entry, [[], [b1], [b2], [pool, b3b]], True), n
    else:
        raise TypeError(f"no streaming rule for layer {type(m).__name__}")
    return stage, (stage.n_out if isinstance(stage, TemporalStream) else n)


def out_channels(m: nn.Module, c: int) -> int:
    if isinstance(m, Unit3D):
        return m.conv3d.out_channels
    if isinstance(m, _FastUnit):
        return m.conv.out_channels
    if isinstance(m, InceptionModule):
        return sum(u.conv3d.out_channels for u in (m.b0, m.b1b, m.b2b, m.b3b))
    if isinstance(m, _FastInception):
        return m._splits[0] + sum(u.conv.out_channels for u in (m.b1b, m.b2b, m.b3b))
    return c  # max pools
