"""Dense optical flow for the I3D flow stream: videos (or frame folders) -> the original
pytorch-i3d / Charades flow frames, `OUT/VID/VID-000001x.jpg` and `VID-000001y.jpg`.

    python dense_flow.py video.mp4 frames_dir/ -o flow_out --rgb --workers 2

The default method, `tvl1`, is our own TV-L1 in PyTorch (Zach, Pock & Bischof's duality scheme
with Wedel et al.'s improvements, as OpenCV's DualTVL1OpticalFlow does it, OpenCV's defaults):
a coarse-to-fine pyramid (scale step 0.8, 5 scales), 5 warps per scale (bicubic warping of the
second image and its centred gradient), 10 outer x 30 inner iterations per warp, a 5x5 median
filter of the flow before each outer iteration, and early stopping once the squared change of
the flow summed over the image drops under epsilon^2 * area (per pair). The inner iteration is
one function that torch.compile fuses into about two passes over memory (the CLI's default;
eager if no compiler works). On CPU the pairs are solved one at a time (a pair's state stays in
cache, and nothing is spent on pairs that have already stopped); on CUDA a batch (B, 1, H, W) is
solved at once: the host looks at the stopping test every `sync_every` iterations (10), drops
the pairs that stopped from the working batch, and a device mask freezes them in between, so
the inner loop has no host syncs.

Other methods: `opencv-tvl1` (cv2.optflow's DualTVL1, the reference), `dis` and `farneback`.

Encoding (the original one): flow clipped to +-20 px, stored as round(255 * (f + 20) / 40) in
8-bit grayscale JPEGs. N frames give N-1 flow fields (frame i -> i+1); we also write frame N as
a copy of flow N-1 so that the RGB and flow counts match, as in the original Charades data.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cli import UserError, run_main, select_device, setup_logging
from frame_io import FrameError, atomic_dir, is_video_file, iter_frames, write_image

log = logging.getLogger("dense_flow")

METHODS = ("tvl1", "opencv-tvl1", "dis", "farneback")
BOUND = 20.0  # flow is clipped to +-BOUND pixels before the 8-bit encoding

# OpenCV's DualTVL1OpticalFlow defaults.
TVL1_DEFAULTS = dict(tau=0.25, lam=0.15, theta=0.3, nscales=5, warps=5, epsilon=0.01,
                     inner_iterations=30, outer_iterations=10, scale_step=0.8, median=5)


# ---------------------------------------------------------------------------------------------
# 8-bit encoding
# ---------------------------------------------------------------------------------------------

def flow_to_uint8(flow: np.ndarray, bound: float = BOUND) -> tuple[np.ndarray, np.ndarray]:
    """(..., H, W, 2) float flow -> (x_u8, y_u8): round(255 * (clip(f) + bound) / (2 * bound))."""
    f = np.clip(np.asarray(flow, dtype=np.float32), -bound, bound)
    u8 = np.rint((f + bound) * (255.0 / (2 * bound))).astype(np.uint8)
    return u8[..., 0], u8[..., 1]


def uint8_to_flow(x_u8: np.ndarray, y_u8: np.ndarray, bound: float = BOUND) -> np.ndarray:
    """Inverse of flow_to_uint8 (up to the 40/255 px quantisation): (..., H, W, 2) float32."""
    f = np.stack([x_u8, y_u8], axis=-1).astype(np.float32)
    return f * np.float32(2 * bound / 255.0) - np.float32(bound)


def flow_to_color(flow: np.ndarray, max_mag: float | None = None) -> np.ndarray:
    """HSV coding of a (H, W, 2) flow as an RGB uint8 image: hue = direction, value = speed."""
    mag, ang = cv2.cartToPolar(flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32),
                               angleInDegrees=True)
    top = max_mag if max_mag else max(float(mag.max()), 1e-6)
    hsv = np.zeros(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (ang / 2).astype(np.uint8)  # OpenCV hue is 0..179
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / top * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


# ---------------------------------------------------------------------------------------------
# Our TV-L1 in PyTorch
# ---------------------------------------------------------------------------------------------

def _linear_taps(n_out: int, n_in: int, scale: float, device: torch.device):
    """Source taps and weights of OpenCV's INTER_LINEAR along one axis: src = (dst + .5) * scale
    - .5, clamped at both ends (border replicate)."""
    s = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5
    i0 = s.floor()
    frac = s - i0
    low, high = i0 < 0, i0 >= n_in - 1
    frac[low | high] = 0.0
    i0 = i0.clamp(0, n_in - 1).long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0.to(device), i1.to(device), frac.float().to(device)


def resize_linear(x: torch.Tensor, out_hw: tuple[int, int], scale: tuple[float, float] | None = None) -> torch.Tensor:
    """cv2.resize(INTER_LINEAR) of (N, C, H, W) float: `scale` is OpenCV's src/dst step per axis
    (y, x); None means in/out, as when OpenCV is given an explicit size."""
    h, w = x.shape[-2:]
    oh, ow = out_hw
    sy, sx = scale if scale is not None else (h / oh, w / ow)
    y0, y1, fy = _linear_taps(oh, h, sy, x.device)
    x0, x1, fx = _linear_taps(ow, w, sx, x.device)
    rows = torch.lerp(x.index_select(-2, y0), x.index_select(-2, y1), fy[:, None])
    return torch.lerp(rows.index_select(-1, x0), rows.index_select(-1, x1), fx)


def centered_gradient(img: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 2, H, W) of d/dx, d/dy: central differences, one-sided halves at the
    border (replicate padding gives exactly OpenCV's border rule)."""
    p = F.pad(img, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    gy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
    return torch.cat([gx, gy], dim=1)


def warp_bicubic(img: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """img (N, C, H, W) sampled at x + u (u: (N, 2, H, W)) with bicubic (a = -0.75) interpolation
    and zeros outside, like cv2.remap(INTER_CUBIC, BORDER_CONSTANT) (OpenCV 5 samples at the
    exact float positions; 4.x rounded them to 1/32 px)."""
    n, _, h, w = img.shape
    ys = torch.arange(h, device=img.device, dtype=img.dtype).view(1, h, 1)
    xs = torch.arange(w, device=img.device, dtype=img.dtype).view(1, 1, w)
    px = xs + u[:, 0]
    py = ys + u[:, 1]
    grid = torch.stack([px * (2.0 / max(w - 1, 1)) - 1, py * (2.0 / max(h - 1, 1)) - 1], dim=-1)
    return F.grid_sample(img, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def median5(u: torch.Tensor) -> torch.Tensor:
    """5x5 median filter of (N, C, H, W), replicate border (cv2.medianBlur's rule). On CPU this
    calls cv2.medianBlur per plane (SIMD, exact); elsewhere unfold + median on the device."""
    if u.device.type == "cpu":
        planes = u.reshape(-1, *u.shape[-2:]).numpy()
        out = np.empty_like(planes)
        for i, plane in enumerate(planes):
            out[i] = cv2.medianBlur(plane, 5)
        return torch.from_numpy(out).view(u.shape)
    return median5_torch(u)


def median5_torch(u: torch.Tensor) -> torch.Tensor:
    """The same 5x5 median in plain PyTorch (used on GPU; tested equal to cv2.medianBlur)."""
    n, c, h, w = u.shape
    p = F.pad(u.reshape(n * c, 1, h, w), (2, 2, 2, 2), mode="replicate")
    patches = p.unfold(2, 5, 1).unfold(3, 5, 1).reshape(n * c, h, w, 25)
    return patches.median(dim=-1).values.view(n, c, h, w)


def _tvl1_step(u, px, py, grad_i, rho_c, inv_grad, l_t: float, theta: float, taut: float):
    """One inner iteration for a batch, written functionally so torch.compile can fuse it (into
    about two passes over memory: u, then the dual variables).

    u (B,2,H,W) flow; px (B,2,H,W+1) / py (B,2,H+1,W) the dual variables (x / y components for
    u1 and u2) with a zero column / row in front so the backward-difference divergence needs no
    border cases; grad_i (B,2,H,W) warped gradient of I1; rho_c, inv_grad (B,1,H,W). Returns
    the new (u, px, py) and each pair's summed squared change of u."""
    # thresholding step: v = u - clamp(rho / |grad|^2, +-lambda*theta) * grad
    rho = rho_c + grad_i[:, :1] * u[:, :1] + grad_i[:, 1:] * u[:, 1:]
    v = u - torch.clamp(rho * inv_grad, -l_t, l_t) * grad_i
    # u = v + theta * div(p)
    div = px[..., 1:] - px[..., :-1] + py[..., 1:, :] - py[..., :-1, :]
    u_new = v + theta * div
    err = ((u_new - u) ** 2).sum(dim=(1, 2, 3))
    # dual step with the forward gradient (zero at the last column / row)
    ux = F.pad(u_new[..., 1:] - u_new[..., :-1], (0, 1))
    uy = F.pad(u_new[..., 1:, :] - u_new[..., :-1, :], (0, 0, 0, 1))
    ng = 1.0 + taut * torch.sqrt(ux * ux + uy * uy)
    px_new = F.pad((px[..., 1:] + taut * ux) / ng, (1, 0))
    py_new = F.pad((py[..., 1:, :] + taut * uy) / ng, (0, 0, 1, 0))
    return u_new, px_new, py_new, err


def _tvl1_step_masked(u, px, py, grad_i, rho_c, inv_grad, active, l_t: float, theta: float, taut: float):
    """_tvl1_step where the pairs with active (B,1,1,1) False stay frozen: used on CUDA between
    the host's looks at the stopping test (a separate function, so neither compiles a guard
    for the other's case)."""
    u_new, px_new, py_new, err = _tvl1_step(u, px, py, grad_i, rho_c, inv_grad, l_t, theta, taut)
    return (torch.where(active, u_new, u), torch.where(active, px_new, px), torch.where(active, py_new, py), err)


_compiled: dict = {}


def _get_step(compile_step: bool, masked: bool = False):
    fn = _tvl1_step_masked if masked else _tvl1_step
    if not compile_step:
        return fn
    if fn not in _compiled:
        # dynamic=True: one compiled kernel for every pyramid size
        compiled = torch.compile(fn, dynamic=True, fullgraph=True)

        def step(*args):
            try:
                return compiled(*args)
            except Exception as e:  # a (re)compile failed: eager from now on (a real error re-raises there)
                log.warning("torch.compile of the TV-L1 step failed (%s); using eager", e.__class__.__name__)
                _compiled[fn] = fn
                return fn(*args)
        _compiled[fn] = step
    return _compiled[fn]


def pyramid_sizes(h: int, w: int, nscales: int, scale_step: float) -> list[tuple[int, int]]:
    """Sizes of OpenCV's pyramid: round(size * step) each level, stopping under 16 px."""
    sizes = [(h, w)]
    for _ in range(1, nscales):
        ph, pw = sizes[-1]
        nh, nw = round(ph * scale_step), round(pw * scale_step)
        if nh < 16 or nw < 16:
            break
        sizes.append((nh, nw))
    return sizes


def _solve_warp(u, px, py, grad_i, rho_c, inv_grad, step, masked_step, *, scaled_eps: float, outer_iterations: int,
                inner_iterations: int, median: int, sync_every: int, l_t: float, theta: float, taut: float):
    """The outer x inner iterations of one warp, each pair stopping on its own once its change
    drops under scaled_eps (after the iteration that got there, as OpenCV). Whenever the host
    looks (every `sync_every` iterations), stopped pairs leave the working batch: their state
    is final and copied out, so they cost nothing afterwards (masking them would cost a full
    iteration each). Between looks (CUDA) a device-side mask freezes them. Returns (u, px, py)."""
    b = u.shape[0]
    rows = None  # indices of the working batch's pairs in the full batch; None = all of them
    out = None  # the full-batch (u, px, py) that stopped pairs are copied into
    active = None  # (B,1,1,1) device mask of the pairs still iterating; None = all
    n = 0
    for _outer in range(outer_iterations):
        if median > 1:
            med = median5(u) if median == 5 else _median_any(u, median)
            u = med if active is None else torch.where(active, med, u)
        for _inner in range(inner_iterations):
            if active is None:
                u, px, py, err = step(u, px, py, grad_i, rho_c, inv_grad, l_t, theta, taut)
            else:
                u, px, py, err = masked_step(u, px, py, grad_i, rho_c, inv_grad, active, l_t, theta, taut)
            still = (err > scaled_eps).view(-1, 1, 1, 1)
            active = still if active is None else active & still
            n += 1
            if n % sync_every:
                continue
            keep = active.view(-1)
            if bool(keep.all()):
                active = None
                continue
            # some pairs stopped: copy them out and shrink the working batch
            if out is None:
                out = (u.clone(), px.clone(), py.clone())
                rows = torch.arange(b, device=u.device)
            else:
                for full, part in zip(out, (u, px, py)):
                    full.index_copy_(0, rows, part)
            idx = keep.nonzero().view(-1)
            if idx.numel() == 0:
                return out
            rows = rows.index_select(0, idx)
            u, px, py, grad_i, rho_c, inv_grad = (t.index_select(0, idx) for t in (u, px, py, grad_i, rho_c, inv_grad))
            active = None
    if out is None:
        return u, px, py
    for full, part in zip(out, (u, px, py)):
        full.index_copy_(0, rows, part)
    return out


@torch.no_grad()
def tvl1_torch(i0: torch.Tensor, i1: torch.Tensor, *, tau: float = 0.25, lam: float = 0.15, theta: float = 0.3,
               nscales: int = 5, warps: int = 5, epsilon: float = 0.01, inner_iterations: int = 30,
               outer_iterations: int = 10, scale_step: float = 0.8, median: int = 5,
               compile_step: bool = False, sync_every: int | None = None,
               per_pair: bool | None = None) -> torch.Tensor:
    """TV-L1 flow from i0 to i1, both (B, 1, H, W) float in 0..255 (uint8 is converted), on their
    device. Returns (B, 2, H, W) float32: flow[:, 0] = dx, flow[:, 1] = dy.

    per_pair (default: on CPU) solves the pairs one after the other: on CPU a batch gains
    nothing (the fused step is memory bound and one pair's ~3.5 MB stays in cache), and a batch
    of one keeps torch.compile to a single specialisation. On CUDA the batch fills the GPU."""
    i0 = i0.float()
    i1 = i1.float()
    b, _, h, w = i0.shape
    dev = i0.device
    if per_pair is None:
        per_pair = dev.type == "cpu"
    if per_pair and b > 1:
        kw = dict(tau=tau, lam=lam, theta=theta, nscales=nscales, warps=warps, epsilon=epsilon,
                  inner_iterations=inner_iterations, outer_iterations=outer_iterations, scale_step=scale_step,
                  median=median, compile_step=compile_step, sync_every=sync_every)
        return torch.cat([tvl1_torch(i0[k:k + 1], i1[k:k + 1], **kw) for k in range(b)])
    if sync_every is None:
        sync_every = 1 if dev.type == "cpu" else 10
    step, masked_step = _get_step(compile_step), _get_step(compile_step and sync_every > 1, masked=True)
    l_t, taut = float(lam * theta), float(tau / theta)

    sizes = pyramid_sizes(h, w, nscales, scale_step)
    pyr0, pyr1 = [i0], [i1]
    for s in range(1, len(sizes)):
        pyr0.append(resize_linear(pyr0[-1], sizes[s], (1 / scale_step, 1 / scale_step)))
        pyr1.append(resize_linear(pyr1[-1], sizes[s], (1 / scale_step, 1 / scale_step)))

    u = torch.zeros(b, 2, *sizes[-1], device=dev)
    for s in range(len(sizes) - 1, -1, -1):
        sh, sw = sizes[s]
        grad1 = centered_gradient(pyr1[s])
        stack1 = torch.cat([pyr1[s], grad1], dim=1)  # warp I1 and its gradient in one call
        px = torch.zeros(b, 2, sh, sw + 1, device=dev)
        py = torch.zeros(b, 2, sh + 1, sw, device=dev)
        for _ in range(warps):
            warped = warp_bicubic(stack1, u)
            i1w, grad_i = warped[:, :1], warped[:, 1:].contiguous()
            grad2 = (grad_i * grad_i).sum(dim=1, keepdim=True)
            rho_c = i1w - (grad_i * u).sum(dim=1, keepdim=True) - pyr0[s]
            # 1/|grad|^2, finite everywhere; where the gradient vanishes grad_i is ~0 so v ~ u
            inv_grad = 1.0 / grad2.clamp_min(1e-20)
            u, px, py = _solve_warp(u, px, py, grad_i, rho_c, inv_grad, step, masked_step,
                                    scaled_eps=epsilon * epsilon * sh * sw, outer_iterations=outer_iterations,
                                    inner_iterations=inner_iterations, median=median, sync_every=sync_every,
                                    l_t=l_t, theta=theta, taut=taut)
        if s > 0:
            u = resize_linear(u, sizes[s - 1]) * (1 / scale_step)
    return u


def _median_any(u: torch.Tensor, k: int) -> torch.Tensor:
    n, c, h, w = u.shape
    r = k // 2
    p = F.pad(u.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")
    return p.unfold(2, k, 1).unfold(3, k, 1).reshape(n * c, h, w, k * k).median(-1).values.view(n, c, h, w)


# ---------------------------------------------------------------------------------------------
# One function for every method
# ---------------------------------------------------------------------------------------------

def _opencv_flow(method: str):
    if method == "opencv-tvl1":
        return cv2.optflow.DualTVL1OpticalFlow_create()
    if method == "dis":
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    if method == "farneback":
        return cv2.FarnebackOpticalFlow_create()
    raise UserError(f"unknown flow method {method!r} (choose from {', '.join(METHODS)})")


def compute_flow(frames: np.ndarray, method: str = "tvl1", device: str | torch.device = "auto",
                 batch: int = 8, compile_step: bool = False) -> np.ndarray:
    """Flow between consecutive frames of a (T, H, W) uint8 grayscale stack: float32
    (T-1, H, W, 2), channel 0 = x, 1 = y, frame t -> t+1."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise ValueError(f"compute_flow needs (T>=2, H, W) grayscale frames, got shape {frames.shape}")
    if method != "tvl1":
        algo = _opencv_flow(method)
        return np.stack([algo.calc(frames[t], frames[t + 1], None) for t in range(len(frames) - 1)])
    dev = select_device(device) if isinstance(device, str) else device
    out = np.empty((len(frames) - 1, *frames.shape[1:], 2), np.float32)
    batch = max(1, batch)
    for start in range(0, len(frames) - 1, batch):
        stop = min(start + batch, len(frames) - 1)
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start:stop + 1])).to(dev, non_blocking=True)
        chunk = chunk.float().unsqueeze(1)
        flow = tvl1_torch(chunk[:-1], chunk[1:], compile_step=compile_step)
        out[start:stop] = flow.permute(0, 2, 3, 1).cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------------
# Synthetic pairs with known flow (tests and benchmark)
# ---------------------------------------------------------------------------------------------

def smooth_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random float32 texture in 0..255: noise blurred at several scales."""
    tex = np.zeros((h, w), np.float32)
    for sigma, weight in ((1.5, 0.5), (4.0, 1.0), (10.0, 1.0)):
        tex += weight * cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma) * sigma
    tex -= tex.min()
    return tex * (255.0 / max(float(tex.max()), 1e-6))


def synthetic_pair(h: int, w: int, kind: str = "translation", seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame0, frame1, flow) with frame0(x) = frame1(x + flow(x)) exactly: uint8 (h, w) frames
    and the float32 (h, w, 2) ground truth. kind: 'translation', 'rotation' or 'patch' (a
    textured square moving over a still textured background)."""
    rng = np.random.default_rng(seed)
    m = 24  # margin so that x + flow stays on the texture
    tex = smooth_texture(h + 2 * m, w + 2 * m, rng)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "translation":
        d = rng.uniform(-4, 4, size=2).astype(np.float32)
        flow = np.broadcast_to(d, (h, w, 2)).copy()
    elif kind == "rotation":
        a = np.deg2rad(rng.uniform(-3, 3))
        cx, cy = w / 2, h / 2
        fx = np.cos(a) * (xs - cx) - np.sin(a) * (ys - cy) + cx - xs
        fy = np.sin(a) * (xs - cx) + np.cos(a) * (ys - cy) + cy - ys
        flow = np.stack([fx, fy], -1).astype(np.float32)
    elif kind == "patch":
        frame1 = tex[m:m + h, m:m + w].copy()
        patch_tex = smooth_texture(h, w, rng)
        d = rng.uniform(-3, 3, size=2).astype(np.float32)
        ph, pw = h // 3, w // 3
        top, left = h // 3, w // 3
        # frame1: the patch at (top, left); frame0: the same patch shifted by -d
        frame1[top:top + ph, left:left + pw] = patch_tex[:ph, :pw]
        map_x = (xs + d[0]).astype(np.float32)
        map_y = (ys + d[1]).astype(np.float32)
        inside = (map_x >= left) & (map_x <= left + pw - 1) & (map_y >= top) & (map_y <= top + ph - 1)
        frame0 = frame1.copy()
        moved = cv2.remap(frame1, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        frame0[inside] = moved[inside]
        flow = np.zeros((h, w, 2), np.float32)
        flow[inside] = d
        # pixels of frame0 where the patch was in frame1 but is not anymore: background that
        # reappears (occluded in frame1); its true flow is undefined, keep it 0
        return (np.clip(np.rint(frame0), 0, 255).astype(np.uint8),
                np.clip(np.rint(frame1), 0, 255).astype(np.uint8), flow)
    else:
        raise ValueError(f"unknown synthetic kind {kind!r}")
    frame1 = tex[m:m + h, m:m + w]
    frame0 = cv2.remap(tex, xs + flow[..., 0] + m, ys + flow[..., 1] + m, cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REPLICATE)
    return (np.clip(np.rint(frame0), 0, 255).astype(np.uint8),
            np.clip(np.rint(frame1), 0, 255).astype(np.uint8), flow)


def end_point_error(flow: np.ndarray, gt: np.ndarray, border: int = 0) -> float:
    """Mean Euclidean distance between two (..., H, W, 2) flows, `border` pixels left out."""
    d = flow - gt
    e = np.sqrt((d ** 2).sum(-1))
    if border:
        e = e[..., border:-border, border:-border]
    return float(e.mean())


# ---------------------------------------------------------------------------------------------
# Videos -> Charades-layout flow (and RGB) frames
# ---------------------------------------------------------------------------------------------

def video_id(src: str | Path) -> str:
    """VID of an input: a video's file name without extension, a frame folder's name."""
    src = Path(src)
    return src.stem if is_video_file(src) else src.name


def _write_flow(folder: Path, vid: str, index: int, flow: np.ndarray) -> None:
    x, y = flow_to_uint8(flow)
    write_image(folder / f"{vid}-{index:06d}x.jpg", x)
    write_image(folder / f"{vid}-{index:06d}y.jpg", y)


def _chunks(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    buf: list[np.ndarray] = []
    for f in frames:
        buf.append(f)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def extract_video(src: str | Path, out_root: str | Path, method: str = "tvl1", rgb: bool = False,
                  resize: int = 256, device: str | torch.device = "cpu", batch: int = 8,
                  visualize: bool = False, compile_step: bool = False) -> int:
    """Write OUT/VID/VID-%06dx.jpg, ...y.jpg (and VID-%06d.jpg with rgb) for one input; returns
    the number of frames. The video is written to a temporary folder renamed when complete."""
    src, out_root = Path(src), Path(out_root)
    vid = video_id(src)
    batch = max(1, batch)
    for stale in out_root.glob(f".{vid}.*.tmp"):  # left by a killed run: that video is redone
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(out_root / vid) as tmp:
        n, prev, vis_flow, last = 0, None, None, None
        for chunk in _chunks(iter_frames(src, resize=resize), batch):
            grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in chunk]
            if rgb:
                for k, f in enumerate(chunk):
                    write_image(tmp / f"{vid}-{n + k + 1:06d}.jpg", f)
            stack = np.stack(([prev] if prev is not None else []) + grays)
            if len(stack) >= 2:
                flows = compute_flow(stack, method=method, device=device, batch=batch, compile_step=compile_step)
                first = n if prev is not None else 1  # 1-based index of the first flow of this chunk
                for k, fl in enumerate(flows):
                    _write_flow(tmp, vid, first + k, fl)
                last = flows[-1]
                if vis_flow is None:
                    vis_flow = flows[len(flows) // 2]
            n += len(chunk)
            prev = grays[-1]
        if n < 2:
            raise FrameError(f"{src}: {n} frame(s), flow needs at least two")
        _write_flow(tmp, vid, n, last)  # frame N repeats flow N-1 so flow and RGB counts match
        if visualize:
            write_image(tmp / "flow_vis.png", flow_to_color(vis_flow))
    return n


def _read_list(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such list file")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write_test."):
            pass
    except OSError as e:
        raise UserError(f"{out}: output folder cannot be written ({e.strerror or e})") from e


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def _job(args: tuple) -> tuple[str, int, str | None]:
    src, kwargs = args
    try:
        return str(src), extract_video(src, **kwargs), None
    except (FrameError, UserError, ValueError, OSError) as e:
        return str(src), 0, str(e)
    except Exception as e:  # an unexpected failure of one video must not stop the others
        return str(src), 0, f"{src}: {e.__class__.__name__}: {e}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="video files or folders of frame images")
    parser.add_argument("-o", "-out", "--out", required=True, help="output root: OUT/VID/VID-000001x.jpg ...")
    parser.add_argument("-list", "--list", help="text file with one input per line (added to INPUT...)")
    parser.add_argument("-method", "--method", default="tvl1", choices=METHODS)
    parser.add_argument("-rgb", "--rgb", action="store_true", help="also write the RGB frames VID-000001.jpg")
    parser.add_argument("-resize", "--resize", type=int, default=256,
                        help="smaller side of the frames the flow is computed on (0 keeps the size)")
    parser.add_argument("-workers", "--workers", type=int, default=1, help="videos processed in parallel")
    parser.add_argument("-device", "--device", default="auto", help="auto, cpu, cuda, cuda:1 (method tvl1)")
    parser.add_argument("-batch", "--batch", type=int, default=8, help="frame pairs computed at once")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the TV-L1 iteration (default: on; about 30 s to compile once, "
                             "cached on disk; falls back to eager if it fails)")
    parser.add_argument("-visualize", "--visualize", action="store_true",
                        help="also write OUT/VID/flow_vis.png, the HSV-coded flow of the middle frame")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    inputs = list(args.inputs) + (_read_list(args.list) if args.list else [])
    if not inputs:
        raise UserError("no input videos or frame folders given")
    vids = [video_id(p) for p in inputs]
    dup = sorted({v for v in vids if vids.count(v) > 1})
    if dup:
        raise UserError(f"several inputs share the video name(s) {', '.join(dup)}")
    out = Path(args.out)
    _check_writable(out)
    device = select_device(args.device) if args.method == "tvl1" else torch.device("cpu")
    compile_step = args.compile if args.compile is not None else _compile_works(device)

    todo = [p for p in inputs if not (out / video_id(p)).is_dir()]  # finished videos are skipped
    if len(todo) < len(inputs):
        log.info("%d of %d videos already done, skipped", len(inputs) - len(todo), len(inputs))
    kwargs = dict(out_root=out, method=args.method, rgb=args.rgb, resize=args.resize, device=device,
                  batch=args.batch, visualize=args.visualize, compile_step=compile_step)
    from tqdm import tqdm
    failures: list[tuple[str, str]] = []
    workers = max(1, min(args.workers, len(todo)))
    saved_threads = None
    if workers == 1 and device.type == "cpu":
        # one thread per pair stream (as each --workers process gets on 2 cores): the fused TV-L1
        # kernels are memory bound, and with 2 OpenMP threads every kernel waits at a barrier
        # whenever another process holds a core (measured 5-10x slower on a shared machine)
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(1)
    jobs = [(p, kwargs) for p in todo]
    if workers == 1:
        results = map(_job, jobs)
        pool = None
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(threads,))
        results = pool.imap_unordered(_job, jobs)
    try:
        for src, n, err in tqdm(results, total=len(jobs), desc="videos", unit="video", disable=not jobs):
            if err:
                failures.append((src, err))
            else:
                log.debug("%s: %d frames", src, n)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if saved_threads is not None:  # main() is also called in-process (tests, notebooks)
            torch.set_num_threads(saved_threads)
    if failures:
        for src, err in failures:
            print(f"dense_flow.py: failed: {err}", file=sys.stderr)
        print(f"dense_flow.py: {len(failures)} of {len(jobs)} videos failed", file=sys.stderr)
        return 1
    log.info("%d videos written to %s", len(jobs), out)
    return 0


# ---------------------------------------------------------------------------------------------
# Benchmark (benchmark.py's flow rows)
# ---------------------------------------------------------------------------------------------

SAMPLE_VIDEO = Path(__file__).resolve().parent / "data" / "samples" / "bikes.mp4"  # make samples


def benchmark_pairs(size: tuple[int, int] = (340, 256), pairs: int = 8,
                    video: str | Path | None = SAMPLE_VIDEO) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The benchmark's frames: (pairs + 1, h, w) uint8 gray, consecutive frames of `video`
    resized to exactly size (w, h), when that video can be read; else `pairs` synthetic pairs
    (2 * pairs frames, pair k = frames 2k, 2k+1) with their true flow. Returns (frames, gt or
    None, description). Real content matters: early stopping runs far more iterations on it."""
    w, h = size
    if video is not None and Path(video).is_file():
        frames = []
        try:
            for f in iter_frames(video):
                frames.append(cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY))
                if len(frames) == pairs + 1:
                    break
        except FrameError as e:
            log.warning("%s; using synthetic pairs", e)
        if len(frames) == pairs + 1:
            return np.stack(frames), None, f"real: {Path(video).name}, {pairs} consecutive pairs"
    kinds = ("translation", "rotation", "patch")
    data = [synthetic_pair(h, w, kinds[i % 3], seed=i) for i in range(pairs)]
    frames = np.stack([f for d in data for f in d[:2]])
    return frames, np.stack([d[2] for d in data]), f"synthetic: {pairs} pairs (translation, rotation, patch)"


def benchmark_flow(size: tuple[int, int] = (340, 256), pairs: int = 8, device: str = "auto", batch: int | None = None,
                   threads: int | None = None, compile_step: bool | None = None, reference: bool = True,
                   video: str | Path | None = SAMPLE_VIDEO, repeat: int = 1) -> dict:
    """Frame pairs per second of our TV-L1 against OpenCV's TV-L1 (cv2.optflow defaults) on the
    same pairs (size is width x height), timed back to back in this process, alternating
    `repeat` times (medians reported, so outside load hits both alike). By default (threads
    None) OpenCV gets its own default, all cores, and ours ONE thread, as each process of the
    CLI's `--workers N` (N = cores) runs it: 1 thread per pair stream scales by adding workers,
    whereas 2 OpenMP threads on a shared 2-core machine lose ~5-10x whenever another process
    holds a core (each fused kernel waits at a barrier). `threads` gives both that count. Ours
    is torch.compile'd when a compiler works, in batches of `batch` pairs. Pairs are
    real consecutive frames of the sample video when it is there (see benchmark_pairs), else
    synthetic ones, whose end-point errors against the known flow are reported too. The
    compile / warm-up run is not timed (its seconds are reported as warmup_s)."""
    dev = select_device(device)
    ours_threads = threads or 1
    cv_threads = threads or cv2.getNumberOfCPUs()
    saved_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(ours_threads)
    cv2.setNumThreads(cv_threads)
    try:
        return _benchmark(size, pairs, dev, batch, compile_step, reference, video, repeat, ours_threads, cv_threads)
    finally:
        torch.set_num_threads(saved_threads[0])
        cv2.setNumThreads(saved_threads[1])


def _benchmark(size, pairs, dev, batch, compile_step, reference, video, repeat, ours_threads, cv_threads) -> dict:
    w, h = size
    frames, gt, source = benchmark_pairs(size, pairs, video)
    first = np.arange(pairs) if gt is None else np.arange(0, 2 * pairs, 2)  # pair k: frames first[k], first[k] + 1
    second = first + 1
    i0 = torch.from_numpy(frames[first]).float()[:, None].to(dev)
    i1 = torch.from_numpy(frames[second]).float()[:, None].to(dev)
    batch = batch or pairs
    if compile_step is None:
        compile_step = _compile_works(dev)

    def ours() -> np.ndarray:
        out = [tvl1_torch(i0[k:k + batch], i1[k:k + batch], compile_step=compile_step) for k in range(0, pairs, batch)]
        return torch.cat(out).permute(0, 2, 3, 1).cpu().numpy()

    algo = cv2.optflow.DualTVL1OpticalFlow_create()

    def opencv() -> np.ndarray:
        return np.stack([algo.calc(frames[a], frames[b], None) for a, b in zip(first, second)])

    def timed(fn):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        res = fn()
        return res, time.perf_counter() - t

    t = time.perf_counter()
    tvl1_torch(i0[:1], i1[:1], compile_step=compile_step)  # warm-up (and compile), not timed
    if dev.type != "cpu" and min(batch, pairs) > 1:  # batches are solved whole on CUDA
        tvl1_torch(i0[:2], i1[:2], compile_step=compile_step)
    warmup_s = time.perf_counter() - t
    ours_t, ref_t = [], []
    for _ in range(max(1, repeat)):
        flow, dt = timed(ours)
        ours_t.append(dt)
        if reference:
            ref, dt = timed(opencv)
            ref_t.append(dt)
    ours_s = float(np.median(ours_t))
    result = dict(source=source, size=f"{w}x{h}", pairs=pairs, batch=batch, device=str(dev), threads=ours_threads,
                  opencv_threads=cv_threads,
                  compiled=compile_step, warmup_s=round(warmup_s, 2), repeat=len(ours_t),
                  tvl1_pairs_per_s=pairs / ours_s,
                  tvl1_epe=end_point_error(flow, gt, 4) if gt is not None else None)
    if reference:
        ref_s = float(np.median(ref_t))
        result.update(opencv_tvl1_pairs_per_s=pairs / ref_s,
                      opencv_tvl1_epe=end_point_error(ref, gt, 4) if gt is not None else None,
                      speedup=ref_s / ours_s, mean_diff_to_opencv=end_point_error(flow, ref))
    return result


def _compile_works(device: torch.device) -> bool:
    """torch.compile needs a C++ compiler on CPU (Triton on CUDA); try one tiny step, else eager."""
    try:
        z = torch.zeros(2, 2, 16, 16, device=device)
        _get_step(True)(z, F.pad(z, (1, 0)), F.pad(z, (0, 0, 1, 0)), z, z[:, :1], z[:, :1], 0.045, 0.3, 0.8333)
        return True
    except Exception as e:  # no compiler, unsupported platform, ...
        log.warning("torch.compile unavailable (%s); using the eager TV-L1", e.__class__.__name__)
        return False


if __name__ == "__main__":
    run_main(main)
