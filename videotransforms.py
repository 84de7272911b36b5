"""Clip transforms, as the original pytorch-i3d videotransforms plus what training needs.

They take numpy uint8/float clips laid out (T, H, W, C), as loaded, or torch tensors laid out
(C, T, H, W), as the network takes them. Random transforms draw from an optional numpy
Generator, so a data item can be made a pure function of (seed, epoch, index): that is what
makes DataLoader workers and resumed training reproducible.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from frame_io import negate_flow_x

def _spatial_axes(clip) -> tuple[int, int]:
    """(height axis, width axis): numpy (T, H, W, C) -> (1, 2); torch (C, T, H, W) -> (2, 3)."""
    return (2, 3) if isinstance(clip, torch.Tensor) else (1, 2)


def _crop(clip, top: int, left: int, h: int, w: int):
    if isinstance(clip, torch.Tensor):
        return clip[..., top:top + h, left:left + w]
    return clip[:, top:top + h, left:left + w, :]


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


class _Crop:
    """A crop of (h, w) pixels, the same for every frame; subclasses choose where."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _size(size)

    def _offsets(self, h: int, w: int, rng: np.random.Generator | None) -> tuple[int, int]:
        raise NotImplementedError

    def __call__(self, clip, rng: np.random.Generator | None = None):
        ha, wa = _spatial_axes(clip)
        h, w = clip.shape[ha], clip.shape[wa]
        th, tw = self.size
        if h < th or w < tw:
            raise ValueError(f"clip of {h}x{w} is smaller than the {th}x{tw} crop")
        return _crop(clip, *self._offsets(h, w, rng), th, tw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class RandomCrop(_Crop):
    """A random (h, w) crop, the same for every frame of the clip."""

    def _offsets(self, h: int, w: int, rng: np.random.Generator | None) -> tuple[int, int]:
        rng = _rng(rng)
        th, tw = self.size
        return int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))


class CenterCrop(_Crop):
    """The central (h, w) crop; offsets rounded as the original (round half to even)."""

    def _offsets(self, h: int, w: int, rng: np.random.Generator | None) -> tuple[int, int]:
        th, tw = self.size
        return int(round((h - th) / 2)), int(round((w - tw) / 2))


class RandomHorizontalFlip:
    """Mirror the clip left-right with probability p (RGB: the original's transform)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def _flip(self, clip):
        if isinstance(clip, torch.Tensor):
            return clip.flip(-1)
        return np.ascontiguousarray(clip[:, :, ::-1, :])

    def __call__(self, clip, rng: np.random.Generator | None = None):
        if _rng(rng).random() < self.p:
            return self._flip(clip)
        return clip

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomHorizontalFlipFlow(RandomHorizontalFlip):
    """Mirror a flow clip: mirrored motion runs the other way, so the x channel (channel 0)
    changes sign: uint8-encoded x -> 255 - x, float x -> -x. (The original flips flow frames
    like RGB ones, leaving x with the wrong sign.)"""

    def _flip(self, clip):
        clip = super()._flip(clip)
        # tensors are (C, T, H, W), arrays (T, H, W, C)
        return negate_flow_x(clip, axis=0 if isinstance(clip, torch.Tensor) else -1)


def horizontal_flip(mode: str, p: float = 0.5) -> RandomHorizontalFlip:
    """The right flip for a stream: flow-aware for 'flow'."""
    return RandomHorizontalFlipFlow(p) if mode == "flow" else RandomHorizontalFlip(p)


class Compose:
    """Apply transforms in order, each given the same Generator."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, clip, rng: np.random.Generator | None = None):
        rng = _rng(rng)
        for t in self.transforms:
            clip = t(clip, rng)
        return clip

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"
