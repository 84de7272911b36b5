"""Inflated 3D ConvNet (I3D), "Quo Vadis, Action Recognition?" (Carreira & Zisserman, 2017).

Architecture only: this module never downloads or converts weights (see weights.py).
Submodule names and state-dict keys follow the original pytorch-i3d code, so its published
checkpoints (rgb_imagenet.pt, flow_imagenet.pt, rgb_charades.pt, flow_charades.pt) load with
strict=True. Padding is TensorFlow's 'SAME' computed from the input size, as in DeepMind's
Sonnet model, so outputs match the TensorFlow checkpoints.

`InceptionI3d.for_inference()` returns a faster, eval-only copy (batch norm folded into the
convolutions, the three 1x1 convolutions that read a block's input fused, channels-last 3D,
optionally bf16/fp16 weights and activations) with the same `forward` and `extract_features`.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from winograd import SUPPORTED_TAPS, PolyphaseWinograd, TemporalWinograd, suits

# The 18 endpoints of DeepMind's model, in order.
VALID_ENDPOINTS = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c", "Logits", "Predictions",
)
FEATURE_DIM = 1024
TEMPORAL_STRIDE = 8  # frames per output time step (Conv3d_1a, MaxPool3d_4a, MaxPool3d_5a halve T)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one dimension: (before, after), the odd pixel at the end."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _same_pad_5d(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = x.shape[2:]
    pt = same_padding(t, kernel[0], stride[0])
    ph = same_padding(h, kernel[1], stride[1])
    pw = same_padding(w, kernel[2], stride[2])
    if pt == ph == pw == (0, 0):
        return x
    # Zero padding, as the original code: every pooled input follows a ReLU, so 0 acts as -inf.
    return F.pad(x, (pw[0], pw[1], ph[0], ph[1], pt[0], pt[1]))


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v, v)


class MaxPool3dSamePadding(nn.MaxPool3d):
    """Max pool with TensorFlow 'SAME' padding computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_same_pad_5d(x, _triple(self.kernel_size), _triple(self.stride)))


class Unit3D(nn.Module):
    """Conv3d ('SAME' padding) + optional BatchNorm3d (eps 1e-3, momentum 0.01) + optional ReLU."""

    def __init__(
        self,
        in_channels: int,
        output_channels: int,
        kernel_shape=(1, 1, 1),
        stride=(1, 1, 1),
        padding=0,  # kept for signature compatibility; padding is always 'SAME'
        activation_fn: Callable | None = F.relu,
        use_batch_norm: bool = True,
        use_bias: bool = False,
        name: str = "unit_3d",
    ):
        super().__init__()
        self._output_channels = output_channels
        self._kernel_shape = _triple(kernel_shape)
        self._stride = _triple(stride)
        self._use_batch_norm = use_batch_norm
        self._activation_fn = activation_fn
        self._use_bias = use_bias
        self.name = name
        self.conv3d = nn.Conv3d(in_channels, output_channels, self._kernel_shape, self._stride,
                                padding=0, bias=use_bias)
        if use_batch_norm:
            self.bn = nn.BatchNorm3d(output_channels, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad_5d(x, self._kernel_shape, self._stride))
        if self._use_batch_norm:
            x = self.bn(x)
        if self._activation_fn is not None:
            x = self._activation_fn(x)
        return x


class InceptionModule(nn.Module):
    """Inception block: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool->1x1, concatenated on channels."""

    def __init__(self, in_channels: int, out_channels: list[int], name: str):
        super().__init__()
        self.b0 = Unit3D(in_channels, out_channels[0], [1, 1, 1], name=name + "/Branch_0/Conv3d_0a_1x1")
        self.b1a = Unit3D(in_channels, out_channels[1], [1, 1, 1], name=name + "/Branch_1/Conv3d_0a_1x1")
        self.b1b = Unit3D(out_channels[1], out_channels[2], [3, 3, 3], name=name + "/Branch_1/Conv3d_0b_3x3")
        self.b2a = Unit3D(in_channels, out_channels[3], [1, 1, 1], name=name + "/Branch_2/Conv3d_0a_1x1")
        self.b2b = Unit3D(out_channels[3], out_channels[4], [3, 3, 3], name=name + "/Branch_2/Conv3d_0b_3x3")
        self.b3a = MaxPool3dSamePadding(kernel_size=[3, 3, 3], stride=(1, 1, 1), padding=0)
        self.b3b = Unit3D(in_channels, out_channels[5], [1, 1, 1], name=name + "/Branch_3/Conv3d_0b_1x1")
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (endpoint, constructor) in order; each takes the previous endpoint's channels.
def _endpoint_modules(in_channels: int) -> list[tuple[str, nn.Module, int]]:
    """Every convolutional endpoint with its output channel count."""
    return [
        ("Conv3d_1a_7x7", Unit3D(in_channels, 64, [7, 7, 7], stride=(2, 2, 2), name="Conv3d_1a_7x7"), 64),
        ("MaxPool3d_2a_3x3", MaxPool3dSamePadding(kernel_size=[1, 3, 3], stride=(1, 2, 2), padding=0), 64),
        ("Conv3d_2b_1x1", Unit3D(64, 64, [1, 1, 1], name="Conv3d_2b_1x1"), 64),
        ("Conv3d_2c_3x3", Unit3D(64, 192, [3, 3, 3], name="Conv3d_2c_3x3"), 192),
        ("MaxPool3d_3a_3x3", MaxPool3dSamePadding(kernel_size=[1, 3, 3], stride=(1, 2, 2), padding=0), 192),
        ("Mixed_3b", InceptionModule(192, [64, 96, 128, 16, 32, 32], "Mixed_3b"), 256),
        ("Mixed_3c", InceptionModule(256, [128, 128, 192, 32, 96, 64], "Mixed_3c"), 480),
        ("MaxPool3d_4a_3x3", MaxPool3dSamePadding(kernel_size=[3, 3, 3], stride=(2, 2, 2), padding=0), 480),
        ("Mixed_4b", InceptionModule(480, [192, 96, 208, 16, 48, 64], "Mixed_4b"), 512),
        ("Mixed_4c", InceptionModule(512, [160, 112, 224, 24, 64, 64], "Mixed_4c"), 512),
        ("Mixed_4d", InceptionModule(512, [128, 128, 256, 24, 64, 64], "Mixed_4d"), 512),
        ("Mixed_4e", InceptionModule(512, [112, 144, 288, 32, 64, 64], "Mixed_4e"), 528),
        ("Mixed_4f", InceptionModule(528, [256, 160, 320, 32, 128, 128], "Mixed_4f"), 832),
        ("MaxPool3d_5a_2x2", MaxPool3dSamePadding(kernel_size=[2, 2, 2], stride=(2, 2, 2), padding=0), 832),
        ("Mixed_5b", InceptionModule(832, [256, 160, 320, 32, 128, 128], "Mixed_5b"), 832),
        ("Mixed_5c", InceptionModule(832, [384, 192, 384, 48, 128, 128], "Mixed_5c"), FEATURE_DIM),
    ]


def final_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """The Logits endpoint's AvgPool3d((2, 7, 7), stride 1), shrunk where the map is smaller."""
    kernel = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
    return F.avg_pool3d(x, kernel, stride=1)


def squeeze_logits(x: torch.Tensor, spatial_squeeze: bool) -> torch.Tensor:
    """(B, C, T', h, w) -> (B, C, T') with spatial_squeeze: the mean over space equals the
    original squeeze at 224x224 (1x1 maps) and lets any larger input give per-time logits."""
    return x.mean(dim=(3, 4)) if spatial_squeeze else x


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """The Predictions endpoint: softmax over classes of the logits averaged over time (and
    space, when not squeezed): (B, C)."""
    return F.softmax(logits.flatten(2).mean(dim=2), dim=1)


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
        self._spatial_squeeze = spatial_squeeze
        self._final_endpoint = final_endpoint
        self._in_channels = in_channels
        self.name = name
        self.end_points: dict[str, nn.Module] = {}
        for end_point, module, _ in _endpoint_modules(in_channels):
            self.end_points[end_point] = module
            if end_point == final_endpoint:
                break
        self.build()
        self._has_logits = final_endpoint in ("Logits", "Predictions")
        if self._has_logits:
            self.avg_pool = nn.AvgPool3d(kernel_size=[2, 7, 7], stride=(1, 1, 1))
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

    def replace_logits(self, num_classes: int) -> None:
        """A new, randomly initialised classifier of num_classes outputs (for fine-tuning)."""
        self._num_classes = num_classes
        self.logits = Unit3D(FEATURE_DIM, num_classes, [1, 1, 1], padding=0, activation_fn=None,
                             use_batch_norm=False, use_bias=True, name="logits")

    def _features(self, x: torch.Tensor, end_points: OrderedDict | None = None) -> torch.Tensor:
        for end_point in self.end_points:
            x = self._modules[end_point](x)
            if end_points is not None:
                end_points[end_point] = x
        return x

    def forward(self, x: torch.Tensor, return_endpoints: bool = False):
        end_points: OrderedDict | None = OrderedDict() if return_endpoints else None
        out = self._features(x, end_points)
        if self._has_logits:
            out = squeeze_logits(self.logits(self.dropout(final_avg_pool(out))), self._spatial_squeeze)
            if end_points is not None:
                end_points["Logits"] = out
            if self._final_endpoint == "Predictions":
                out = predictions(out)
                if end_points is not None:
                    end_points["Predictions"] = out
        if return_endpoints:
            return out, end_points
        return out

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the last convolutional endpoint after the final average pool:
        (B, 1024, T', 1, 1) for the full model at 224x224, as the original code."""
        return final_avg_pool(self._features(x))

    def for_inference(self, precision: str = "auto", device: torch.device | str | None = None) -> "FastInceptionI3d":
        """An eval-only copy for fast inference; see FastInceptionI3d."""
        return FastInceptionI3d(self, precision=precision, device=device)


# ----------------------------------------------------------------------------------------------
# Fast inference
# ----------------------------------------------------------------------------------------------
# Where the time goes, for a (1, 3, 64, 224, 224) clip on a 2-core AMD EPYC (fp32): the plain
# module spends about a third of its time outside the convolutions. Batch norm is folded into
# the convolutions; each Inception block's three 1x1 convolutions of the same input are one;
# activations stay channels-last 3D end to end (PyTorch's max pool is ~7x faster channels-last,
# and torch.cat of channel slices would silently fall back to contiguous, so blocks concatenate
# into a channels-last output); on CPU the convolutions go straight to oneDNN (at batch 1
# F.conv3d sends the small-channel 3x3x3 convolutions to a slow reference kernel that also
# drops channels-last); 'SAME' padding is done inside the conv / pool instead of padded copies
# wherever it is symmetric (all but the stem); the blocks' 3x3x3 max pool is separable. The
# convolutions then run near the CPU's peak (~80% of the fp32 time), and bf16 halves their cost
# again on CPUs with native bf16. In fp32 on CPU the 3x3x3 convolutions and the stem use
# temporal Winograd (winograd.py: about half the multiplications). Measured: fp32 ~1.9x before
# Winograd, 2.4x with it, and bf16 ~3.5x the plain module. Tried
# and not kept: torch.compile (~20 s to compile, cannot trace the direct oneDNN call), the
# stem's temporal taps unfolded into channels (no gain), and a padded-copy-free stem (no gain).

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX), so bf16 pays."""
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has bf16 convolutions on this CPU (AVX-512 BW+VL+DQ or AVX-NE-CONVERT).
    Without them PyTorch's bf16 CPU convolutions fail or fall back to a reference kernel that is
    many times slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        flags = _cpu_flags()
        return {"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags


class PrecisionError(ValueError):
    """A precision this device cannot compute (reported as one line by the scripts)."""


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise PrecisionError where `precision` ('fp32', 'bf16', 'fp16') cannot run on `device`."""
    device = torch.device(device)
    # fp16 on CPU runs everywhere (F.conv3d), only slowly: it is meant for CUDA.
    if device.type == "cpu" and precision == "bf16" and not cpu_supports_bf16():
        raise PrecisionError(f"bf16 is not supported by this CPU (oneDNN needs AVX-512 BW/VL/DQ or "
                             f"AVX-NE-CONVERT; this one has {torch.backends.cpu.get_cpu_capability()}): use fp32")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise PrecisionError(f"bf16 is not supported by {torch.cuda.get_device_name(device)}: use fp16 or fp32")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> the fastest precision that keeps I3D's predictions on this device:
    bf16 on CUDA GPUs that support it (else fp16), bf16 on CPUs with native bf16, else fp32.
    An explicit precision is checked against the device (PrecisionError where it cannot run)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision != "auto":
        check_precision(precision, device)
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16() and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def _fold_unit(unit: Unit3D) -> nn.Conv3d:
    """Unit3D's conv with its batch norm folded in: w' = w * g / s, b' = beta + (b - mean) * g / s."""
    conv = unit.conv3d
    weight = conv.weight.detach().float()
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(weight.shape[0])
    if unit._use_batch_norm:
        bn = unit.bn
        var, mean = bn.running_var.float(), bn.running_mean.float()
        gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + bn.eps)
        weight = weight * scale.view(-1, 1, 1, 1, 1)
        bias = beta + (bias - mean) * scale
    folded = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=True)
    folded.weight.data.copy_(weight)
    folded.bias.data.copy_(bias)
    return folded


# fp16 stays on F.conv3d on CPU (oneDNN's fp16 3D convolutions are not faster there).
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def _conv3d(x: torch.Tensor, conv: nn.Conv3d, padding: tuple[int, int, int]) -> torch.Tensor:
    """conv(x) with symmetric padding; on CPU straight to oneDNN, which keeps channels-last and
    is fast for every I3D layer (F.conv3d falls back to a slow kernel for small channel counts)."""
    if x.device.type == "cpu" and x.dtype in _ONEDNN_DTYPES and torch.backends.mkldnn.is_available():
        return torch.mkldnn_convolution(x, conv.weight, conv.bias, padding, conv.stride, (1, 1, 1), 1)
    return F.conv3d(x, conv.weight, conv.bias, conv.stride, padding)


class _FastUnit(nn.Module):
    """A folded Unit3D (+ ReLU). Stride-1 odd kernels pad symmetrically inside the conv (no
    padded copy); the strided stem pads asymmetrically ('SAME', odd pixel at the end)."""

    def __init__(self, unit: Unit3D):
        super().__init__()
        self.conv = _fold_unit(unit)
        self._kernel, self._stride = unit._kernel_shape, unit._stride
        symmetric = all(s == 1 and k % 2 == 1 for k, s in zip(self._kernel, self._stride))
        self._padding = tuple(k // 2 for k in self._kernel) if symmetric else None
        self._relu = unit._activation_fn is not None
        self.winograd: TemporalWinograd | PolyphaseWinograd | None = None

    def enable_winograd(self) -> None:
        """Use temporal Winograd (winograd.py) where it applies: the 3x3x3 stride-1 convs and the
        7x7x7 stride-2 stem. Called once the weights are float32 on the CPU."""
        (k, *_), (s, *spatial_stride) = self._kernel, self._stride
        if self._padding is not None and k in SUPPORTED_TAPS and s == 1:
            self.winograd = TemporalWinograd(self.conv.weight, self.conv.bias, self._padding[1:])
        elif s == 2 and (k + 1) // 2 in SUPPORTED_TAPS and all(st > 1 for st in spatial_stride):
            self.winograd = PolyphaseWinograd(self.conv.weight, self.conv.bias, tuple(spatial_stride))

    def winograd_conv(self, x: torch.Tensor, pad_t: tuple[int, int]) -> torch.Tensor | None:
        """The conv (no ReLU) of x zero-padded by pad_t frames in time and 'SAME' in space, by
        Winograd; None where Winograd is not used for x (see winograd.suits)."""
        if self.winograd is None or not suits(x):
            return None
        if isinstance(self.winograd, PolyphaseWinograd):
            pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[3:], self._kernel[1:], self._stride[1:])]
            return self.winograd(x, pad_t, *pads)
        return self.winograd(x, pad_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.winograd_conv(x, same_padding(x.shape[2], self._kernel[0], self._stride[0]))
        if y is not None:
            return F.relu_(y) if self._relu else y
        if self._padding is None:
            x = _conv3d(_same_pad_5d(x, self._kernel, self._stride), self.conv, (0, 0, 0))
        else:
            x = _conv3d(x, self.conv, self._padding)
        return F.relu_(x) if self._relu else x


class _FastMaxPool(nn.Module):
    """'SAME' max pool of a ReLU output without a padded copy: PyTorch's own padding plus
    ceil_mode clips the windows exactly where 'SAME' pads, and on inputs >= 0 the max over the
    clipped window equals the max over the zero-padded one."""

    def __init__(self, pool: MaxPool3dSamePadding):
        super().__init__()
        self._kernel, self._stride = _triple(pool.kernel_size), _triple(pool.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        pads = [same_padding(n, k, s) for n, k, s in zip(sizes, self._kernel, self._stride)]
        before = tuple(b for b, _ in pads)
        ceil_out = [-(-(n + 2 * b - k) // s) + 1 for n, (b, _), k, s in zip(sizes, pads, self._kernel, self._stride)]
        if ceil_out == [-(-n // s) for n, s in zip(sizes, self._stride)] and all(
                2 * b <= k for b, k in zip(before, self._kernel)):
            return F.max_pool3d(x, self._kernel, self._stride, before, ceil_mode=True)
        return F.max_pool3d(_same_pad_5d(x, self._kernel, self._stride), self._kernel, self._stride)


def _max_pool_3x3x3(x: torch.Tensor) -> torch.Tensor:
    """max_pool3d(x, 3, stride 1, padding 1) as three separable passes of two in-place maxima
    (no padded copy, 6 comparisons instead of 26): 2-5x faster than PyTorch's pool in bf16."""
    return separable_max3(x, (4, 3, 2))


def separable_max3(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """The max over each 3-wide window (clipped at the borders) along each of `dims` in turn."""
    for dim in dims:
        n = x.shape[dim]
        if n > 1:
            y = x.clone()
            lo, hi = y.narrow(dim, 0, n - 1), y.narrow(dim, 1, n - 1)
            torch.maximum(lo, x.narrow(dim, 1, n - 1), out=lo)
            torch.maximum(hi, x.narrow(dim, 0, n - 1), out=hi)
            x = y
    return x


class _FastInception(nn.Module):
    """Inception block with b0, b1a and b2a (1x1 convs of the same input) run as one conv."""

    def __init__(self, block: InceptionModule):
        super().__init__()
        heads = [_fold_unit(u) for u in (block.b0, block.b1a, block.b2a)]
        self._splits = [h.out_channels for h in heads]
        self.heads = nn.Conv3d(heads[0].in_channels, sum(self._splits), 1, bias=True)
        self.heads.weight.data.copy_(torch.cat([h.weight.data for h in heads]))
        self.heads.bias.data.copy_(torch.cat([h.bias.data for h in heads]))
        self.b1b, self.b2b, self.b3b = _FastUnit(block.b1b), _FastUnit(block.b2b), _FastUnit(block.b3b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0, y1, y2 = F.relu_(_conv3d(x, self.heads, (0, 0, 0))).split(self._splits, dim=1)
        # x follows a ReLU, so ignoring the border equals the original's zero padding.
        y3 = self.b3b(_max_pool_3x3x3(x))
        # Concatenate into a channels-last output: torch.cat would pick the layout of y0, a
        # channel slice, and fall back to contiguous, which makes every later layer slower.
        ys = [y0, self.b1b(y1), self.b2b(y2), y3]
        out = torch.empty((x.shape[0], sum(y.shape[1] for y in ys), *y3.shape[2:]), dtype=x.dtype,
                          device=x.device, memory_format=torch.channels_last_3d)
        return torch.cat(ys, dim=1, out=out)


class FastInceptionI3d(nn.Module):
    """Eval-only I3D for inference, built from a trained InceptionI3d (which is not changed).

    Same forward / extract_features as the source model; the input may be on any device and of
    any floating dtype (it is moved to the model's device and precision), outputs are float32
    on the model's device. bf16/fp16 keep weights and activations in that precision.
    """

    def __init__(self, model: InceptionI3d, precision: str = "auto", device: torch.device | str | None = None):
        super().__init__()
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.precision = resolve_precision(precision, self.device)
        self.dtype = _DTYPES[self.precision]
        self._final_endpoint = model._final_endpoint
        self._spatial_squeeze = model._spatial_squeeze
        self._has_logits = model._has_logits
        self._num_classes = model._num_classes
        self._in_channels = model._in_channels
        model = copy.deepcopy(model).float().cpu().eval()
        layers = OrderedDict()
        for name in model.end_points:
            m = model._modules[name]
            if isinstance(m, Unit3D):
                layers[name] = _FastUnit(m)
            elif isinstance(m, InceptionModule):
                layers[name] = _FastInception(m)
            else:
                layers[name] = _FastMaxPool(m)
        self.features = nn.Sequential(layers)
        if self._has_logits:
            self.logits = _fold_unit(model.logits)
        self.to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last_3d)
        if self._has_logits:
            self.logits.float()  # the classifier is tiny: keep it, and the pooled features, in fp32
        if self.device.type == "cpu" and self.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            for m in self.modules():
                if isinstance(m, _FastUnit):
                    m.enable_winograd()
        self.eval()
        self.requires_grad_(False)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def in_channels(self) -> int:
        return self._in_channels

    def _run_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self._in_channels:
            raise ValueError(f"expected input (B, {self._in_channels}, T, H, W), got {tuple(x.shape)}")
        # No channels-last copy of the input: the stem pads it anyway, and its conv's output is
        # channels-last because the weights are.
        return self.features(x.to(device=self.device, dtype=self.dtype))

    @torch.inference_mode()
    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1024, T', 1, 1) at 224x224, as InceptionI3d.extract_features."""
        return final_avg_pool(self._run_features(x).float()).contiguous()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run_features(x)
        if not self._has_logits:
            return out.float().contiguous()
        out = squeeze_logits(self.logits(final_avg_pool(out.float())), self._spatial_squeeze)
        if self._final_endpoint == "Predictions":
            return predictions(out)
        return out.contiguous()
