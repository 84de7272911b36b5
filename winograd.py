"""Temporal Winograd: I3D's 3D convolutions with about half the multiplications (CPU, fp32).

A 3x3x3 convolution (stride 1) sums three 1x3x3 convolutions of neighbouring frames. Winograd's
minimal filtering F(4, r) along time computes four output frames of an r-tap filter from
4 + r - 1 input frames with 4 + r - 1 spatial convolutions instead of 4 r (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016): each group of frames d is mixed into
U_j = sum_i BT[j, i] d_i, each U_j is convolved with the transformed weight V_j = sum_k G[j, k]
g_k (one spatial kernel, computed once in float64), and the outputs are y_r = sum_j AT[r, j]
(U_j * V_j). The spatial convolutions stay oneDNN's, the frame mixing is a few additions on
whole frames. The stem (7x7x7, temporal stride 2) becomes a stride-1 4-tap convolution over
frame pairs first (even and odd frames stacked as channels: polyphase), then F(4, 4).

The result equals the direct convolution to float rounding, not bit for bit
(tests/test_winograd.py bounds it; `benchmark.py --only model` prints the whole model's speed
and difference against the plain one). Tiles start at output frame 0 of every call; a caller
that wants the same rounding whatever the chunking (streaming.py) asks for outputs in multiples
of TILE. Used only for float32 on the CPU: in bf16/fp16 the transforms' constants would cost
accuracy, and cuDNN picks its own algorithms.
"""
from __future__ import annotations

from fractions import Fraction

import torch

TILE = 4  # output frames per Winograd tile
# Interpolation points (and infinity) per number of taps. For 3 taps, 1/2 and -2 in place of the
# textbook 0, +-1, +-2 keep the constants smaller, so the fp32 rounding error is lower.
_POINTS = {3: (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-2)),
           4: (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-2), Fraction(2))}
# Frames smaller than this (pixels) go direct: there the extra calls cost more than they save
# (at 7x7 Winograd and direct are even). Depends only on the frame size, so a layer takes the
# same path in a whole-video forward as in every streamed chunk.
MIN_PIXELS = 100
_CL = torch.channels_last_3d
SUPPORTED_TAPS = tuple(_POINTS)  # temporal taps TemporalWinograd takes


def _monic(roots: list[Fraction]) -> list[Fraction]:
    """Coefficients, lowest power first, of prod (x - r)."""
    c = [Fraction(1)]
    for r in roots:
        c = [Fraction(0)] + c
        for i in range(len(c) - 1):
            c[i] -= r * c[i + 1]
    return c


def transforms(taps: int, tile: int = TILE) -> tuple[list, list, list]:
    """BT (span x span), G (span x taps), AT (tile x span) of F(tile, taps), span = tile + taps - 1,
    by Cook-Toom: output r of the correlation of d (span frames) with g (taps) is
    sum_j AT[r][j] (G g)_j (BT d)_j. Exact fractions."""
    points = _POINTS[taps][:tile + taps - 2]
    bt, g = [], []
    for j, p in enumerate(points):
        others = [q for i, q in enumerate(points) if i != j]
        scale = Fraction(1)
        for q in others:
            scale *= p - q
        bt.append(_monic(others) + [Fraction(0)])
        g.append([p ** k / scale for k in range(taps)])
    bt.append(_monic(list(points)))
    g.append([Fraction(0)] * (taps - 1) + [Fraction(1)])
    at = [[p ** r for p in points] + [Fraction(int(r == tile - 1))] for r in range(tile)]
    return bt, g, at


def _mix(out: torch.Tensor, coefficients: list[float], terms: list[torch.Tensor]) -> torch.Tensor:
    """out = sum of c * t over the nonzero coefficients (a coefficient-1 term first: one op less)."""
    pairs = sorted(((c, t) for c, t in zip(coefficients, terms) if c), key=lambda p: p[0] != 1)
    (c0, t0), rest = pairs[0], pairs[1:]
    if not rest:
        return out.copy_(t0) if c0 == 1 else torch.mul(t0, c0, out=out)
    if c0 == 1:
        torch.add(t0, rest[0][1], alpha=rest[0][0], out=out)
    else:
        torch.mul(t0, c0, out=out).add_(rest[0][1], alpha=rest[0][0])
    for c, t in rest[1:]:
        out.add_(t, alpha=c)
    return out


def suits(x: torch.Tensor) -> bool:
    """Whether Winograd is used for input x: float32 on the CPU, frames of MIN_PIXELS or more."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[3] * x.shape[4] >= MIN_PIXELS


class TemporalWinograd:
    """conv3d(x, weight, bias, stride=(1, sh, sw), padding=(0, ph, pw)) for a weight of 3 or 4
    taps in time, no temporal padding: L >= taps input frames give L - taps + 1 output frames,
    channels-last 3D."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, spatial_padding: tuple[int, int],
                 spatial_stride: tuple[int, int] = (1, 1)):
        self.taps = weight.shape[2]
        bt, g, at = transforms(self.taps)
        self.bt = [[float(c) for c in row] for row in bt]
        self.at = [[float(c) for c in row] for row in at]
        self.span = TILE + self.taps - 1
        self.bias_row = 1  # AT[:, 1] is all ones: a bias on U_1 * V_1 reaches every output once
        w = weight.detach().to(device="cpu", dtype=torch.float64)
        g = torch.tensor([[float(c) for c in row] for row in g], dtype=torch.float64)
        v = torch.einsum("jk,oikhw->joihw", g, w).float().unsqueeze(3)  # (span, O, I, 1, kh, kw)
        self.weights = [vj.contiguous(memory_format=_CL) for vj in v]
        # The layer's own tensors when they are float32 channels-last already (no copy).
        self.weight = weight.detach().float().contiguous(memory_format=_CL)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.padding, self.stride = (0, *spatial_padding), (1, *spatial_stride)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, (1, 1, 1), 1)

    def __call__(self, x: torch.Tensor, pad_t: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """The conv of x with pad_t (before, after) zero frames in time."""
        if any(pad_t):
            padded = torch.empty((x.shape[0], x.shape[1], x.shape[2] + sum(pad_t), *x.shape[3:]), dtype=x.dtype,
                                 memory_format=_CL)
            padded.narrow(2, 0, pad_t[0]).zero_()
            padded.narrow(2, pad_t[0] + x.shape[2], pad_t[1]).zero_()
            padded.narrow(2, pad_t[0], x.shape[2]).copy_(x)
            x = padded
        n, length = x.shape[0], x.shape[2]
        n_out = length - self.taps + 1
        tiles = n_out // TILE
        if tiles == 0:
            return self._conv(x, self.weight, self.bias)
        frames = [x.narrow(2, i, TILE * (tiles - 1) + 1)[:, :, ::TILE] for i in range(self.span)]
        u = torch.empty((n, x.shape[1], tiles, *x.shape[3:]), dtype=x.dtype, memory_format=_CL)
        y, rows, started = None, [], [False] * TILE
        # One product U_j * V_j alive at a time, added into every output frame it feeds (the
        # bias row first: it starts every output frame).
        for j in (self.bias_row, *(j for j in range(self.span) if j != self.bias_row)):
            bias = self.bias if j == self.bias_row else None
            product = self._conv(_mix(u, self.bt[j], frames), self.weights[j], bias)
            if y is None:
                y = torch.empty((n, product.shape[1], n_out, *product.shape[3:]), dtype=x.dtype, memory_format=_CL)
                rows = [y.narrow(2, r, TILE * (tiles - 1) + 1)[:, :, ::TILE] for r in range(TILE)]
            for r in range(TILE):
                c = self.at[r][j]
                if c and started[r]:
                    rows[r].add_(product, alpha=c)
                elif c:
                    rows[r].copy_(product) if c == 1 else torch.mul(product, c, out=rows[r])
                    started[r] = True
        if n_out > TILE * tiles:  # the last 1-3 frames: direct
            rest = x.narrow(2, TILE * tiles, length - TILE * tiles)
            y.narrow(2, TILE * tiles, n_out - TILE * tiles).copy_(self._conv(rest, self.weight, self.bias))
        return y


class PolyphaseWinograd:
    """A temporal-stride-2 conv3d (I3D's 7x7x7 stem) with explicit padding, as a stride-1
    convolution of ceil(k/2) taps over frame pairs: frames 2t and 2t+1 stacked as channels
    (the odd half of the last tap weighs zero when k is odd), then TemporalWinograd."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, spatial_stride: tuple[int, int]):
        o, c, k = weight.shape[:3]
        pairs = torch.zeros((o, 2 * c, (k + 1) // 2, *weight.shape[3:]), dtype=weight.dtype, device=weight.device)
        pairs[:, :c] = weight[:, :, 0::2]
        pairs[:, c:, :k // 2] = weight[:, :, 1::2]
        self.inner = TemporalWinograd(pairs, bias, (0, 0), spatial_stride)

    def __call__(self, x: torch.Tensor, pad_t: tuple[int, int], pad_h: tuple[int, int],
                 pad_w: tuple[int, int]) -> torch.Tensor:
        """The conv of x zero-padded by pad_t, pad_h, pad_w (before, after) frames / pixels."""
        n, c, t, h, w = x.shape
        length = pad_t[0] + t + pad_t[1]
        z = torch.empty((n, 2 * c, (length + 1) // 2, h + sum(pad_h), w + sum(pad_w)), dtype=x.dtype,
                        memory_format=_CL).zero_()
        for phase in (0, 1):  # padded frame 2i + phase is frame 2i + phase - pad_t of x
            first = (phase - pad_t[0]) % 2
            count = max(0, (t - first + 1) // 2)
            if count:
                z[:, phase * c:(phase + 1) * c, (first + pad_t[0] - phase) // 2:][:, :, :count,
                  pad_h[0]:pad_h[0] + h, pad_w[0]:pad_w[0] + w] = x[:, :, first::2]
        return self.inner(z)
