"""The FVD's arithmetic, shared by fvd.py (sets on disk) and a training loop (`FVDMetric`):
preprocessing as the reference, mean and covariance, the Frechet distance, the kernel video
distance (KVD), and an accumulator with torchmetrics' update / compute / reset API.

    metric = FVDMetric("rgb_scratch", device="cuda")       # or a .pt path
    for real, fake in batches:                              # uint8 (N, T, H, W, 3) or float (N, T, 3, H, W) in [0, 1]
        metric.update(real, real=True)
        metric.update(fake, real=False)
    fvd = metric.compute()                                  # the same number as fvd.py on those videos
    metric.reset()

With torchmetrics installed, FVDMetric is a `torchmetrics.Metric` (its features are states
gathered across processes by torchmetrics' sync); without it, a plain class with the same
methods that gathers across an initialised torch.distributed group itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from errors import UserError
from weights import MODELS_DIR, load_model, resolve_weights

SIZE = 224
RESIZE_METHODS = ("tf1", "torch", "none")
MIN_FRAMES = 9      # fewer frames leave the reference's (2, 7, 7) VALID average pool nothing to pool
KVD_SUBSETS, KVD_SUBSET_SIZE = 100, 1000  # KID's defaults (StyleGAN2-ADA, torchmetrics)


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------

def _tf1_axis(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TF1 resize_bilinear's source taps on one axis: src = dst * in / out (no half-pixel
    offset), low = floor(src), high = min(low + 1, in - 1), weight = src - low."""
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out  # float32 division, as TF's kernel
    src = torch.arange(n_out, dtype=torch.float32) * scale
    low = src.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    return low.to(device), high.to(device), (src - low.float()).to(device)


def resize_tf1(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, C) float32 -> (T, h, w, C) as TF1 `tf.image.resize_bilinear` with its defaults:
    interpolate along x in the two source rows, then along y, in float32."""
    x0, x1, wx = _tf1_axis(frames.shape[2], size[1], frames.device)
    y0, y1, wy = _tf1_axis(frames.shape[1], size[0], frames.device)
    wx, wy = wx.view(1, 1, -1, 1), wy.view(1, -1, 1, 1)
    top, bottom = frames[:, y0], frames[:, y1]
    top = top[:, :, x0] + (top[:, :, x1] - top[:, :, x0]) * wx
    bottom = bottom[:, :, x0] + (bottom[:, :, x1] - bottom[:, :, x0]) * wx
    return top + (bottom - top) * wy


def preprocess(frames: np.ndarray | torch.Tensor, resize: str = "tf1", rescale: bool = True,
               size: int = SIZE) -> torch.Tensor:
    """([N,] T, H, W, 3) uint8 0..255 or float 0..1 -> ([N,] 3, T, size, size) float32 model
    input, on the input's device. Floats are brought to 0..255 first, so both kinds follow the
    reference's arithmetic."""
    x = frames if isinstance(frames, torch.Tensor) else torch.tensor(np.asarray(frames))  # memmaps are read-only
    is_float = x.is_floating_point()
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    x = x.float().reshape(-1, h, w, c)
    if is_float and rescale:
        x = x * 255.0
    if resize == "tf1":
        x = resize_tf1(x, (size, size))
    elif resize == "torch":  # what torchvision's resize does on tensors (antialiased bilinear)
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).permute(0, 2, 3, 1)
    elif resize != "none":
        raise ValueError(f"resize must be one of {', '.join(RESIZE_METHODS)}, got {resize!r}")
    if rescale:
        x = 2.0 * x / 255.0 - 1.0
    return x.reshape(*lead, *x.shape[1:]).movedim(-1, -4).contiguous()


# ----------------------------------------------------------------------------------------------
# Statistics and the distances
# ----------------------------------------------------------------------------------------------

def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N-1) in float64, as TF-GAN's frechet_classifier_distance."""
    f = np.asarray(features, dtype=np.float64)
    mu = f.mean(axis=0)
    centered = f - mu
    return mu, centered.T @ centered / (len(f) - 1)


def _sqrt_psd(mat: np.ndarray, eps: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and vectors of a symmetric PSD matrix's square root; as TF-GAN, values
    under eps are kept as they are (not square-rooted), negative rounding noise becomes 0."""
    w, v = np.linalg.eigh((mat + mat.T) / 2.0)
    w = np.maximum(w, 0.0)
    return np.where(w < eps, w, np.sqrt(w)), v


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(sqrt(S1) S2 sqrt(S1))), in float64."""
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    w, v = _sqrt_psd(sigma1)
    sqrt1 = (v * w) @ v.T
    inner, _ = _sqrt_psd(sqrt1 @ sigma2 @ sqrt1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * inner.sum())


def kernel_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = KVD_SUBSETS, subset_size: int = KVD_SUBSET_SIZE,
                    seed: int = 0) -> tuple[float, float]:
    """KVD (Unterthiner et al.'s kernel video distance): KID's unbiased MMD^2 estimate with the
    polynomial kernel k(x, y) = (x.y / d + 1)^3, on `subsets` random subsets of
    m = min(n1, n2, subset_size) rows of each set (drawn without replacement, seeded); the
    mean and the population standard deviation over the subsets, as torchmetrics' KID."""
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    m, d = min(len(f1), len(f2), subset_size), f1.shape[1]
    if m < 2:
        raise UserError(f"KVD needs subsets of at least 2 clips: sets of {len(f1)} and {len(f2)} clips, "
                        f"subset size {subset_size}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        same = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))  # i != j only: unbiased
        values.append(same - 2.0 * kxy.sum() / (m * m))
    return float(np.mean(values)), float(np.std(values))


# ----------------------------------------------------------------------------------------------
# In a training loop
# ----------------------------------------------------------------------------------------------

try:  # optional: with torchmetrics the states sync across processes through its machinery
    from torchmetrics import Metric as _Base
    HAVE_TORCHMETRICS = True
except ImportError:
    HAVE_TORCHMETRICS = False

    class _Base:  # the part of torchmetrics.Metric's API that FVDMetric uses
        def __init__(self) -> None:
            self._defaults: dict[str, list] = {}

        def add_state(self, name: str, default: list, dist_reduce_fx: str | None = None) -> None:
            self._defaults[name] = default
            setattr(self, name, list(default))

        def reset(self) -> None:
            for name, default in self._defaults.items():
                setattr(self, name, list(default))

        def __call__(self, *args, **kwargs):
            return self.update(*args, **kwargs)


def _gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every process's rows, concatenated in rank order (the plain class's sync)."""
    if HAVE_TORCHMETRICS or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows.cpu())
    return torch.cat(parts)


class FVDMetric(_Base):
    """FVD (and KVD) accumulated batch by batch: `update(videos, real)` runs the clips through
    the network and keeps 400 float64 per clip; `compute()` is fvd.py's distance on them (the
    same preprocessing, model and float64 arithmetic); `reset()` empties both sets. Videos are
    uint8 (N, T, H, W, 3) or float (N, T, 3, H, W) in [0, 1], on any device (moved to the
    metric's). Memory on the device is bounded by the batch given to update."""

    full_state_update = False  # torchmetrics: update needs no earlier state

    def __init__(self, weights: str | Path = "rgb_scratch", device: str | torch.device = "cpu",
                 precision: str = "fp32", resize: str = "tf1", models_dir: str | Path = MODELS_DIR,
                 kvd_subsets: int = KVD_SUBSETS, kvd_subset_size: int = KVD_SUBSET_SIZE):
        super().__init__()
        path = resolve_weights(weights, models_dir)
        model = load_model(path, mode="rgb")
        if model.num_classes != 400:
            raise UserError(f"{path}: {model.num_classes}-class weights; FVD needs the 400 Kinetics logits")
        self.net_device = torch.device(device)
        self._net = model.for_inference(precision, device=self.net_device)
        self.resize, self.kvd_subsets, self.kvd_subset_size = resize, kvd_subsets, kvd_subset_size
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """(N, 400) float64 on the CPU: the clip logits averaged over time, as fvd.py."""
        v = videos if isinstance(videos, torch.Tensor) else torch.as_tensor(np.asarray(videos))
        if v.ndim != 5:
            raise UserError(f"expected videos (N, T, H, W, 3) uint8 or (N, T, 3, H, W) float, "
                            f"got shape {tuple(v.shape)}")
        if v.is_floating_point():
            if v.shape[2] != 3:
                raise UserError(f"float videos are (N, T, 3, H, W) in [0, 1], got shape {tuple(v.shape)}")
            v = v.permute(0, 1, 3, 4, 2)
        elif v.dtype != torch.uint8 or v.shape[-1] != 3:
            raise UserError(f"uint8 videos are (N, T, H, W, 3), got {v.dtype} {tuple(v.shape)}")
        if v.shape[1] < MIN_FRAMES:
            raise UserError(f"{v.shape[1]} frames: the reference I3D needs at least {MIN_FRAMES}")
        x = preprocess(v.to(self.net_device), self.resize)
        return self._net(x).mean(dim=2).double().cpu()

    def update(self, videos: torch.Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(self.features(videos))

    def _rows(self, state: list | torch.Tensor) -> np.ndarray:
        if isinstance(state, list):  # torchmetrics' sync leaves one concatenated tensor instead
            state = torch.cat(state) if state else torch.zeros(0, 400, dtype=torch.float64)
        rows = state
        return _gather_rows(rows).numpy()

    def compute(self) -> float:
        real, fake = self._rows(self.real_features), self._rows(self.fake_features)
        if min(len(real), len(fake)) < 2:
            raise UserError(f"FVD needs at least 2 clips in each set, got {len(real)} real and {len(fake)} generated")
        return frechet_distance(*feature_stats(real), *feature_stats(fake))

    def compute_kvd(self, seed: int = 0) -> tuple[float, float]:
        """(mean, std) of KVD over subsets, as `fvd.py --kvd`."""
        real, fake = self._rows(self.real_features), self._rows(self.fake_features)
        return kernel_distance(real, fake, self.kvd_subsets, self.kvd_subset_size, seed)
