"""The fast, eval-only copy of an I3D (`InceptionI3d.for_inference()`), and the precision policy.

Built from the layers' public contract (pytorch_i3d.py's module docstring: `time`, `window`,
`out_channels`, `branches`, `forward(x, pad_t)`, `accept(builder)`), never from their
internals; its layers keep that contract (all but `accept`: nothing builds from them), so the
streaming engine runs them as it runs the plain ones. What it changes,
and why:

- batch norm is folded into the convolutions, and each Inception block's three 1x1
  convolutions of the same input are one: fewer passes over the activations;
- activations stay channels-last 3D end to end: PyTorch's CPU max pool and oneDNN's
  convolutions are faster in that layout, so a block concatenates into a channels-last output
  (torch.cat of channel slices would silently fall back to contiguous);
- on CPU the convolutions go straight to oneDNN: at batch 1 F.conv3d sends the small-channel
  3x3x3 convolutions to a reference kernel that also drops channels-last;
- 'SAME' padding is done inside the conv / pool where it is symmetric (all but the stem)
  instead of in a padded copy, and the blocks' 3x3x3 max pool is separable;
- in float32 on the CPU the 3x3x3 convolutions and the stem use temporal Winograd
  (winograd.py: about half the multiplications);
- bf16 / fp16 keep weights and activations in that precision (the tiny classifier and the
  pooled features stay float32).
`benchmark.py --only model` measures each precision against the plain model.
"""
from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from winograd import SUPPORTED_TAPS, TILE, PolyphaseWinograd, TemporalWinograd, suits

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Pads = tuple[int, int]

# ----------------------------------------------------------------------------------------------
# Precision policy
# ----------------------------------------------------------------------------------------------


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
    Without them PyTorch's bf16 CPU convolutions fail or fall back to a reference kernel much
    slower than fp32."""
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


# ----------------------------------------------------------------------------------------------
# Fast layers: the same contract as the model's layers
# ----------------------------------------------------------------------------------------------

def _fold(unit: nn.Module) -> nn.Conv3d:
    """A Unit3D's conv with its batch norm folded in: w' = w * g / s, b' = beta + (b - mean) * g / s."""
    conv = unit.conv3d
    weight = conv.weight.detach().float()
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(weight.shape[0])
    if unit.bn is not None:
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
    has a fast kernel for every I3D layer (F.conv3d does not for small channel counts)."""
    if x.device.type == "cpu" and x.dtype in _ONEDNN_DTYPES and torch.backends.mkldnn.is_available():
        return torch.mkldnn_convolution(x, conv.weight, conv.bias, padding, conv.stride, (1, 1, 1), 1)
    return F.conv3d(x, conv.weight, conv.bias, conv.stride, padding)


class FastUnit(nn.Module):
    """A folded Unit3D (+ ReLU). Stride-1 odd kernels pad symmetrically inside the conv (no
    padded copy); the strided stem pads asymmetrically ('SAME', odd pixel at the end)."""

    branches = ()

    def __init__(self, unit: nn.Module):
        super().__init__()
        self.conv = _fold(unit)
        self.window, self.time, self.out_channels = unit.window, unit.time, unit.out_channels
        kernel, stride = self.window.kernel, self.window.stride
        symmetric = all(s == 1 and k % 2 == 1 for k, s in zip(kernel, stride))
        self.padding = tuple(k // 2 for k in kernel) if symmetric else None
        self.relu = unit.activation is not None
        self.winograd: TemporalWinograd | PolyphaseWinograd | None = None

    def enable_winograd(self) -> None:
        """Use temporal Winograd (winograd.py) where it applies: the 3x3x3 stride-1 convs and the
        7x7x7 stride-2 stem. Called once the weights are float32 on the CPU. The layer then
        computes its outputs in tiles (time.tile), which a streaming engine respects."""
        (k, *_), (s, *spatial_stride) = self.window.kernel, self.window.stride
        if self.padding is not None and k in SUPPORTED_TAPS and s == 1:
            self.winograd = TemporalWinograd(self.conv.weight, self.conv.bias, self.padding[1:])
        elif s == 2 and (k + 1) // 2 in SUPPORTED_TAPS and all(st > 1 for st in spatial_stride):
            self.winograd = PolyphaseWinograd(self.conv.weight, self.conv.bias, tuple(spatial_stride))
        if self.winograd is not None:
            self.time = dataclasses.replace(self.time, tile=TILE)

    def winograd_conv(self, x: torch.Tensor, pad_t: Pads) -> torch.Tensor | None:
        """The conv (no ReLU) by Winograd; None where Winograd is not used for x (winograd.suits)."""
        if self.winograd is None or not suits(x):
            return None
        if isinstance(self.winograd, PolyphaseWinograd):
            return self.winograd(x, pad_t, *self.window.pads(x.shape[2:])[1:])
        return self.winograd(x, pad_t)

    def forward(self, x: torch.Tensor, pad_t: Pads | None = None) -> torch.Tensor:
        if pad_t is None:
            pad_t = self.time.pads(x.shape[2])
        y = self.winograd_conv(x, pad_t)
        if y is None and self.padding is not None and pad_t[0] == pad_t[1]:
            y = _conv3d(x, self.conv, (pad_t[0], *self.padding[1:]))
        elif y is None:
            y = _conv3d(self.window.pad(x, pad_t), self.conv, (0, 0, 0))
        return F.relu_(y) if self.relu else y

class FastMaxPool(nn.Module):
    """The 'SAME' max pool of a ReLU output without a padded copy wherever the pool's ceil rule
    allows it (MaxPool3dSamePadding.ceil_padding)."""

    out_channels, branches = None, ()

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool  # no parameters: its window and ceil rule are all this layer needs
        self.window, self.time = pool.window, pool.time

    def forward(self, x: torch.Tensor, pad_t: Pads | None = None) -> torch.Tensor:
        kernel, stride = self.window.kernel, self.window.stride
        padding = self.pool.ceil_padding(x.shape[2:], pad_t)
        if padding is not None:
            return F.max_pool3d(x, kernel, stride, padding, ceil_mode=True)
        return F.max_pool3d(self.window.pad(x, pad_t), kernel, stride)

def separable_max3(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """The max over each 3-wide window (clipped at the borders) along each of `dims` in turn,
    by two in-place maxima per dimension (no padded copy, 6 comparisons instead of 26)."""
    for dim in dims:
        n = x.shape[dim]
        if n > 1:
            y = x.clone()
            lo, hi = y.narrow(dim, 0, n - 1), y.narrow(dim, 1, n - 1)
            torch.maximum(lo, x.narrow(dim, 1, n - 1), out=lo)
            torch.maximum(hi, x.narrow(dim, 0, n - 1), out=hi)
            x = y
    return x


class SeparableMaxPool3(nn.Module):
    """An Inception block's 3x3x3 stride-1 'SAME' max pool of a ReLU output, separable: ignoring
    the border equals the original's zero padding on inputs >= 0, and the max is exact, so the
    order of the passes changes no value."""

    out_channels, branches = None, ()

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.window, self.time = pool.window, pool.time

    def forward(self, x: torch.Tensor, pad_t: Pads | None = None) -> torch.Tensor:
        if pad_t is None or tuple(pad_t) == (1, 1):
            return separable_max3(x, (4, 3, 2))
        if any(pad_t):
            x = torch.cat([x.new_zeros((*x.shape[:2], pad_t[0], *x.shape[3:])), x,
                           x.new_zeros((*x.shape[:2], pad_t[1], *x.shape[3:]))], dim=2)
        n = x.shape[2] - 2  # valid in time: a channels-last output, as the layers after it want
        out = torch.empty((x.shape[0], x.shape[1], n, *x.shape[3:]), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last_3d)
        torch.maximum(x.narrow(2, 0, n), x.narrow(2, 1, n), out=out)
        torch.maximum(out, x.narrow(2, 2, n), out=out)
        return separable_max3(out, (4, 3))

class FastInception(nn.Module):
    """Inception block with its three 1x1 convs of the block input (the first layers of branches
    0-2) run as one conv; the branches then go on from its output split three ways."""

    def __init__(self, block: nn.Module):
        super().__init__()
        (b0,), (b1a, b1b), (b2a, b2b), (b3a, b3b) = block.branches
        heads = [_fold(u) for u in (b0, b1a, b2a)]
        self.splits = [h.out_channels for h in heads]
        self.heads = nn.Conv3d(heads[0].in_channels, sum(self.splits), 1, bias=True)
        self.heads.weight.data.copy_(torch.cat([h.weight.data for h in heads]))
        self.heads.bias.data.copy_(torch.cat([h.bias.data for h in heads]))
        self.b1b, self.b2b = FastUnit(b1b), FastUnit(b2b)
        self.b3a, self.b3b = SeparableMaxPool3(b3a), FastUnit(b3b)
        self.window, self.time, self.out_channels = block.window, block.time, block.out_channels

    @property
    def branches(self) -> list[list[nn.Module]]:
        """The layers after branch_inputs, per branch."""
        return [[], [self.b1b], [self.b2b], [self.b3a, self.b3b]]

    def branch_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The four branches' inputs: the fused 1x1 convs' outputs, and x for the pool."""
        y0, y1, y2 = F.relu_(_conv3d(x, self.heads, (0, 0, 0))).split(self.splits, dim=1)
        return y0, y1, y2, x

    def forward(self, x: torch.Tensor, pad_t: Pads | None = None) -> torch.Tensor:
        if pad_t is None:
            pad_t = self.time.pads(x.shape[2])
        y0, y1, y2, x = self.branch_inputs(x)
        lo, hi = 1 - pad_t[0], 1 - pad_t[1]
        if lo or hi:  # the frames the 3-frame branches output
            y0 = y0[:, :, lo:y0.shape[2] - hi]
        y3 = self.b3b(self.b3a(x, pad_t))
        ys = [y0, self.b1b(y1, pad_t), self.b2b(y2, pad_t), y3]
        # Concatenate into a channels-last output: torch.cat would pick the layout of y0, a
        # channel slice, and fall back to contiguous, which makes every later layer slower.
        out = torch.empty((x.shape[0], sum(y.shape[1] for y in ys), *ys[3].shape[2:]), dtype=x.dtype,
                          device=x.device, memory_format=torch.channels_last_3d)
        return torch.cat(ys, dim=1, out=out)

class FastLayers:
    """The fast layer of each model layer (layer.accept(builder))."""

    unit = FastUnit
    max_pool = FastMaxPool
    inception = FastInception


class FastInceptionI3d(nn.Module):
    """Eval-only I3D for inference, built from a trained InceptionI3d (which is not changed).

    Same forward / extract_features as the source model; the input may be on any device and of
    any floating dtype (it is moved to the model's device and precision), outputs are float32
    on the model's device. bf16/fp16 keep weights and activations in that precision.
    """

    channels_last = True  # activations after the stem (its input is taken as given)

    def __init__(self, model: nn.Module, precision: str = "auto", device: torch.device | str | None = None):
        super().__init__()
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.precision = resolve_precision(precision, self.device)
        self.dtype = _DTYPES[self.precision]
        self.final_endpoint, self.has_logits = model.final_endpoint, model.has_logits
        self.num_classes, self.in_channels = model.num_classes, model.in_channels
        model = copy.deepcopy(model).float().cpu().eval()
        self.features = nn.Sequential(OrderedDict((name, layer.accept(FastLayers))
                                                  for name, layer in model.layers()))
        self.avg_pool, self.head = model.avg_pool, model.head  # no parameters
        if self.has_logits:
            self.logits = _fold(model.logits)
        self.to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last_3d)
        if self.has_logits:
            self.logits.float()  # the classifier is tiny: keep it, and the pooled features, in fp32
        if self.device.type == "cpu" and self.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            for m in self.modules():
                if isinstance(m, FastUnit):
                    m.enable_winograd()
        self.eval()
        self.requires_grad_(False)

    @property
    def spatial_squeeze(self) -> bool:
        return self.head.spatial_squeeze

    def layers(self) -> Iterator[tuple[str, nn.Module]]:
        """The (endpoint, layer) pairs, in order, as InceptionI3d.layers()."""
        yield from self.features.named_children()

    def _run_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        # No channels-last copy of the input: the stem pads it anyway, and its conv's output is
        # channels-last because the weights are.
        return self.features(x.to(device=self.device, dtype=self.dtype))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """The Logits endpoint of float32 pooled features: (B, classes, T')."""
        return self.head(self.logits(pooled))

    @torch.inference_mode()
    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1024, T', 1, 1) at 224x224, as InceptionI3d.extract_features."""
        return self.avg_pool(self._run_features(x).float()).contiguous()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run_features(x)
        if not self.has_logits:
            return out.float().contiguous()
        out = self.classify(self.avg_pool(out.float()))
        if self.final_endpoint == "Predictions":
            return self.head.predictions(out)
        return out.contiguous()
