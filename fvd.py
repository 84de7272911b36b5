"""Frechet Video Distance (FVD) between two sets of videos, as the reference implementation.

    python fvd.py SET_A SET_B                       # prints the FVD
    python fvd.py SET_A SET_B --json                # {"fvd": ..., "protocol": {...}, ...}
    python fvd.py SET_A --save-stats a.npz          # statistics only, to compare later
    python fvd.py real/ --protocol fvd2048_16f --save-stats real.npz   # StyleGAN-V's sampling, once;
    python fvd.py real.npz gen/ --protocol fvd2048_16f --kvd            # then + KVD against any set
    python fvd.py real/ gen/ --num-clips 512 --frames 16 --stride 2 --seed 1
    python -m torch.distributed.run --nproc_per_node 2 fvd.py SET_A SET_B   # ranks split each set

A set is a folder of videos (and/or frame folders), a text file listing videos or frame
folders (one per line, relative to the file's folder), a .npy array (N, T, H, W, 3) of uint8
0..255 or float 0..1, or a statistics .npz written by --save-stats (mean, covariance, every
clip's features, how many clips and videos, the protocol as JSON).

Sampling: every frame of every video (default); --frames F the first F; --clips K K random
clips per video; --num-clips N N clips over the set (videos uniformly at random, reused only
when N exceeds them, a seeded random start per clip); --stride S takes every S-th frame.
--protocol names StyleGAN-V's presets. Two sets (or statistics files) are compared only when
their protocols agree (weights, frames, stride, preset, resize, rescale).

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
from tqdm import tqdm

from errors import FrameError, UserError
from runtime import dist_env, iter_started, rank_process, select_device, worker_init
from cli import (add_device, add_precision, add_verbosity, add_workers, code_version, keep_freed_memory, positive_int,
                 progress as report_progress, run_main, start)  # `progress` is the progress-bar flag here
from atomic_io import atomic_write, clean_stale_temps
from feature_store import recipe_difference
from frame_io import IMAGE_EXTS, is_video_file, iter_frames, list_frame_files, read_list
from fvd_metric import (KVD_SUBSET_SIZE, KVD_SUBSETS, MIN_FRAMES, RESIZE_METHODS, SIZE, feature_stats,
                        frechet_distance, kernel_distance, preprocess, resize_tf1)
from fast_i3d import check_precision
from weights import MODELS_DIR, file_sha256, load_model, resolve_weights

logger = logging.getLogger(__name__)

# Protocol entries that must agree between two sets (clip count, seed and precision may differ).
COMPARED = ("weights_sha256", "frames", "stride", "protocol", "resize", "size", "rescale", "features", "covariance")
LEGACY_DEFAULTS = {"stride": 1}  # files written before --stride existed took consecutive frames
# What shapes a statistics file: --save-stats over a file made with another of these is refused
# unless --overwrite (the weights' name, the code version and the set's size do not count).
STATS_RECIPE_KEYS = ("protocol", "weights_sha256", "frames_requested", "stride", "num_clips", "clips", "seed",
                     "resize", "size", "rescale", "features", "covariance", "precision")
# StyleGAN-V's metrics (src/metrics/metric_main.py): 2048 clips per set of F frames, S apart.
PROTOCOLS = {"fvd2048_16f": dict(num_clips=2048, frames=16, stride=1),
             "fvd2048_128f": dict(num_clips=2048, frames=128, stride=1),
             "fvd2048_128f_subsample8f": dict(num_clips=2048, frames=16, stride=8)}


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


def sample_plan(videos: int, num_clips: int, seed: int) -> dict[int, list[int]]:
    """--num-clips N over a set of V videos: clip k comes from video perm[k % V], perm a seeded
    permutation, so N <= V clips take N different videos (uniformly at random) and N > V reuse
    each video N // V or N // V + 1 times. -> {video index: [clip ids]}."""
    perm = np.random.default_rng([seed, 0]).permutation(videos)
    plan: dict[int, list[int]] = {}
    for k in range(num_clips):
        plan.setdefault(int(perm[k % videos]), []).append(k)
    return plan


class VideoSet(torch.utils.data.Dataset):
    """Items i of a set (those given in `indices`), each decoded, cut into clips and preprocessed
    in a DataLoader worker: -> (i, name, (K, 3, T, 224, 224) tensor or None, error or None).
    A clip is `frames` frames `stride` apart; with a `plan` (sample_plan) item i gives the clips
    plan[i], clip k from a start drawn with the seed (seed, 1, k), so the same on any rank."""

    def __init__(self, kind: str, source: Any, indices: Sequence[int], frames: int | None, clips: int | None, seed: int,
                 resize: str, rescale: bool, stride: int = 1, plan: dict[int, list[int]] | None = None):
        self.kind, self.source, self.indices = kind, source, list(indices)
        self.frames, self.clips, self.seed, self.resize, self.rescale = frames, clips, seed, resize, rescale
        self.stride, self.plan = stride, plan
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
        span = (self.frames - 1) * self.stride + 1
        if total < span:
            need = f"--frames {self.frames}"
            if self.stride > 1:
                need += f" --stride {self.stride} (a span of {span})"
            raise FrameError(f"{name}: {total} frames, fewer than {need}: not one clip fits")
        if self.plan is not None:
            return [int(np.random.default_rng([self.seed, 1, k]).integers(0, total - span + 1)) for k in self.plan[i]]
        if self.clips is None:  # --frames N alone: the first N frames
            return [0]
        rng = np.random.default_rng([self.seed, i])  # the same clips whatever the rank or worker
        return sorted(int(s) for s in rng.integers(0, total - span + 1, size=self.clips))

    def _clips_of(self, i: int) -> list[np.ndarray]:
        name = self.name(i)
        if self.kind == "npy":
            if self._arr is None:
                self._arr = _open_npy(self.source)
            video = self._arr[i]
            if self.frames is None:
                return [np.asarray(video)]
            return [np.asarray(video[s:s + (self.frames - 1) * self.stride + 1:self.stride])
                    for s in self._starts(i, len(video), name)]
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
            for t in range(s, s + (self.frames - 1) * self.stride + 1, self.stride):
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
    n: int                              # clips
    protocol: dict
    skipped: list[str] = field(default_factory=list)
    videos: int | None = None           # distinct videos the clips came from (None: a file from before it was kept)
    features: np.ndarray | None = None  # (n, 400) float64, for --kvd

    def save(self, path: str | Path) -> None:
        extra = {} if self.features is None else {"features": self.features}
        clean_stale_temps(Path(path).parent, Path(path).name)  # a copy half-written by a killed run
        with atomic_write(path, suffix=".tmp.npz") as tmp:
            np.savez(tmp, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), videos=np.int64(self.videos or -1),
                     protocol=json.dumps(self.protocol), **extra)

    @classmethod
    def load(cls, path: str | Path) -> "Stats":
        try:
            with np.load(path, allow_pickle=False) as z:
                videos = int(z["videos"]) if "videos" in z and int(z["videos"]) >= 0 else None
                feats = z["features"] if "features" in z else None
                return cls(z["mu"], z["sigma"], int(z["n"]), json.loads(str(z["protocol"])), [], videos, feats)
        except (KeyError, ValueError, OSError) as e:
            raise UserError(f"{path}: not statistics written by fvd.py --save-stats ({e.__class__.__name__})") from e

    def describe(self) -> str:
        videos = "an unrecorded number of" if self.videos is None else str(self.videos)
        return f"{self.n} clips from {videos} videos"


def _distributed() -> tuple[int, int, int]:
    rank, world, local = dist_env()  # torchrun's environment, checked
    if world > 1 and dist.is_available():
        rank_process()  # it ends with torchrun's agent (its parent), however that ended
    return (rank, world, local) if world > 1 and dist.is_available() else (0, 1, 0)


def _apply_preset(name: str, frames: int | None, num_clips: int | None, stride: int,
                  clips: int | None) -> tuple[int, int, int]:
    """--protocol NAME's (frames, num_clips, stride); an explicit flag that disagrees is an error."""
    if name not in PROTOCOLS:
        raise UserError(f"--protocol {name!r}: one of {', '.join(PROTOCOLS)}")
    preset = PROTOCOLS[name]
    given = {"frames": frames, "num_clips": num_clips, "stride": None if stride == 1 else stride}
    clash = [f"--{k.replace('_', '-')} {v}" for k, v in given.items() if v is not None and v != preset[k]]
    if clash or clips is not None:
        raise UserError(f"--protocol {name} fixes --num-clips {preset['num_clips']} --frames {preset['frames']} "
                        f"--stride {preset['stride']}; drop {', '.join(clash) or '--clips'}")
    return preset["frames"], preset["num_clips"], preset["stride"]


def _sampling_text(frames: int | None, clips: int | None, num_clips: int | None, stride: int) -> str:
    if frames is None:
        return "every frame of every video"
    clip = f"{frames} frames" + (f", every {stride}th" if stride > 1 else "")
    if num_clips is not None:
        return (f"{num_clips} clips of {clip} over the set: videos uniformly (reused only past one clip each), "
                "a random start each")
    if clips is not None:
        return f"{clips} clips of {clip} per video, random starts"
    return f"the first {clip} of each video"


class Extractor:
    """The model and the protocol; `features(set)` streams a set through it."""

    def __init__(self, weights: str | Path = "rgb_scratch", frames: int | None = None, clips: int | None = None,
                 seed: int = 0, resize: str = "tf1", rescale: bool = True, precision: str = "fp32",
                 device: str | torch.device = "auto", batch_size: int = 4, workers: int | None = None,
                 skip_bad: bool = False, progress: bool = True, models_dir: str | Path = MODELS_DIR,
                 num_clips: int | None = None, stride: int = 1, protocol_name: str | None = None):
        if protocol_name is not None:
            frames, num_clips, stride = _apply_preset(protocol_name, frames, num_clips, stride, clips)
        if resize not in RESIZE_METHODS:
            raise UserError(f"--resize-method must be one of {', '.join(RESIZE_METHODS)}")
        if frames is not None and frames < MIN_FRAMES:
            raise UserError(f"--frames {frames}: the reference I3D needs at least {MIN_FRAMES} frames")
        if (clips is not None and clips < 1) or batch_size < 1:
            raise UserError("--clips and --batch-size must be positive")
        if clips is not None and frames is None:
            raise UserError("--clips needs --frames (the clip length)")
        if stride < 1 or (num_clips is not None and num_clips < 2):
            raise UserError("--stride must be positive and --num-clips at least 2 (a covariance needs 2 clips)")
        if (stride > 1 or num_clips is not None) and frames is None:
            raise UserError("--stride and --num-clips need --frames (the clip length)")
        if num_clips is not None and clips is not None:
            raise UserError("--num-clips (clips over the set) and --clips (clips per video) exclude each other")
        self.rank, self.world, local = _distributed()
        if self.world > 1 and not dist.is_initialized():
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
        self.num_clips, self.stride = num_clips, stride
        self.batch_size, self.skip_bad, self.progress = batch_size, skip_bad, progress
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers
        self.protocol = {
            "reference": "google-research frechet_video_distance, TF-Hub i3d-kinetics-400",
            "protocol": protocol_name, "weights": path.stem, "weights_sha256": file_sha256(path)[:16],
            "frames": frames, "stride": stride, "num_clips": num_clips, "clips": clips,
            "sampling": _sampling_text(frames, clips, num_clips, stride), "seed": seed,
            "resize": {"tf1": "tf1-bilinear", "torch": "torch-bilinear-antialias", "none": "none"}[resize],
            "size": SIZE if resize != "none" else None,
            "rescale": "2*x/255-1" if rescale else "none", "features": "400 logits averaged over time",
            "covariance": "float64, N-1", "precision": precision,
            # bf16 moves FVD by about 1 % (README): such statistics are recorded as not the reference's
            "reference_precision": precision == "fp32", "code_version": code_version()}

    def _run(self, batch: list[torch.Tensor]) -> np.ndarray:
        x = torch.cat(batch)  # (B*K, 3, T, H, W)
        return self.model(x).mean(dim=2).double().cpu().numpy()  # (B*K, 400): time mean, no softmax

    def features(self, spec: str | Path | np.ndarray) -> tuple[np.ndarray, list[str], int, int]:
        """(features (clips, 400) float64 in item order, skipped items, frames per clip, videos used)."""
        kind, source = ("npy", spec) if isinstance(spec, np.ndarray) else list_set(spec)
        if kind == "stats":
            raise UserError(f"{spec}: statistics cannot be re-extracted")
        if kind == "npy" and isinstance(source, Path):
            count = len(_open_npy(source))
        else:
            count = len(source)
        if count * (self.clips or 1) < 2 or (self.num_clips is not None and count < 2):
            raise UserError(f"{spec}: {count} video(s); a set needs at least 2 videos (or clips) for a covariance")
        plan, items = None, range(count)
        if self.num_clips is not None:
            plan = sample_plan(count, self.num_clips, self.seed)
            items = sorted(plan)
            if self.num_clips > count and self.rank == 0:
                logger.warning("%s: %d clips from %d videos: each video gives %d or %d clips", spec if isinstance(
                    spec, (str, Path)) else "array", self.num_clips, count, self.num_clips // count,
                    -(-self.num_clips // count))
        if isinstance(source, np.ndarray):  # an in-memory array (the Python API): no workers needed
            tmp_kind, arr = "npy", source
        else:
            tmp_kind, arr = kind, None
        data = VideoSet(tmp_kind, source, items[self.rank::self.world], self.frames, self.clips, self.seed,
                        self.resize, self.rescale, self.stride, plan)
        if arr is not None:
            data._arr = arr
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=0 if arr is not None else self.workers,
                                             worker_init_fn=worker_init)  # workers end with this process
        rows: dict[int, np.ndarray] = {}
        lengths: dict[int, int] = {}
        skipped: list[str] = []
        fatal: str | None = None
        pending: list[tuple[int, torch.Tensor]] = []
        first: tuple[str, int] | None = None

        def flush() -> None:
            if pending:
                out = self._run([t for _, t in pending])
                for (i, t), f in zip(pending, np.split(out, np.cumsum([len(t) for _, t in pending])[:-1])):
                    rows[i] = f
                pending.clear()

        bar = tqdm(iter_started(loader), total=len(loader), unit="video", disable=not self.progress or self.rank != 0,
                   desc=f"I3D {Path(str(spec)).name if not isinstance(spec, np.ndarray) else 'array'}")  # workers fork
        what = f"videos of {Path(str(spec)).name} read" + (f" (rank 0's share of {self.world})" if self.world > 1 else "")
        report_progress(0, len(data), what, resumes=False)  # said if stopped (rank 0 alone under torchrun)
        for k, (i, name, tensor, err) in enumerate(bar, 1):
            report_progress(k, len(data), what, resumes=False)
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
                data: VideoSet) -> tuple[np.ndarray, list[str], int, int]:
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
        return feats, sorted(skipped), next(iter(lengths.values())), len(rows)

    def statistics(self, spec: str | Path | np.ndarray) -> Stats:
        if not isinstance(spec, np.ndarray) and Path(spec).suffix == ".npz":
            return Stats.load(spec)
        feats, skipped, t, videos = self.features(spec)
        mu, sigma = feature_stats(feats)
        protocol = dict(self.protocol, frames=t, frames_requested=self.frames)
        return Stats(mu, sigma, len(feats), protocol, skipped, videos, feats)


def check_comparable(a: Stats, b: Stats, name_a: str = "set A", name_b: str = "set B") -> None:
    pa, pb = dict(LEGACY_DEFAULTS, **a.protocol), dict(LEGACY_DEFAULTS, **b.protocol)
    diff = [k for k in COMPARED if pa.get(k) != pb.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {pa.get(k)!r} vs {pb.get(k)!r}" for k in diff)
        raise UserError(f"{name_a} and {name_b} were made with different protocols ({detail})")


def check_stats_target(path: Path, protocol: dict, overwrite: bool) -> None:
    """--save-stats PATH over a file made with another protocol refuses the run in one line naming the
    difference, unless `overwrite`; one of the same protocol is rewritten (the set may have changed)."""
    if overwrite or not path.exists():
        return
    try:
        stored = Stats.load(path).protocol
    except UserError as e:
        raise UserError(f"{e}; give --overwrite to replace it, or another file") from None

    def recipe(p: dict) -> dict:  # taking each video's first frames, the seed picks nothing
        return {k: p[k] for k in STATS_RECIPE_KEYS if k in p and (k != "seed" or p.get("clips") or p.get("num_clips"))}

    if diff := recipe_difference(recipe(stored), recipe(protocol), STATS_RECIPE_KEYS, LEGACY_DEFAULTS):
        raise UserError(f"{path} was made with another protocol ({diff}); give --overwrite to replace it, or "
                        f"another file")


def statistics(videos: str | Path | np.ndarray, **protocol) -> Stats:
    """Statistics of one set (a folder, list, .npy, array or .npz); keyword arguments as Extractor."""
    return Extractor(**protocol).statistics(videos)


def distances(a: Stats, b: Stats, kvd: bool = False, kvd_subsets: int = KVD_SUBSETS,
              kvd_subset_size: int = KVD_SUBSET_SIZE, seed: int = 0) -> dict:
    """{"fvd", "n_a", "n_b", "videos_a", "videos_b", "skipped", "protocol"[, "kvd"]} of two
    comparable statistics; with kvd, {"mean", "std", "subsets", "subset_size", "seed"}."""
    out = {"fvd": frechet_distance(a.mu, a.sigma, b.mu, b.sigma), "n_a": a.n, "n_b": b.n, "videos_a": a.videos,
           "videos_b": b.videos, "skipped": a.skipped + b.skipped, "protocol": a.protocol}
    if kvd:
        if a.features is None or b.features is None:
            raise UserError("--kvd needs each clip's features: statistics files written before fvd.py kept them "
                            "have none; recompute them")
        mean, std = kernel_distance(a.features, b.features, kvd_subsets, kvd_subset_size, seed)
        out["kvd"] = {"mean": mean, "std": std, "subsets": kvd_subsets,
                      "subset_size": min(kvd_subset_size, a.n, b.n), "seed": seed,
                      "kernel": "(x.y/d + 1)^3, unbiased MMD^2 (KID), std over subsets (ddof 0)"}
    return out


def compute(set_a: str | Path | np.ndarray | Stats, set_b: str | Path | np.ndarray | Stats, kvd: bool = False,
            **protocol) -> dict:
    """`distances` of two sets as `statistics` takes them, or Stats; keyword arguments as Extractor."""
    needs_model = not all(isinstance(s, Stats) or (not isinstance(s, np.ndarray) and Path(s).suffix == ".npz")
                          for s in (set_a, set_b))
    ext = Extractor(**protocol) if needs_model else None
    stats = [s if isinstance(s, Stats) else (ext.statistics(s) if ext else Stats.load(s)) for s in (set_a, set_b)]
    check_comparable(*stats)
    return distances(*stats, kvd=kvd, seed=protocol.get("seed", 0))


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="+", type=Path, help="SET_A [SET_B]: folder, .txt list, .npy or stats .npz")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                   help="StyleGAN-V's sampling: " + "; ".join(
                       f"{k}: --num-clips {v['num_clips']} --frames {v['frames']} --stride {v['stride']}"
                       for k, v in PROTOCOLS.items()))
    p.add_argument("--frames", type=int, default=None, help="clip length (default: every frame)")
    p.add_argument("--stride", type=positive_int, default=1, help="frames between a clip's frames (8: every 8th frame)")
    p.add_argument("--num-clips", type=positive_int, default=None,
                   help="N clips over the whole set: videos uniformly at random (reused only when N exceeds "
                        "them), a random valid start each")
    p.add_argument("--clips", type=int, default=None,
                   help="K random clips of --frames per video (default: the first --frames frames)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random clips and of --kvd's subsets")
    p.add_argument("--kvd", action="store_true", help="also the kernel video distance (KID's unbiased "
                   f"polynomial-kernel MMD) over --kvd-subsets subsets of up to --kvd-subset-size clips")
    p.add_argument("--kvd-subsets", type=positive_int, default=KVD_SUBSETS)
    p.add_argument("--kvd-subset-size", type=positive_int, default=KVD_SUBSET_SIZE,
                   help="clips per subset (at least 2; at most the smaller set's clips are used)")
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace --save-stats files made with another protocol (without it such a rerun is refused)")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for s in args.sets:  # every set checked (exists, is a set) before anything else: one line
        if s.suffix != ".npz":
            list_set(s)
    start(args)
    protocol = dict(weights=args.weights, frames=args.frames, clips=args.clips, seed=args.seed,
                    num_clips=args.num_clips, stride=args.stride, protocol_name=args.protocol,
                    resize="none" if args.no_resize else args.resize_method, rescale=not args.no_rescale,
                    precision=args.precision, device=args.device, batch_size=args.batch_size, workers=args.workers,
                    skip_bad=args.skip_bad, progress=not args.quiet)
    needs_model = any(s.suffix != ".npz" for s in args.sets)
    ext = Extractor(**protocol) if needs_model else None
    for s, f in zip(args.sets, args.save_stats or []):  # before any set is computed
        made = Stats.load(s).protocol if s.suffix == ".npz" else dict(ext.protocol, frames_requested=ext.frames)
        check_stats_target(f, made, args.overwrite)
    stats = [ext.statistics(s) if ext else Stats.load(s) for s in args.sets]
    rank = ext.rank if ext else 0
    if rank == 0:
        for s, f in zip(stats, args.save_stats or []):
            s.save(f)
            logger.info("wrote %s (%s)", f, s.describe())
    skipped = [x for s in stats for x in s.skipped]
    for x in skipped if rank == 0 else []:
        print(f"skipped: {x}", file=sys.stderr)
    if len(stats) == 2:
        check_comparable(stats[0], stats[1], str(args.sets[0]), str(args.sets[1]))
        out = distances(stats[0], stats[1], args.kvd, args.kvd_subsets, args.kvd_subset_size, args.seed)
        if rank == 0:
            if args.json:
                print(json.dumps(out, indent=2))
            else:
                print(f"FVD: {out['fvd']:.4f}")
                if args.kvd:
                    print(f"KVD: {out['kvd']['mean']:.4f} +- {out['kvd']['std']:.4f}")
    if ext is not None and ext.world > 1:
        dist.destroy_process_group()
    return 1 if skipped else 0


if __name__ == "__main__":
    keep_freed_memory()  # streamed chunks reuse freed memory (see cli.keep_freed_memory)
    run_main(main)
