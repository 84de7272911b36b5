"""Inflated 3D ConvNet (I3D), "Quo Vadis, Action Recognition?" (Carreira & Zisserman, 2017).

Architecture only: this module never downloads or converts weights (see weights.py), and the
fast inference copy lives in fast_i3d.py (`model.for_inference()` builds one). Submodule names
and state-dict keys follow the original pytorch-i3d code, so its published checkpoints
(rgb_imagenet.pt, flow_imagenet.pt, rgb_charades.pt, flow_charades.pt) load with strict=True.
Padding is TensorFlow's 'SAME' computed from the input size, as in DeepMind's Sonnet model, so
outputs match the TensorFlow checkpoints.

Every layer answers for its own behaviour along time, so that the fast copy and the streaming
engine (streaming.py) are built from these public parts and never from a layer's internals:

- `layer.time` (TimeSpec): temporal kernel, stride, dilation and padding rule;
- `layer.window` (Window): the whole 3D kernel and stride, and the one 'SAME' padding rule;
- `layer.out_channels`: output channels (None for a pool: as many as it gets);
- `layer.branches`: () for a single layer; an Inception block's lists of layers per branch,
  each fed by `layer.branch_inputs(x)`, so an engine can stream every branch on its own;
- `layer(x, pad_t)`: pad_t=None pads time as TF-'SAME' over x (a whole video); (front, back)
  pads exactly that many zero frames (an engine that feeds the layer a slice of the video);
- `layer.accept(builder)`: calls builder.unit / max_pool / inception with the layer, so a
  builder picks its rule per kind of layer without testing classes.

`InceptionI3d.layers()` yields the ordered (endpoint, layer) pairs an engine walks.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

import fast_i3d

# The 18 endpoints of DeepMind's model, in order.
VALID_ENDPOINTS = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c", "Logits", "Predictions",
)
FEATURE_DIM = 1024

Pads = tuple[int, int]


def same_padding(size: int, kernel: int, stride: int) -> Pads:
    """TensorFlow 'SAME' padding of one dimension: (before, after), the odd pixel at the end."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v, v)


@dataclasses.dataclass(frozen=True)
class TimeSpec:
    """A layer's contract along time. Output j reads input frames j*stride .. j*stride +
    dilation*(kernel-1) of the padded input. padding 'same': TF-'SAME' over the whole video;
    'valid': none, and a kernel longer than the input shrinks to it (the final average pool).
    tile: outputs are computed in groups of this many frames (a Winograd layer's tile); an
    engine that asks for whole tiles, but for the last call, gets the whole video's rounding."""
    kernel: int
    stride: int = 1
    dilation: int = 1
    padding: str = "same"
    tile: int = 1

    @property
    def span(self) -> int:
        """Input frames one output reads."""
        return self.dilation * (self.kernel - 1) + 1

    def over(self, frames: int) -> "TimeSpec":
        """The contract over an input of `frames` frames (a 'valid' kernel shrinks to fit)."""
        if self.padding == "valid" and self.kernel > frames:
            return dataclasses.replace(self, kernel=frames)
        return self

    def pads(self, frames: int) -> Pads:
        """Zero frames (front, back) the whole video of `frames` frames gets."""
        return same_padding(frames, self.span, self.stride) if self.padding == "same" else (0, 0)

    def out_frames(self, frames: int, pads: Pads | None = None) -> int:
        front, back = self.pads(frames) if pads is None else pads
        return (frames + front + back - self.span) // self.stride + 1


@dataclasses.dataclass(frozen=True)
class Window:
    """A layer's 3D kernel and stride over (T, H, W), with TF-'SAME' zero padding."""
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int] = (1, 1, 1)

    @property
    def time(self) -> TimeSpec:
        return TimeSpec(self.kernel[0], self.stride[0])

    def pads(self, sizes: tuple[int, ...], pad_t: Pads | None = None) -> list[Pads]:
        """(before, after) per dimension of an input of `sizes` (T, H, W): 'SAME' in space and,
        with pad_t None, in time; else pad_t frames in time."""
        pads = [same_padding(n, k, s) for n, k, s in zip(sizes, self.kernel, self.stride)]
        if pad_t is not None:
            pads[0] = tuple(pad_t)
        return pads

    def pad(self, x: torch.Tensor, pad_t: Pads | None = None) -> torch.Tensor:
        """x zero-padded as `pads` says (x itself where nothing is padded)."""
        (pt, ph, pw) = self.pads(x.shape[2:], pad_t)
        if pt == ph == pw == (0, 0):
            return x
        # Zero padding, as the original code: every pooled input follows a ReLU, so 0 acts as -inf.
        return F.pad(x, (pw[0], pw[1], ph[0], ph[1], pt[0], pt[1]))


class MaxPool3dSamePadding(nn.MaxPool3d):
    """Max pool with TensorFlow 'SAME' padding computed from the input size."""

    out_channels, branches = None, ()  # as many channels as it gets; a single layer

    def __init__(self, kernel_size, stride):
        super().__init__(kernel_size, stride)
        self.window = Window(_triple(kernel_size), _triple(stride))
        self.time = self.window.time

    def forward(self, x: torch.Tensor, pad_t: Pads | None = None) -> torch.Tensor:
        return super().forward(self.window.pad(x, pad_t))

    def ceil_padding(self, sizes: tuple[int, ...], pad_t: Pads | None = None) -> tuple[int, int, int] | None:
        """The padding p for which max_pool3d(x, kernel, stride, p, ceil_mode=True) equals this
        pool of an input of `sizes` (T, H, W) padded as window.pads says, without a padded copy;
        None where no such p exists. PyTorch's ceil mode clips the last windows exactly where
        'SAME' pads at the end, and on inputs >= 0 (every pool here follows a ReLU) the max over
        a clipped window equals the max over the zero-padded one."""
        before = []
        for n, (b, a), k, s in zip(sizes, self.window.pads(sizes, pad_t), self.window.kernel, self.window.stride):
            want = (n + b + a - k) // s + 1
            ceil = -(-(n + 2 * b - k) // s) + 1
            # PyTorch's limits: padding at most half the kernel; the last window starts inside.
            if ceil != want or 2 * b > k or (ceil - 1) * s >= n + b:
                return None
            before.append(b)
        return tuple(before)

    def accept(self, builder):
        return builder.max_pool(self)


class Unit3D(nn.Module):
    """Conv3d ('SAME' padding) + optional BatchNorm3d (eps 1e-3, momentum 0.01) + optional ReLU."""

    branches = ()

    def __init__(
        self,
        in_channels: int,
        output_channels: int,
        kernel_shape=(1, 1, 1),
        stride=(1, 1, 1),
        activation_fn: Callable | None = F.relu,
        use_batch_norm: bool = True,
        use_bias: bool = False,
        name: str = "unit_3d",
    ):
        super().__init__()
        self.window = Window(_triple(kernel_shape), _triple(stride))
        self.time = self.window.time
        self.out_channels = output_channels
        self.activation = activation_fn
        self.name = name
        self.conv3d = nn.Conv3d(in_channels, output_channels, self.window.kernel, self.window.stride,
                                padding=0, bias=use_bias)
        self.bn = nn.BatchNorm3d(output_channels, eps=0.001, momentum=0.01) if use_batch_norm else None

    def forward(self, x: torch.Tensor, pad_t: Pads | None = None) -> torch.Tensor:
        x = self.conv3d(self.window.pad(x, pad_t))
        if self.bn is not None:
            x = self.bn(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def accept(self, builder):
        return builder.unit(self)


class InceptionModule(nn.Module):
    """Inception block: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool->1x1, concatenated on channels."""

    def __init__(self, in_channels: int, out_channels: list[int], name: str):
        super().__init__()
        self.b0 = Unit3D(in_channels, out_channels[0], [1, 1, 1], name=name + "/Branch_0/Conv3d_0a_1x1")
        self.b1a = Unit3D(in_channels, out_channels[1], [1, 1, 1], name=name + "/Branch_1/Conv3d_0a_1x1")
        self.b1b = Unit3D(out_channels[1], out_channels[2], [3, 3, 3], name=name + "/Branch_1/Conv3d_0b_3x3")
        self.b2a = Unit3D(in_channels, out_channels[3], [1, 1, 1], name=name + "/Branch_2/Conv3d_0a_1x1")
        self.b2b = Unit3D(out_channels[3], out_channels[4], [3, 3, 3], name=name + "/Branch_2/Conv3d_0b_3x3")
        self.b3a = MaxPool3dSamePadding(kernel_size=[3, 3, 3], stride=(1, 1, 1))
        self.b3b = Unit3D(in_channels, out_channels[5], [1, 1, 1], name=name + "/Branch_3/Conv3d_0b_1x1")
        self.name = name
        self.out_channels = out_channels[0] + out_channels[2] + out_channels[4] + out_channels[5]
        # The block reads 3 frames per output (its widest branch), stride 1 everywhere.
        self.window = Window((3, 3, 3))
        self.time = self.window.time

    @property
    def branches(self) -> list[list[nn.Module]]:
        """The four branches' layers, in concatenation order; each reads the block's input."""
        return [[self.b0], [self.b1a, self.b1b], [self.b2a, self.b2b], [self.b3a, self.b3b]]

    def branch_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x, x, x, x

    def forward(self, x: torch.Tensor, pad_t: Pads | None = None) -> torch.Tensor:
        if pad_t is None:
            pad_t = self.time.pads(x.shape[2])
        # The 1x1 branch sees no padding: crop it to the frames the 3-frame branches output.
        lo, hi = 1 - pad_t[0], 1 - pad_t[1]
        y0 = self.b0(x)
        if lo or hi:
            y0 = y0[:, :, lo:y0.shape[2] - hi]
        return torch.cat([y0, self.b1b(self.b1a(x), pad_t), self.b2b(self.b2a(x), pad_t),
                          self.b3b(self.b3a(x, pad_t))], dim=1)

    def accept(self, builder):
        return builder.inception(self)


class FinalAvgPool(nn.Module):
    """The Logits endpoint's AvgPool3d((2, 7, 7), stride 1), no padding, its kernel shrunk
    where the map is smaller (no parameters)."""

    out_channels, branches = None, ()
    window = Window((2, 7, 7))
    time = TimeSpec(2, padding="valid")

    def forward(self, x: torch.Tensor, pad_t: Pads | None = None) -> torch.Tensor:
        if pad_t not in (None, (0, 0)):
            x = F.pad(x, (0, 0, 0, 0, *pad_t))
        kernel = (self.time.over(x.shape[2]).kernel, *(min(k, n) for k, n in zip(self.window.kernel[1:], x.shape[3:])))
        return F.avg_pool3d(x, kernel, stride=1)


_FINAL_AVG_POOL = FinalAvgPool()


def final_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """The Logits endpoint's average pool over a whole video's map (see FinalAvgPool)."""
    return _FINAL_AVG_POOL(x)


class LogitsHead(nn.Module):
    """What follows the classifier's 1x1 conv (no parameters): with spatial_squeeze (B, C, T',
    h, w) -> (B, C, T'), the mean over space (equal to the original squeeze at 224x224, where
    the map is 1x1, and per-time logits for any larger input)."""

    def __init__(self, spatial_squeeze: bool = True):
        super().__init__()
        self.spatial_squeeze = spatial_squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(3, 4)) if self.spatial_squeeze else x

    @staticmethod
    def predictions(logits: torch.Tensor) -> torch.Tensor:
        """The Predictions endpoint: softmax over classes of the logits averaged over time (and
        space, when not squeezed): (B, C)."""
        return F.softmax(logits.flatten(2).mean(dim=2), dim=1)


def _endpoint_modules(in_channels: int) -> list[tuple[str, nn.Module]]:
    """Every convolutional endpoint's (name, layer), in order; each takes the previous one's output."""
    return [
        ("Conv3d_1a_7x7", Unit3D(in_channels, 64, [7, 7, 7], stride=(2, 2, 2), name="Conv3d_1a_7x7")),
        ("MaxPool3d_2a_3x3", MaxPool3dSamePadding(kernel_size=[1, 3, 3], stride=(1, 2, 2))),
        ("Conv3d_2b_1x1", Unit3D(64, 64, [1, 1, 1], name="Conv3d_2b_1x1")),
        ("Conv3d_2c_3x3", Unit3D(64, 192, [3, 3, 3], name="Conv3d_2c_3x3")),
        ("MaxPool3d_3a_3x3", MaxPool3dSamePadding(kernel_size=[1, 3, 3], stride=(1, 2, 2))),
        ("Mixed_3b", InceptionModule(192, [64, 96, 128, 16, 32, 32], "Mixed_3b")),
        ("Mixed_3c", InceptionModule(256, [128, 128, 192, 32, 96, 64], "Mixed_3c")),
        ("MaxPool3d_4a_3x3", MaxPool3dSamePadding(kernel_size=[3, 3, 3], stride=(2, 2, 2))),
        ("Mixed_4b", InceptionModule(480, [192, 96, 208, 16, 48, 64], "Mixed_4b")),
        ("Mixed_4c", InceptionModule(512, [160, 112, 224, 24, 64, 64], "Mixed_4c")),
        ("Mixed_4d", InceptionModule(512, [128, 128, 256, 24, 64, 64], "Mixed_4d")),
        ("Mixed_4e", InceptionModule(512, [112, 144, 288, 32, 64, 64], "Mixed_4e")),
        ("Mixed_4f", InceptionModule(528, [256, 160, 320, 32, 128, 128], "Mixed_4f")),
        ("MaxPool3d_5a_2x2", MaxPool3dSamePadding(kernel_size=[2, 2, 2], stride=(2, 2, 2))),
        ("Mixed_5b", InceptionModule(832, [256, 160, 320, 32, 128, 128], "Mixed_5b")),
        ("Mixed_5c", InceptionModule(832, [384, 192, 384, 48, 128, 128], "Mixed_5c")),
    ]


class InceptionI3d(nn.Module):
    """Inception-v1 I3D, as in DeepMind's kinetics-i3d and the pytorch-i3d port.

    forward(x) with x of shape (B, C, T, H, W) returns per-time logits (B, num_classes, T')
    when final_endpoint is 'Logits' (T' = ceil(T / 8) - 1, at least 1), the softmax of the
    time-averaged logits (B, num_classes) for 'Predictions', and the endpoint's feature map
    otherwise. forward(x, return_endpoints=True) also returns an OrderedDict of every endpoint.
    """

    VALID_ENDPOINTS = VALID_ENDPOINTS

    def __init__(
        self,
        num_classes: int = 400,
        spatial_squeeze: bool = True,
        final_endpoint: str = "Logits",
        name: str = "inception_i3d",
        in_channels: int = 3,
        dropout_keep_prob: float = 0.5,
    ):
        if final_endpoint not in VALID_ENDPOINTS:
            raise ValueError(f"unknown final_endpoint {final_endpoint!r}; one of {', '.join(VALID_ENDPOINTS)}")
        if not 0.0 < dropout_keep_prob <= 1.0:
            raise ValueError(f"dropout_keep_prob must be in (0, 1], got {dropout_keep_prob}")
        super().__init__()
        self._num_classes = num_classes
        self.final_endpoint = final_endpoint
        self._in_channels = in_channels
        self.name = name
        self.end_points: dict[str, nn.Module] = {}
        for end_point, module in _endpoint_modules(in_channels):
            self.end_points[end_point] = module
            if end_point == final_endpoint:
                break
        self.build()
        self.has_logits = final_endpoint in ("Logits", "Predictions")
        self.avg_pool = FinalAvgPool()
        self.head = LogitsHead(spatial_squeeze)
        if self.has_logits:
            # The original passed the keep probability as nn.Dropout's drop probability.
            self.dropout = nn.Dropout(1.0 - dropout_keep_prob)
            self.replace_logits(num_classes)

    def build(self) -> None:
        for k, module in self.end_points.items():
            self.add_module(k, module)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def in_channels(self) -> int:
        return self._in_channels

    @property
    def spatial_squeeze(self) -> bool:
        return self.head.spatial_squeeze

    def replace_logits(self, num_classes: int) -> None:
        """A new, randomly initialised classifier of num_classes outputs (for fine-tuning)."""
        self._num_classes = num_classes
        self.logits = Unit3D(FEATURE_DIM, num_classes, [1, 1, 1], activation_fn=None,
                             use_batch_norm=False, use_bias=True, name="logits")

    def layers(self) -> Iterator[tuple[str, nn.Module]]:
        """The (endpoint, layer) pairs up to the last convolutional endpoint, in order."""
        for end_point in self.end_points:
            yield end_point, self._modules[end_point]

    def _features(self, x: torch.Tensor, end_points: OrderedDict | None = None) -> torch.Tensor:
        for end_point, layer in self.layers():
            x = layer(x)
            if end_points is not None:
                end_points[end_point] = x
        return x

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """The Logits endpoint of pooled features (B, 1024, T', h, w): (B, classes, T')."""
        return self.head(self.logits(self.dropout(pooled)))

    def forward(self, x: torch.Tensor, return_endpoints: bool = False):
        end_points: OrderedDict | None = OrderedDict() if return_endpoints else None
        out = self._features(x, end_points)
        if self.has_logits:
            out = self.classify(self.avg_pool(out))
            if end_points is not None:
                end_points["Logits"] = out
            if self.final_endpoint == "Predictions":
                out = self.head.predictions(out)
                if end_points is not None:
                    end_points["Predictions"] = out
        if return_endpoints:
            return out, end_points
        return out

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the last convolutional endpoint after the final average pool:
        (B, 1024, T', 1, 1) for the full model at 224x224, as the original code."""
        return self.avg_pool(self._features(x))

    def for_inference(self, precision: str = "auto",
                      device: torch.device | str | None = None) -> fast_i3d.FastInceptionI3d:
        """An eval-only copy for fast inference (fast_i3d.FastInceptionI3d)."""
        return fast_i3d.FastInceptionI3d(self, precision=precision, device=device)
