"""Frechet Video Distance (FVD) between two sets of videos, as the reference implementation.

    python fvd.py SET_A SET_B                       # prints the FVD
    python fvd.py SET_A SET_B --json                # {"fvd": ..., "protocol": {...}, ...}
    python fvd.py SET_A --save-stats a.npz          # statistics only, to compare later
    python fvd.py a.npz SET_B --frames 16 --clips 4 --seed 0
    python -m torch.distributed.run --nproc_per_node 2 fvd.py SET_A SET_B   # ranks split each set

A set is a folder of videos (and/or frame folders), a text file listing videos or frame
folders (one per line, relative to the file's folder), a .npy array (N, T, H, W, 3) of uint8
0..255 or float 0..1, or a statistics .npz written by --save-stats.

The reference protocol (google-research `frechet_video_distance` with the TF-Hub module
i3d-kinetics-400, which holds DeepMind's rgb_scratch weights), the default here:
every frame (or --frames N clips); frames resized to 224x224 as TF1's `tf.image.resize_bilinear`
(align_corners=False, half_pixel_centers=False) on 0..255 floats; scaled by 2x/255 - 1;
rgb_scratch; the 400 logits averaged over time (before any softmax); mean and covariance in
float64 with N-1; the Frechet distance with the symmetric square root of TF-GAN's
`trace_sqrt_product` (eigen-decomposition in float64, stable for singular covariances).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from errors import FrameError, UserError
from runtime import select_device
from cli import add_device, add_precision, add_verbosity, add_workers, code_version, keep_freed_memory, run_main, start
from atomic_io import atomic_write
from frame_io import IMAGE_EXTS, is_video_file, iter_frames, list_frame_files, read_frames, read_list
from pytorch_i3d import check_precision
from weights import MODELS_DIR, load_model, resolve_weights

logger = logging.getLogger(__name__)

SIZE = 224
RESIZE_METHODS = ("tf1", "torch", "none")
MIN_FRAMES = 9      # fewer frames leave the reference's (2, 7, 7) VALID average pool nothing to pool
MIN_SIDE = 193      # ceil(side / 32) >= 7 for the same pool
# Protocol entries that must agree between two sets (clips, seed and precision may differ).
COMPARED = ("weights_sha256", "frames", "resize", "size", "rescale", "features", "covariance")


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------

def _tf1_axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TF1 resize_bilinear's source taps on one axis: src = dst * in / out (no half-pixel
    offset), low = floor(src), high = min(low + 1, in - 1), weight = src - low."""
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out  # float32 division, as TF's kernel
    src = torch.arange(n_out, dtype=torch.float32) * scale
    low = src.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    return low, high, src - low.float()


def resize_tf1(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, C) float32 -> (T, h, w, C) as TF1 `tf.image.resize_bilinear` with its defaults:
    interpolate along x in the two source rows, then along y, in float32."""
    x0, x1, wx = _tf1_axis(frames.shape[2], size[1])
    y0, y1, wy = _tf1_axis(frames.shape[1], size[0])
    wx, wy = wx.view(1, 1, -1, 1), wy.view(1, -1, 1, 1)
    top, bottom = frames[:, y0], frames[:, y1]
    top = top[:, :, x0] + (top[:, :, x1] - top[:, :, x0]) * wx
    bottom = bottom[:, :, x0] + (bottom[:, :, x1] - bottom[:, :, x0]) * wx
    return top + (bottom - top) * wy


def preprocess(frames: np.ndarray | torch.Tensor, resize: str = "tf1", rescale: bool = True,
               size: int = SIZE) -> torch.Tensor:
    """(T, H, W, 3) uint8 0..255 or float 0..1 -> (3, T, size, size) float32 model input.
    Floats are brought to 0..255 first, so both kinds follow the reference's arithmetic."""
    x = torch.tensor(np.asarray(frames))  # a copy: memmap slices are read-only
    is_float = x.is_floating_point()
    x = x.float()
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
    return x.permute(3, 0, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------
# Sets of videos
# ----------------------------------------------------------------------------------------------

def _is_frame_folder(p: Path) -> bool:
    return p.is_dir() and any(f.suffix.lower() in IMAGE_EXTS for f in p.iterdir())


def list_set(spec: str | Path) -> tuple[str, Any]:
    """('npy', path) | ('stats', path) | ('files', [video files and frame folders])."""
    p = Path(spec)
    if not p.exists():
        raise UserError(f"{p}: no such set (a folder, a .txt list, a .npy array or a .npz of statistics)")
    if p.suffix == ".npy":
        return "npy", p
    if p.suffix == ".npz":
        return "stats", p
    if p.is_dir():
        if _is_frame_folder(p) and not any(is_video_file(f) for f in p.iterdir()):
            raise UserError(f"{p}: a single frame folder is one video; a set is a folder of videos or frame folders")
        items = sorted(f for f in p.iterdir() if (f.is_file() and is_video_file(f)) or _is_frame_folder(f))
    else:
        try:
            items = read_list(p)  # relative to the list file; README.md is not a list
        except FrameError as e:
            raise UserError(str(e)) from None
    return "files", items


def _open_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable .npy array ({e})") from e
    if arr.ndim != 5 or arr.shape[-1] != 3:
        raise UserError(f"{path}: expected an array (N, T, H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise UserError(f"{path}: expected uint8 (0..255) or float (0..1) values, got {arr.dtype}")
    return arr


class VideoSet(torch.utils.data.Dataset):
    """Items i of a set (those given in `indices`), each decoded, cut into clips and preprocessed
    in a DataLoader worker: -> (i, name, (K, 3, T, 224, 224) tensor or None, error or None)."""

    def __init__(self, kind: str, source: Any, indices: Sequence[int], frames: int | None, clips: int | None, seed: int,
                 resize: str, rescale: bool):
        self.kind, self.source, self.indices = kind, source, list(indices)
        self.frames, self.clips, self.seed, self.resize, self.rescale = frames, clips, seed, resize, rescale
        self._arr: np.ndarray | None = None  # opened lazily in each worker (a memmap does not pickle cheaply)

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, i: int) -> str:
        if self.kind == "npy":
            return f"{'array' if isinstance(self.source, np.ndarray) else self.source}[{i}]"
        return str(self.source[i])

    def _starts(self, i: int, total: int, name: str) -> list[int]:
        if self.frames is None:
            return [0]
        if total < self.frames:
            raise FrameError(f"{name}: {total} frames, fewer than --frames {self.frames}")
        if self.clips is None:  # --frames N alone: the first N frames
            return [0]
        rng = np.random.default_rng([self.seed, i])  # the same clips whatever the rank or worker
        return sorted(int(s) for s in rng.integers(0, total - self.frames + 1, size=self.clips))

    def _clips_of(self, i: int) -> list[np.ndarray]:
        name = self.name(i)
        if self.kind == "npy":
            if self._arr is None:
                self._arr = _open_npy(self.source)
            video = self._arr[i]
            return [np.asarray(video[s:s + (self.frames or len(video))]) for s in self._starts(i, len(video), name)]
        path = Path(self.source[i])
        if self.frames is None:
            return [np.stack(list(iter_frames(path)))]
        if path.is_dir():
            files = list_frame_files(path)
            total = len(files)
        else:
            total = sum(1 for _ in iter_frames(path))  # container counts are unreliable: count decoded frames
        wanted: dict[int, list[int]] = {}
        starts = self._starts(i, total, name)
        for k, s in enumerate(starts):
            for t in range(s, s + self.frames):
                wanted.setdefault(t, []).append(k)
        out: list[list[np.ndarray]] = [[] for _ in starts]
        for t, frame in enumerate(iter_frames(path)):  # second pass keeps only the clips' frames
            for k in wanted.get(t, ()):
                out[k].append(frame)
        if any(len(c) != self.frames for c in out):
            raise FrameError(f"{name}: decoded fewer frames on the second pass")
        return [np.stack(c) for c in out]

    def _check_values(self, clip: np.ndarray, name: str) -> None:
        if clip.dtype == np.uint8:
            return
        if not np.isfinite(clip).all():
            raise UserError(f"{name}: NaN or infinite values")
        if self.rescale and (clip.min() < 0.0 or clip.max() > 1.0):
            raise UserError(f"{name}: float values outside 0..1 (min {clip.min():.4g}, max {clip.max():.4g})")

    def __getitem__(self, j: int) -> tuple[int, str, torch.Tensor | None, str | None]:
        i = self.indices[j]
        name = self.name(i)
        try:
            clips = self._clips_of(i)
            for c in clips:
                self._check_values(c, name)
            return i, name, torch.stack([preprocess(c, self.resize, self.rescale) for c in clips]), None
        except FrameError as e:
            return i, name, None, f"bad:{e}"
        except UserError as e:
            return i, name, None, f"fatal:{e}"


# ----------------------------------------------------------------------------------------------
# Statistics and the distance
# ----------------------------------------------------------------------------------------------

@dataclass
class Stats:
    mu: np.ndarray                      # (400,) float64
    sigma: np.ndarray                   # (400, 400) float64, N-1
    n: int
    protocol: dict
    skipped: list[str] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        with atomic_write(path, suffix=".tmp.npz") as tmp:
            np.savez(tmp, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), protocol=json.dumps(self.protocol))

    @classmethod
    def load(cls, path: str | Path) -> "Stats":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mu"], z["sigma"], int(z["n"]), json.loads(str(z["protocol"])))
        except (KeyError, ValueError, OSError) as e:
            raise UserError(f"{path}: not statistics written by fvd.py --save-stats ({e.__class__.__name__})") from e


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


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available():
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


class Extractor:
    """The model and the protocol; `features(set)` streams a set through it."""

    def __init__(self, weights: str | Path = "rgb_scratch", frames: int | None = None, clips: int | None = None,
                 seed: int = 0, resize: str = "tf1", rescale: bool = True, precision: str = "fp32",
                 device: str | torch.device = "auto", batch_size: int = 4, workers: int | None = None,
                 skip_bad: bool = False, progress: bool = True, models_dir: str | Path = MODELS_DIR):
        if resize not in RESIZE_METHODS:
            raise UserError(f"--resize-method must be one of {', '.join(RESIZE_METHODS)}")
        if frames is not None and frames < MIN_FRAMES:
            raise UserError(f"--frames {frames}: the reference I3D needs at least {MIN_FRAMES} frames")
        if (clips is not None and clips < 1) or batch_size < 1:
            raise UserError("--clips and --batch-size must be positive")
        if clips is not None and frames is None:
            raise UserError("--clips needs --frames (the clip length)")
        self.rank, self.world = _distributed()
        if self.world > 1 and not dist.is_initialized():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            dev = select_device(str(device))
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend)
            device = f"cuda:{local}" if dev.type == "cuda" else "cpu"
        self.device = device if isinstance(device, torch.device) else select_device(str(device))
        if self.device.type == "cuda" and self.world > 1:
            torch.cuda.set_device(self.device)
        if precision not in ("fp32", "bf16"):
            raise UserError(f"--precision must be fp32 or bf16, got {precision!r}")
        check_precision(precision, self.device)  # bf16 where the device cannot: one line, PrecisionError
        path = resolve_weights(weights, models_dir)
        model = load_model(path, mode="rgb")
        if model.num_classes != 400:
            raise UserError(f"{path}: {model.num_classes}-class weights; FVD needs the 400 Kinetics logits")
        self.model = model.for_inference(precision, device=self.device)
        self.frames, self.clips, self.seed, self.resize, self.rescale = frames, clips, seed, resize, rescale
        self.batch_size, self.skip_bad, self.progress = batch_size, skip_bad, progress
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers
        self.protocol = {
            "reference": "google-research frechet_video_distance, TF-Hub i3d-kinetics-400",
            "weights": path.stem, "weights_sha256": _file_sha256(path), "frames": frames, "clips": clips,
            "seed": seed, "resize": {"tf1": "tf1-bilinear", "torch": "torch-bilinear-antialias",
                                     "none": "none"}[resize], "size": SIZE if resize != "none" else None,
            "rescale": "2*x/255-1" if rescale else "none", "features": "400 logits averaged over time",
            "covariance": "float64, N-1", "precision": precision,
            # bf16 moves FVD by about 1 % (README): such statistics are recorded as not the reference's
            "reference_precision": precision == "fp32", "code_version": code_version()}

    def _run(self, batch: list[torch.Tensor]) -> np.ndarray:
        x = torch.cat(batch)  # (B*K, 3, T, H, W)
        return self.model(x).mean(dim=2).double().cpu().numpy()  # (B*K, 400): time mean, no softmax

    def features(self, spec: str | Path | np.ndarray) -> tuple[np.ndarray, list[str], int]:
        """(features (N*K, 400) float64 in item order, skipped items, frames per clip)."""
        kind, source = ("npy", spec) if isinstance(spec, np.ndarray) else list_set(spec)
        if kind == "stats":
            raise UserError(f"{spec}: statistics cannot be re-extracted")
        if kind == "npy" and isinstance(source, Path):
            count = len(_open_npy(source))
        else:
            count = len(source)
        if count * (self.clips or 1) < 2:
            raise UserError(f"{spec}: {count} video(s); a set needs at least 2 videos (or clips) for a covariance")
        if isinstance(source, np.ndarray):  # an in-memory array (the Python API): no workers needed
            tmp_kind, arr = "npy", source
        else:
            tmp_kind, arr = kind, None
        data = VideoSet(tmp_kind, source, range(self.rank, count, self.world), self.frames, self.clips, self.seed,
                        self.resize, self.rescale)
        if arr is not None:
            data._arr = arr
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=0 if arr is not None else self.workers)
        rows: dict[int, np.ndarray] = {}
        lengths: dict[int, int] = {}
        skipped: list[str] = []
        fatal: str | None = None
        pending: list[tuple[int, torch.Tensor]] = []
        first: tuple[str, int] | None = None

        def flush() -> None:
            if pending:
                out = self._run([t for _, t in pending])
                for (i, t), f in zip(pending, np.split(out, len(pending))):
                    rows[i] = f
                pending.clear()

        bar = tqdm(loader, desc=f"I3D {Path(str(spec)).name if not isinstance(spec, np.ndarray) else 'array'}",
                   unit="video", disable=not self.progress or self.rank != 0)
        for i, name, tensor, err in bar:
            if err is not None:
                if err.startswith("bad:") and self.skip_bad:
                    logger.warning("skipping %s", err[4:])
                    skipped.append(err[4:])
                    continue
                fatal = err.split(":", 1)[1]
                break
            t = tensor.shape[2]
            if self.frames is None and first is not None and t != first[1]:
                fatal = f"{name}: {t} frames, but {first[0]} has {first[1]}; videos of different lengths need --frames N"
                break
            first = first or (name, t)
            lengths[i] = t
            if pending and pending[0][1].shape[1:] != tensor.shape[1:]:
                flush()  # only videos of equal shape are batched together
            pending.append((i, tensor))
            if len(pending) >= self.batch_size:
                flush()
        if fatal is None:
            flush()
        return self._gather(rows, lengths, skipped, fatal, data)

    def _gather(self, rows: dict, lengths: dict, skipped: list, fatal: str | None,
                data: VideoSet) -> tuple[np.ndarray, list[str], int]:
        parts = [(rows, lengths, skipped, fatal)]
        if self.world > 1:  # every rank sends its rows (400 floats per clip) to every rank
            parts = [None] * self.world
            dist.all_gather_object(parts, (rows, lengths, skipped, fatal))
        rows, lengths, skipped = {}, {}, []
        for r, ln, sk, fa in parts:
            if fa is not None:
                raise UserError(fa)
            rows.update(r)
            lengths.update(ln)
            skipped += sk
        if self.frames is None and len(set(lengths.values())) > 1:
            raise UserError(f"{data.source}: videos of different lengths ({sorted(set(lengths.values()))} frames) "
                            f"need --frames N")
        if sum(len(r) for r in rows.values()) < 2:
            raise UserError(f"{data.source}: fewer than 2 readable videos left")
        feats = np.concatenate([rows[i] for i in sorted(rows)])
        return feats, sorted(skipped), next(iter(lengths.values()))

    def statistics(self, spec: str | Path | np.ndarray) -> Stats:
        if not isinstance(spec, np.ndarray) and Path(spec).suffix == ".npz":
            return Stats.load(spec)
        feats, skipped, t = self.features(spec)
        mu, sigma = feature_stats(feats)
        protocol = dict(self.protocol, frames=t, frames_requested=self.frames)
        return Stats(mu, sigma, len(feats), protocol, skipped)


def check_comparable(a: Stats, b: Stats, name_a: str = "set A", name_b: str = "set B") -> None:
    diff = [k for k in COMPARED if a.protocol.get(k) != b.protocol.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {a.protocol.get(k)!r} vs {b.protocol.get(k)!r}" for k in diff)
        raise UserError(f"{name_a} and {name_b} were made with different protocols ({detail})")


def statistics(videos: str | Path | np.ndarray, **protocol) -> Stats:
    """Statistics of one set (a folder, list, .npy, array or .npz); keyword arguments as Extractor."""
    return Extractor(**protocol).statistics(videos)


def compute(set_a: str | Path | np.ndarray | Stats, set_b: str | Path | np.ndarray | Stats, **protocol) -> dict:
    """{"fvd", "protocol", "n_a", "n_b", "skipped"}; sets as `statistics` takes them, or Stats."""
    needs_model = not all(isinstance(s, Stats) or (not isinstance(s, np.ndarray) and Path(s).suffix == ".npz")
                          for s in (set_a, set_b))
    ext = Extractor(**protocol) if needs_model else None
    stats = [s if isinstance(s, Stats) else (ext.statistics(s) if ext else Stats.load(s)) for s in (set_a, set_b)]
    check_comparable(*stats)
    value = frechet_distance(stats[0].mu, stats[0].sigma, stats[1].mu, stats[1].sigma)
    return {"fvd": value, "protocol": stats[0].protocol, "n_a": stats[0].n, "n_b": stats[1].n,
            "skipped": stats[0].skipped + stats[1].skipped}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="+", type=Path, help="SET_A [SET_B]: folder, .txt list, .npy or stats .npz")
    p.add_argument("--frames", type=int, default=None, help="clip length (default: every frame)")
    p.add_argument("--clips", type=int, default=None,
                   help="K random clips of --frames per video (default: the first --frames frames)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random clips (per video: seed, index)")
    p.add_argument("--resize-method", choices=RESIZE_METHODS[:2], default="tf1",
                   help="tf1: TF1 resize_bilinear (reference); torch: antialiased bilinear (torchvision)")
    p.add_argument("--no-resize", action="store_true", help="feed frames at their own size")
    p.add_argument("--no-rescale", action="store_true", help="feed values as they are (no 2x/255-1)")
    p.add_argument("--weights", default="rgb_scratch", help="a converted RGB I3D checkpoint (name or .pt path)")
    add_precision(p, "fp32", "the reference computes in fp32; bf16 is recorded as not the reference",
                  choices=("fp32", "bf16"))
    add_device(p)
    p.add_argument("--batch-size", type=int, default=4, help="videos of equal shape per forward pass")
    add_workers(p, None, "DataLoader decode workers (default min(4, CPUs))")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable videos (listed) instead of failing")
    p.add_argument("--save-stats", nargs="+", type=Path, metavar="FILE.npz", help="statistics of each set")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    add_verbosity(p)
    args = p.parse_args(argv)
    if len(args.sets) > 2:
        p.error("give one or two sets")
    if len(args.sets) == 1 and not args.save_stats:
        p.error("one set only makes sense with --save-stats")
    if args.save_stats and len(args.save_stats) > len(args.sets):
        p.error("--save-stats: at most one file per set")
    if args.save_stats and any(f.suffix != ".npz" for f in args.save_stats):
        p.error("--save-stats files must end in .npz")
    return args


def port_table(weights: str | Path = MODELS_DIR / "rgb_scratch.pt", clips: int = 3, frames: int = 16) -> list[tuple[str, float, float, float]]:
    """FVD of the same sets under each choice the common ports make differently: rows of
    (choice, zeros vs 255 at 15 frames, zeros vs 255 at 30 frames, bikes vs bigbuckbunny clips).
    The sample videos (`make samples`) give `clips` clips of `frames` frames each. The README's
    table of the ports comes from here."""
    ext = Extractor(weights=weights, workers=0, progress=False)
    samples = Path(__file__).resolve().parent / "data" / "samples"
    real = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4"):
        video = read_frames(samples / name)
        starts = np.linspace(0, len(video) - frames, clips).astype(int)
        real.append(np.stack([video[s:s + frames] for s in starts]))
    # one constant video per set (all videos of such a set are equal): its row twice, covariance 0
    const = {t: [np.zeros((1, t, 64, 64, 3), np.uint8), np.full((1, t, 64, 64, 3), 255, np.uint8)] for t in (15, 30)}

    def half_pixel(v: np.ndarray) -> torch.Tensor:  # F.interpolate(align_corners=False): StyleGAN-V, VideoGPT
        x = torch.from_numpy(v).float().permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        return (2 * x / 255 - 1).permute(1, 0, 2, 3)

    variants = {
        "reference: TF1 resize, [-1, 1], rgb_scratch, N-1": (lambda v: preprocess(v), 1),
        "input range [-0.5, 0.5]": (lambda v: preprocess(v) / 2, 1),
        "resize: half-pixel bilinear (F.interpolate)": (half_pixel, 1),
        "resize: antialiased bilinear (torchvision)": (lambda v: preprocess(v, resize="torch"), 1),
        "covariance with N (np.cov bias=True)": (lambda v: preprocess(v), 0),
    }
    rows, cache = [], {}
    for name, (prep, ddof) in variants.items():
        values = []
        for k, (a, b) in enumerate((const[15], const[30], real)):
            key = (id(prep) if ddof else id(variants[next(iter(variants))][0]), k)  # N vs N-1: same features
            if key not in cache:
                cache[key] = [np.concatenate([ext._run([prep(v)[None]]) for v in s]) for s in (a, b)]
            fa, fb = (np.repeat(f, 2, axis=0) if len(f) == 1 else f for f in cache[key])
            stats = [(f.mean(0), np.cov(f, rowvar=False, ddof=ddof)) for f in (fa, fb)]
            values.append(frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1]))
        rows.append((name, *values))
        logger.info("%s: %s", name, ", ".join(f"{v:.3f}" for v in values))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for s in args.sets:  # every set checked (exists, is a set) before anything else: one line
        if s.suffix != ".npz":
            list_set(s)
    start(args)
    protocol = dict(weights=args.weights, frames=args.frames, clips=args.clips, seed=args.seed,
                    resize="none" if args.no_resize else args.resize_method, rescale=not args.no_rescale,
                    precision=args.precision, device=args.device, batch_size=args.batch_size, workers=args.workers,
                    skip_bad=args.skip_bad, progress=not args.quiet)
    needs_model = any(s.suffix != ".npz" for s in args.sets)
    ext = Extractor(**protocol) if needs_model else None
    stats = [ext.statistics(s) if ext else Stats.load(s) for s in args.sets]
    rank = ext.rank if ext else 0
    if rank == 0:
        for s, f in zip(stats, args.save_stats or []):
            s.save(f)
            logger.info("wrote %s (N=%d)", f, s.n)
    skipped = [x for s in stats for x in s.skipped]
    for x in skipped if rank == 0 else []:
        print(f"skipped: {x}", file=sys.stderr)
    if len(stats) == 2:
        check_comparable(stats[0], stats[1], str(args.sets[0]), str(args.sets[1]))
        value = frechet_distance(stats[0].mu, stats[0].sigma, stats[1].mu, stats[1].sigma)
        if rank == 0:
            if args.json:
                print(json.dumps({"fvd": value, "n_a": stats[0].n, "n_b": stats[1].n, "skipped": skipped,
                                  "protocol": stats[0].protocol}, indent=2))
            else:
                print(f"FVD: {value:.4f}")
    if ext is not None and ext.world > 1:
        dist.destroy_process_group()
    return 1 if skipped else 0


if __name__ == "__main__":
    keep_freed_memory()  # streamed chunks reuse freed memory (see cli.keep_freed_memory)
    run_main(main)
