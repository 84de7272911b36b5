"""TV-L1 optical flow in PyTorch, and the flow format rules of the I3D flow stream.

The solver (tvl1_torch): Zach, Pock & Bischof's duality scheme with Wedel et al.'s
improvements, as OpenCV's DualTVL1OpticalFlow does it, with OpenCV's defaults: a
coarse-to-fine pyramid (scale step 0.8, 5 scales), 5 warps per scale (bicubic warping of the
second image and its centred gradient), 10 outer x 30 inner iterations per warp, a 5x5 median
filter of the flow before each outer iteration, and early stopping once the squared change of
the flow summed over the image drops under epsilon^2 * area (per pair). compute_flow runs it
(or OpenCV's methods) over a stack of frames.

Encoding (the original one, flow_to_uint8 / uint8_to_flow): flow clipped to +-20 px, stored
as round(255 * (f + 20) / 40) in 8-bit grayscale images.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.pool
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from errors import UserError
from runtime import select_device, stop_pool, stop_signals_blocked, worker_init

log = logging.getLogger(__name__)


METHODS = ("tvl1", "opencv-tvl1", "dis", "farneback")


BOUND = 20.0  # flow is clipped to +-BOUND pixels before the 8-bit encoding


# OpenCV's DualTVL1OpticalFlow defaults.
TVL1_DEFAULTS = dict(tau=0.25, lam=0.15, theta=0.3, nscales=5, warps=5, epsilon=0.01,
                     inner_iterations=30, outer_iterations=10, scale_step=0.8, median=5)


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


def start_worker(threads: int = 1) -> None:
    """The initializer of a TV-L1 worker process (start_pool): it ends with its job
    (runtime.worker_init) and solves on `threads` threads; at one thread the float sums, hence
    the stored flow, are the same in every worker."""
    worker_init()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def start_pool(processes: int, threads: int = 1, device: torch.device = torch.device("cpu"),
               compile_step: bool = True) -> tuple[multiprocessing.pool.Pool, bool]:
    """The one way to start TV-L1 worker processes (dense_flow.py's pool, the on-the-fly flow's
    video_sources.FlowWorkers): `processes` workers running start_worker(threads), started with
    stop signals blocked (runtime.stop_signals_blocked). On CPU where the OS forks, this process
    compiles the step first (compile_step) and then forks, so the workers inherit the compiled
    kernels instead of each spending ~10 s of CPU loading them; elsewhere (CUDA, no fork) they
    are spawned and each compiles for itself. Returns (pool, compile_step for the jobs: False
    when compiling failed here)."""
    context = "spawn"
    if device.type == "cpu" and "fork" in multiprocessing.get_all_start_methods():
        compile_step = compile_step and compile_available(device)
        context = "fork"
    pool = None
    try:
        with stop_signals_blocked():  # a Ctrl-C while the workers fork: no traceback in a worker
            pool = multiprocessing.get_context(context).Pool(processes, initializer=start_worker, initargs=(threads,))
    except BaseException:  # the stop that came while forking (raised as the block ends)
        if pool is not None:
            stop_pool(pool)
        raise
    return pool, compile_step


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


def end_point_error(flow: np.ndarray, gt: np.ndarray, border: int = 0) -> float:
    """Mean Euclidean distance between two (..., H, W, 2) flows, `border` pixels left out."""
    d = flow - gt
    e = np.sqrt((d ** 2).sum(-1))
    if border:
        e = e[..., border:-border, border:-border]
    return float(e.mean())


def _compile_works(device: torch.device) -> bool:
    """torch.compile needs a C++ compiler on CPU (Triton on CUDA); try one tiny step, else eager."""
    try:
        # the shapes of real use: one pair at a time on CPU, batches on CUDA; height != width
        # (equal sizes would be traced as one symbol, and the first real call recompile)
        # (and distinct tensors: aliasing is guarded on too)
        b = 1 if device.type == "cpu" else 2
        h, w = 48, 64  # over 4096 values per map: inductor specialises its sums on that size
        shapes = [(b, 2, h, w), (b, 2, h, w + 1), (b, 2, h + 1, w), (b, 2, h, w), (b, 1, h, w), (b, 1, h, w)]
        d = TVL1_DEFAULTS  # the exact constants of real use: dynamo specialises on float arguments
        args = [torch.zeros(s, device=device) for s in shapes]
        args[3] = torch.zeros(b, 3, h, w, device=device)[:, 1:].contiguous()  # as tvl1_torch's grad_i (strides)
        with torch.no_grad():  # as tvl1_torch runs (grad mode is guarded on too)
            _get_step(True)(*args,
                            float(d["lam"] * d["theta"]), d["theta"], float(d["tau"] / d["theta"]))
        mark_compiled()
        return True
    except Exception as e:  # no compiler, unsupported platform, ...
        log.warning("torch.compile unavailable (%s); using the eager TV-L1", e.__class__.__name__)
        return False


# ---------------------------------------------------------------------------------------------
# Flow frames on the fly (extract_features.py, predict.py), the compile notice, the GPU check
# ---------------------------------------------------------------------------------------------

JPEG_QUALITY = 95  # dense_flow.py's flow JPEGs (frame_io.write_image's default)


def encode_flow_jpeg(x_u8: np.ndarray, y_u8: np.ndarray, quality: int = JPEG_QUALITY) -> tuple[bytes, bytes]:
    """The JPEG files dense_flow.py writes for one flow frame (bytes of x, of y)."""
    out = []
    for plane in (x_u8, y_u8):
        ok, buf = cv2.imencode(".jpg", plane, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise OSError("could not encode a flow frame as JPEG")
        out.append(buf.tobytes())
    return out[0], out[1]


def encode_flow(flow: np.ndarray, jpeg: bool = True, files: bool = False) -> tuple[np.ndarray, tuple[bytes, bytes] | None]:
    """One (H, W, 2) float flow frame as dense_flow.py stores it and its readers get it back:
    (uint8 (H, W, 2) x/y: 8-bit, and with jpeg its JPEG files decoded again; the JPEG bytes of
    x and y when `files`, else None). The one home of the stored-flow rule for flow computed on
    the fly (iter_video_flow, video_sources.FlowWorkers)."""
    x, y = flow_to_uint8(flow)
    if not (jpeg or files):
        return np.stack([x, y], axis=-1), None
    bx, by = encode_flow_jpeg(x, y)
    if jpeg:
        x = cv2.imdecode(np.frombuffer(bx, np.uint8), cv2.IMREAD_GRAYSCALE)
        y = cv2.imdecode(np.frombuffer(by, np.uint8), cv2.IMREAD_GRAYSCALE)
    return np.stack([x, y], axis=-1), ((bx, by) if files else None)


def iter_video_flow(gray_frames: Iterable[np.ndarray], device: str | torch.device = "cpu", batch: int = 8,
                    compile_step: bool | None = None, jpeg: bool = True,
                    keep: Callable[[int, bytes, bytes], None] | None = None) -> Iterator[np.ndarray]:
    """TV-L1 flow frames of a stream of (H, W) uint8 grayscale frames, exactly as dense_flow.py
    stores them and its readers get them back: flow t -> t+1 clipped at +-20 px, 8-bit
    (flow_to_uint8), with jpeg=True passed through the same JPEG encoding (quality 95) and
    decoding, as (H, W, 2) uint8 (x, y). N frames give N flow frames (the last repeats flow
    N-1, as dense_flow.py writes it). Memory holds `batch` + 1 frames. keep(index, x_jpeg,
    y_jpeg), if given, gets each frame's JPEG bytes (1-based index), e.g. to write them."""
    dev = select_device(device) if isinstance(device, str) else device
    if compile_step is None:
        compile_step = compile_available(dev)
    prev, buf, n, last = None, [], 0, None

    def emit(flows: np.ndarray):
        nonlocal n, last
        for fl in flows:
            frame, files = encode_flow(fl, jpeg, keep is not None)
            if keep is not None:
                keep(n + 1, *files)
            n += 1
            last = (frame, fl)
            yield frame

    for frame in gray_frames:
        buf.append(frame)
        if len(buf) == batch:
            stack = np.stack(([prev] if prev is not None else []) + buf)
            prev, buf = buf[-1], []
            if len(stack) >= 2:
                yield from emit(compute_flow(stack, device=dev, batch=batch, compile_step=compile_step))
    stack = ([prev] if prev is not None else []) + buf
    if len(stack) >= 2:
        yield from emit(compute_flow(np.stack(stack), device=dev, batch=batch, compile_step=compile_step))
    if last is None:
        raise ValueError("flow needs at least two frames")
    yield from emit(last[1][None])  # frame N repeats flow N-1


_compile_ok: dict = {}


def compile_available(device: torch.device) -> bool:
    """_compile_works, once per process and device type."""
    if device.type not in _compile_ok:
        _compile_ok[device.type] = _compile_works(device)
    return _compile_ok[device.type]


def _compile_stamp() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / f"i3d-tvl1-compiled-{torch.__version__}"


def compile_cached() -> bool:
    """Whether this machine's inductor cache already holds the TV-L1 kernels (a stamp written
    after our first successful compile); False means the next compile takes 15-35 s."""
    try:
        return _compile_stamp().is_file()
    except Exception:  # an inductor without that module: say nothing
        return True


def mark_compiled() -> None:
    try:
        stamp = _compile_stamp()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    except Exception:  # best effort: only the first-run notice depends on it
        pass
