"""Speed of every path of the toolkit, each against its plain baseline measured in the same run.

    python benchmark.py [--only model,flow] [--repeat 5 --frames 64 --size 224] [--json]
    python benchmark.py --only soak --soak-videos 20    # resident memory over long jobs (only on request)

Sections: model, loading, train, extract, flow, fvd, twostream (default), soak. In-process paths: the median
of --repeat calls after a warm-up, round-robin so that outside load hits them alike; whole processes: each
command once, as /usr/bin/time. Weights: models/rgb_scratch.pt when present, else calibrated random ones.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import frame_io
from fvd_metric import FVDMetric, preprocess
import videotransforms
from charades_dataset import NUM_CLASSES, VideoItem, load_clip
from video_datasets import LabelledVideos, Sample, VideoClips
from errors import FrameError, UserError
from runtime import select_device
from cli import add_device, add_verbosity, run_main, start
from fast_i3d import PrecisionError, check_precision, cpu_has_native_bf16, resolve_precision
from pytorch_i3d import InceptionI3d
from synthetic_charades import calibrated_random_i3d, make_jpeg_video, make_video_file, synthetic_pair
from train_state import autocast_for, charades_losses
from tvl1 import compile_available, end_point_error, tvl1_torch
from weights import MODELS_DIR, load_model

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
REAL_WEIGHTS = MODELS_DIR / "rgb_scratch.pt"
SAMPLE_VIDEO = HERE / "data" / "samples" / "bikes.mp4"  # make samples
SECTIONS = ("model", "loading", "train", "extract", "flow", "fvd", "twostream")  # the default; "soak" only when asked


def time_round_robin(paths: dict[str, Callable[[], object]], repeat: int,
                     device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Median seconds per call of each path: a warm-up call each, then `repeat` rounds of one call per path."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for k in range(repeat + 1):
        for name, fn in paths.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name] += [time.perf_counter() - start] * (k > 0)  # round 0 is the warm-up
    return {name: statistics.median(ts) for name, ts in times.items()}


def ratio(row: dict) -> float:
    """How many times better than the baseline: lower is better for times, higher for rates."""
    return row["value"] / row["baseline_value"] if row["unit"].endswith("/s") else row["baseline_value"] / row["value"]


def row(section: str, name: str, unit: str, value: float, base: str | None, base_value: float | None,
        note: str = "", **extra) -> dict:
    return {"section": section, "row": name, "unit": unit, "value": value, "baseline_row": base,
            "baseline_value": base_value, "note": note, **extra}


def _weights_file(args, folder: Path, num_classes: int, in_channels: int = 3) -> Path:
    """models/rgb_scratch.pt for RGB when present (and not --random-weights), else calibrated random weights."""
    if in_channels == 3 and REAL_WEIGHTS.is_file() and not getattr(args, "random_weights", False):
        return REAL_WEIGHTS
    path = folder / f"random{in_channels}.pt"
    torch.save(calibrated_random_i3d(num_classes=num_classes, in_channels=in_channels).state_dict(), path)
    return path


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError:  # the process exited meanwhile
        return ""


def run_process(cmd: list, progress: Callable[[list[int]], float] | None = None) -> dict:
    """Run cmd to its end: wall s, user+sys CPU s and peak RSS GiB of it and its reaped children (os.wait4,
    as /usr/bin/time); with progress(pids) -> share of the work done, samples [(share, tree RSS bytes)]."""
    samples: list[tuple[float, int]] = []
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=err)
        while True:  # os.wait4 reaps it (never proc.poll(), which would take the rusage away)
            pid, status, usage = os.wait4(proc.pid, 0 if progress is None else os.WNOHANG)
            if pid:
                break
            pids, todo = [], [proc.pid]  # the process tree, from /proc/PID/task/TID/children
            while todo:
                pids.append(todo.pop())
                todo += [int(c) for f in Path(f"/proc/{pids[-1]}/task").glob("*/children") for c in _read(f).split()]
            pages = sum(int((_read(f"/proc/{p}/statm").split() or [0, 0])[1]) for p in pids)  # shared: once a process
            samples.append((progress(pids), pages * os.sysconf("SC_PAGE_SIZE")))
            time.sleep(0.25)
        wall, code = time.perf_counter() - t0, os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... failed ({code}): "
                               f"{err.read().decode(errors='replace')[-1500:]}")
    return dict(wall=wall, cpu=usage.ru_utime + usage.ru_stime, rss_gib=usage.ru_maxrss / 2**20, samples=samples)


def process_rows(section: str, paths: dict[str, list[list]]) -> list[dict]:
    """A row per path (commands run in turn): wall seconds against the first path's, CPU and peak RSS in the note."""
    runs = {name: [run_process(c) for c in commands] for name, commands in paths.items()}
    wall = {name: sum(r["wall"] for r in rs) for name, rs in runs.items()}
    base = next(iter(paths))
    return [row(section, name, "s", wall[name], base, wall[base], f"CPU {sum(r['cpu'] for r in rs):.1f} s, "
                f"peak RSS {max(r['rss_gib'] for r in rs):.2f} GiB") for name, rs in runs.items()]


def py(script: str, *args) -> list[str]:  # a command line running one of our scripts with this Python
    return [sys.executable, str(HERE / script), *map(str, args)]


def benchmark_model(args: argparse.Namespace) -> list[dict]:
    """Eager InceptionI3d (fp32) against for_inference() in fp32, bf16 (and fp16 on CUDA), for
    forward (per-time logits) and extract_features; seconds per (1, 3, T, S, S) clip."""
    device = select_device(args.device)
    real = REAL_WEIGHTS.is_file() and not getattr(args, "random_weights", False)
    torch.manual_seed(0)
    model = (load_model(REAL_WEIGHTS, mode="rgb") if real else InceptionI3d(num_classes=400)).to(device).eval()
    source = REAL_WEIGHTS.name if real else "random init"
    gen = torch.Generator().manual_seed(0)
    clip = (torch.rand((1, 3, args.frames, args.size, args.size), generator=gen) * 2 - 1).to(device)
    precisions = []
    for p in ("fp32", "bf16", "fp16")[:3 if device.type == "cuda" else 2]:  # the rows this device computes
        try:
            precisions += [p] if check_precision(p, device) is None else []
        except PrecisionError as e:
            log.info("model: no %s rows: %s", p, e)
    fast = {p: model.for_inference(p, device=device) for p in precisions}
    log.info("model: clip %s on %s, %d threads, weights: %s, auto precision = %s", tuple(clip.shape), device,
             torch.get_num_threads(), source, resolve_precision("auto", device))
    rows = []
    for method in ("forward", "extract_features"):
        base = f"{method} eager fp32"
        paths = {base: lambda: torch.inference_mode()(getattr(model, method))(clip)}
        paths.update({f"{method} for_inference {p}": (lambda f=fast[p], m=method: getattr(f, m)(clip))
                      for p in precisions})
        medians = time_round_robin(paths, args.repeat, device)
        with torch.inference_mode():
            ref = getattr(model, method)(clip).float()
        for name, seconds in medians.items():
            note = f"{args.frames / seconds:.1f} frames/s"
            if name != base:
                out = getattr(fast[name.rsplit(' ', 1)[1]], method)(clip).float()
                cos = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
                note += f", cosine {cos:.6f}, max rel diff {((out - ref).abs().max() / ref.abs().max()).item():.1e}"
                if method == "forward":
                    same = torch.equal(out.mean(2).argmax(1), ref.mean(2).argmax(1))
                    note += f", top-1 {'same' if same else 'DIFFERS'}"
            rows.append(row("model", name, "s", seconds, base, medians[base], note))
    return rows


def _original_style_load(root: Path, vid: str, start: int, num: int) -> np.ndarray:
    """A plain loop like the original load_rgb_frames: cv2 per frame, float64 scaling."""
    frames = []
    for i in range(start, start + num):
        img = cv2.imread(str(frame_io.charades_frame_path(root, vid, i)))[:, :, [2, 1, 0]]
        w, h, c = img.shape
        if w < 226 or h < 226:
            sc = 1 + (226. - min(w, h)) / min(w, h)
            img = cv2.resize(img, dsize=(0, 0), fx=sc, fy=sc)
        frames.append((img / 255.) * 2 - 1)
    return np.asarray(frames, dtype=np.float32)


def benchmark_loading(args=None) -> list[dict]:
    """Clips/s: JPEG frames, ours against the original-style loop (checked to give the same
    pixels); then 8 training clips read by seeking in an .mp4 against the same clips from JPEGs."""
    frames_n, repeat = int(getattr(args, "frames", 64) or 64), int(getattr(args, "repeat", 3) or 3)
    clip = 16 if select_device(getattr(args, "device", "auto") or "auto").type == "cpu" else frames_n
    base, ours, jpeg = ("original-style loop (cv2, float64)", "ours (uint8, float32 at the end)",
                        f"training clips, JPEG folder ({clip} frames)")
    with tempfile.TemporaryDirectory() as tmp:
        root, rows = Path(tmp), []
        make_jpeg_video(root, "v", max(frames_n, 250))  # 10 s at 25 fps: clips start anywhere
        item = VideoItem("v", frames_n, np.zeros((NUM_CLASSES, frames_n), np.float32))
        paths = {base: lambda: _original_style_load(root, "v", 1, frames_n),
                 ours: lambda: frame_io.to_model_range(load_clip(root, item, 0, frames_n, "rgb", None)[0])}
        assert np.abs(paths[base]() - paths[ours]()).max() < 1e-5
        writer = cv2.VideoWriter(str(root / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (340, 256))
        for f in frame_io.list_frame_files(root / "v"):
            writer.write(cv2.imread(str(f)))
        writer.release()
        flip = videotransforms.Compose([videotransforms.RandomCrop(224), videotransforms.horizontal_flip("rgb")])
        clips = {}
        for name, source in ((jpeg, "v"), (jpeg.replace("JPEG folder", ".mp4 seek"), "v.mp4")):
            data = VideoClips(LabelledVideos("list", [Sample("v", str(root / source), (0,))] * 8, ["a"]), "rgb", flip,
                              clip_frames=clip)
            clips[name] = lambda data=data: [data[i] for i in range(8)]
        for paths, first, per_call in ((paths, base, 1), (clips, jpeg, 8)):
            times = time_round_robin(paths, repeat)
            rows += [row("loading", k, "clips/s", per_call / t, first, per_call / times[first])
                     for k, t in times.items()]
    return rows


def benchmark_train_step(args=None) -> list[dict]:
    """Clips/s of a training step on a random (B, 3, T, S, S) clip (T <= 16 on CPU): fp32 eager against
    channels_last_3d, bf16 autocast (CPU with native bf16) or fp16 AMP + cudnn.benchmark (CUDA). The
    same dropout seed in every step, so the first-step losses (notes) compare the precisions."""
    device = select_device(getattr(args, "device", "auto") or "auto")
    cuda = device.type == "cuda"
    frames = int(getattr(args, "train_frames", None) or getattr(args, "frames", 64) or 64)
    frames, size = (frames if cuda else min(frames, 16)), int(getattr(args, "size", 224) or 224)
    batch, repeat = int(getattr(args, "train_batch", None) or (8 if cuda else 1)), int(getattr(args, "repeat", 3) or 3)
    gen = torch.Generator().manual_seed(0)
    clip = (torch.rand((batch, 3, frames, size, size), generator=gen) * 2 - 1).to(device)
    labels = (torch.rand((batch, 157, frames), generator=gen) < 0.05).float().to(device)

    def make(channels_last: bool, amp: bool, cudnn_benchmark: bool) -> tuple[Callable[[], None], list[float]]:
        torch.manual_seed(0)
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        model = InceptionI3d(num_classes=157).to(device).train().to(memory_format=fmt)
        x, opt = clip.contiguous(memory_format=fmt), torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler, losses = torch.amp.GradScaler("cuda", enabled=amp and cuda), []

        def run() -> None:
            torch.backends.cudnn.benchmark = cudnn_benchmark
            torch.manual_seed(1)  # the same dropout masks for every path
            with autocast_for(device, amp):
                out = model(x)
            loc, cls = charades_losses(out, labels)
            loss = 0.5 * loc + 0.5 * cls
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        return run, losses

    cb, low, base = " cudnn.benchmark" * cuda, "fp16 AMP" if cuda else "bf16 autocast", "fp32 eager (plain)"
    specs = [(base, False, False, False)] + [("fp32 cudnn.benchmark", False, False, True)] * cuda
    specs += [("fp32 channels_last_3d" + cb, True, False, cuda)]
    if cuda or cpu_has_native_bf16():
        specs += [(low + cb, False, True, cuda), (low + " channels_last_3d" + cb, True, True, cuda)]
    paths = {name: make(*spec) for name, *spec in specs}
    # time_round_robin's warm-up call gives each path's first-step loss, compared below
    medians = time_round_robin({name: fn for name, (fn, _) in paths.items()}, repeat, device)
    first = {name: losses[0] for name, (_, losses) in paths.items()}
    torch.backends.cudnn.benchmark = False
    shape = f"({batch}, 3, {frames}, {size}, {size})"
    return [row("train", f"{name} {shape}", "clips/s", batch / m, f"{base} {shape}", batch / medians[base],
                f"first-step loss {first[name]:.4f} (fp32 {first[base]:.4f})") for name, m in medians.items()]


def original_extract(root: str, vid: str, weights: str, out: str) -> None:
    """The original pytorch-i3d extract_features.py on one video, as a process of its own: its loader
    (cv2.imread, BGR->RGB, upscale only under 226, float64 (img/255)*2-1), CenterCrop(224), eager
    InceptionI3d(400) (+ replace_logits for Charades weights), extract_features on the whole video."""
    frames = _original_style_load(Path(root), vid, 1, frame_io.count_charades_frames(root, vid))
    x = torch.from_numpy(videotransforms.CenterCrop(224)(frames).transpose([3, 0, 1, 2]))
    state = torch.load(weights, weights_only=True)
    model = InceptionI3d(400, in_channels=3)
    if state["logits.conv3d.weight"].shape[0] != 400:  # Charades weights, as the original script
        model.replace_logits(state["logits.conv3d.weight"].shape[0])
    model.load_state_dict(state)
    with torch.no_grad():
        features = model.eval().extract_features(x[None])
    np.save(out, features.squeeze(0).permute(1, 2, 3, 0).numpy())


def max_diff(pairs: list[tuple[Path, Path]]) -> float:
    """Largest |a - b| over pairs of .npy files (inf when shapes differ)."""
    arrays = [(np.load(a), np.load(b)) for a, b in pairs]
    return float(max(np.abs(a - b).max() if a.shape == b.shape else np.inf for a, b in arrays))


def benchmark_extraction(args: argparse.Namespace | None = None) -> list[dict]:
    """Whole processes on a Charades-layout JPEG video (extract_height x extract_width, 256x340):
    original_extract against `extract_features.py -mode rgb -root` at default flags on extract_frames
    (480; features equal to 1e-4), then ours' peak RSS at extract_memory_frames (250, 2000)."""
    n, mem_frames = getattr(args, "extract_frames", 480), getattr(args, "extract_memory_frames", (250, 2000))
    h, w = getattr(args, "extract_height", 256), getattr(args, "extract_width", 340)
    with tempfile.TemporaryDirectory() as name:
        tmp, weights = Path(name), _weights_file(args, Path(name), 157)

        def ours(m: int) -> list:
            make_jpeg_video(tmp / f"v{m}", "VID", m, h, w)
            return py("extract_features.py", "-mode", "rgb", "-load_model", weights, "-root", tmp / f"v{m}",
                      "-save_dir", tmp / f"out{m}", "-q")

        base, ours_n = f"original pytorch-i3d path, {n} frames", ours(n)  # ours(n) makes the video
        original = [sys.executable, "-c", "import sys, benchmark; benchmark.original_extract(*sys.argv[1:])",
                    tmp / f"v{n}", "VID", weights, tmp / "original.npy"]
        rows = process_rows("extract", {base: [original], f"extract_features.py defaults, {n} frames": [ours_n]})
        diff = max_diff([(tmp / "original.npy", tmp / f"out{n}" / "VID.npy")])
        if not diff <= 1e-4 * max(1.0, float(np.abs(np.load(tmp / "original.npy")).max())):
            raise AssertionError(f"extract_features.py differs from the original path by {diff}")
        for r in rows:
            r["note"] += f", whole process, {h}x{w} JPEG, max abs diff {diff:.1e}"
        rss = {m: run_process(ours(m))["rss_gib"] for m in mem_frames}
    first = f"peak RSS, extract_features.py defaults, {mem_frames[0]} frames"
    return rows + [row("extract", f"peak RSS, extract_features.py defaults, {m} frames", "GiB", rss[m], first,
                       rss[mem_frames[0]], f"{h}x{w} JPEG, os.wait4 ru_maxrss") for m in mem_frames]


def benchmark_dense_flow(args: argparse.Namespace) -> list[dict]:
    """TV-L1 on real (`make samples`) and synthetic pairs, then whole processes on one 120-frame video."""
    rows = [r for video in (SAMPLE_VIDEO, None) if video is None or video.is_file()
            for r in benchmark_flow(video, args.device, max(1, min(args.repeat, 3)))]
    return rows + (flow_whole_process_rows() if SAMPLE_VIDEO.is_file() else [])


_OPENCV_PROCESS = ("import sys, cv2\ncap, algo = cv2.VideoCapture(sys.argv[1]), cv2.optflow.DualTVL1OpticalFlow_create()\n"
                   "prev = None\nwhile True:\n    ok, f = cap.read()\n    if not ok:\n        break\n"
                   "    g = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)\n    if prev is not None:\n        algo.calc(prev, g, None)\n"
                   "    prev = g\n")


def sample_clip(path: Path, frames: int, size: tuple[int, int] = (340, 256)) -> Path:
    """An mp4 of `frames` frames of the sample video (`make samples`), smaller side resized to h and
    center cropped to size (w, h); a synthetic video (make_video_file) without the sample."""
    w, h = size
    if not SAMPLE_VIDEO.is_file():
        return make_video_file(path, frames, h, w)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
    for f in itertools.islice(frame_io.iter_frames(SAMPLE_VIDEO, resize=h), frames):
        left = (f.shape[1] - w) // 2
        writer.write(cv2.cvtColor(np.ascontiguousarray(f[:h, left:left + w]), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def flow_whole_process_rows(frames: int = 120, size: tuple[int, int] = (340, 256)) -> list[dict]:
    """`dense_flow.py` at default flags as a whole process (start-up, compile cache, all cores) on
    ONE video, against a process running OpenCV's TV-L1 (its default threads) over the same pairs."""
    with tempfile.TemporaryDirectory() as tmp:
        video = sample_clip(Path(tmp) / "clip.mp4", frames, size)
        what = f"whole process, one {frames}-frame {size[0]}x{size[1]} video"
        rows = process_rows("flow", {f"OpenCV TV-L1 ({cv2.getNumberOfCPUs()} threads), {what}":
                                     [[sys.executable, "-c", _OPENCV_PROCESS, video]],
                                     f"dense_flow.py (default flags), {what}": [py("dense_flow.py", video, "-o", tmp)]})
    rows[0]["note"] += f", {frames - 1} pairs, start-up included"
    rows[1]["note"] += f", --workers {os.cpu_count()} (one per core) split the video's pairs"
    return rows


def benchmark_pairs(size: tuple[int, int] = (340, 256), pairs: int = 8,
                    video: str | Path | None = SAMPLE_VIDEO) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(frames uint8 gray, gt, description): pairs + 1 consecutive frames of `video` resized to size (w, h)
    (real content: early stopping runs far more iterations on it), else synthetic pairs and their flow."""
    (w, h), frames = size, []
    if video is not None and Path(video).is_file():
        try:
            frames = [cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
                      for f in itertools.islice(frame_io.iter_frames(video), pairs + 1)]
        except FrameError as e:
            log.warning("%s; using synthetic pairs", e)
    if len(frames) == pairs + 1:
        return np.stack(frames), None, f"real: {Path(video).name}, {pairs} consecutive pairs"
    data = [synthetic_pair(h, w, ("translation", "rotation", "patch")[i % 3], seed=i) for i in range(pairs)]
    frames = np.stack([f for d in data for f in d[:2]])
    return frames, np.stack([d[2] for d in data]), f"synthetic: {pairs} pairs (translation, rotation, patch)"


def benchmark_flow(video: Path | None = SAMPLE_VIDEO, device: str = "auto", repeat: int = 1,
                   size: tuple[int, int] = (340, 256), pairs: int = 8) -> list[dict]:
    """Pairs/s of our TV-L1 (compiled when it can be; ONE thread as each dense_flow.py worker: 2 on a shared
    2-core machine lose ~5-10x whenever another process holds a core) against OpenCV's (its defaults)."""
    dev, saved, cv_threads = select_device(device), (torch.get_num_threads(), cv2.getNumThreads()), os.cpu_count()
    torch.set_num_threads(1)
    cv2.setNumThreads(cv_threads)
    try:
        frames, gt, source = benchmark_pairs(size, pairs, video)
        first = np.arange(pairs) if gt is None else np.arange(0, 2 * pairs, 2)  # pair k: first[k] -> first[k] + 1
        i0, i1 = (torch.from_numpy(frames[k]).float()[:, None].to(dev) for k in (first, first + 1))
        compiled, algo = compile_available(dev), cv2.optflow.DualTVL1OpticalFlow_create()
        paths = {"ours": lambda: tvl1_torch(i0, i1, compile_step=compiled).permute(0, 2, 3, 1).cpu().numpy(),
                 "opencv": lambda: np.stack([algo.calc(frames[a], frames[a + 1], None) for a in first])}
        medians = time_round_robin(paths, repeat, dev)  # its warm-up call compiles
        flow, ref = paths["ours"](), paths["opencv"]()
    finally:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])
    kind = source.split(":")[0]
    base = f"OpenCV TV-L1 ({cv_threads} threads), {kind}"
    note = f"mean |ours - OpenCV| {end_point_error(flow, ref):.4f} px"
    if gt is not None:
        note += f", end-point error ours {end_point_error(flow, gt, 4):.4f} px, OpenCV {end_point_error(ref, gt, 4):.4f} px"
    return [row("flow", name, "pairs/s", pairs / medians[key], base, pairs / medians["opencv"], n) for name, key, n in
            ((base, "opencv", source), (f"ours TV-L1 (1 thread, {'compiled' if compiled else 'eager'}, {dev}), {kind}",
                                         "ours", note))]


def benchmark_fvd(args: argparse.Namespace) -> list[dict]:
    """FVDMetric against a plain eager per-clip loop, --fvd-clips clips of 16 frames made batch by batch."""
    device, n, t, batch, rows = select_device(args.device), getattr(args, "fvd_clips", 2048), 16, 16, []
    with tempfile.TemporaryDirectory() as tmp:
        weights = _weights_file(args, Path(tmp), 400)
        metric, eager = FVDMetric(weights, device=device), load_model(weights, mode="rgb", device=device)
        for side in (64, 256):
            def batches() -> Iterator[torch.Tensor]:  # the same clips in both paths
                return (torch.randint(0, 256, (min(batch, n - k), t, side, side, 3), dtype=torch.uint8,
                                      generator=torch.Generator().manual_seed(k)) for k in range(0, n, batch))

            @torch.inference_mode()
            def plain() -> np.ndarray:
                return np.concatenate([eager(preprocess(v)[None].to(device)).mean(2).double().cpu().numpy()
                                       for b in batches() for v in b])

            def ours() -> np.ndarray:
                metric.reset()
                for b in batches():
                    metric.update(b, real=True)
                return torch.cat(metric.real_features).numpy()

            medians = time_round_robin({"plain": plain, "ours": ours}, max(1, min(args.repeat, 3)), device)
            ref = plain()
            note = f"{n} clips x {t} frames {side}x{side} -> 224, max rel diff {np.abs(ref - ours()).max() / np.abs(ref).max():.1e}"
            base = f"plain eager InceptionI3d, one clip at a time, {side}x{side}"
            rows += [row("fvd", name, "clips/s", n / medians[key], base, n / medians["plain"], note) for name, key in
                     ((base, "plain"), (f"FVDMetric (for_inference fp32, batches of {batch}), {side}x{side}", "ours"))]
    return rows


def benchmark_twostream(args: argparse.Namespace | None = None) -> list[dict]:
    """Whole processes, default flags, --twostream-videos (1, 8) copies of a 240-frame 340x256 video: `dense_flow.py`,
    `extract_features.py -mode flow -root` and `-mode rgb --input` against `-mode both --input`; features compared."""
    n, rows = getattr(args, "twostream_frames", 240), []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        rgb, flow, clip = _weights_file(args, tmp, 400), _weights_file(args, tmp, 400, 2), sample_clip(tmp / "c.mp4", n)
        for k in getattr(args, "twostream_videos", (1, 8)):
            src, out, what = tmp / f"in{k}", tmp / f"out{k}", f"{k} video{'s' * (k > 1)} of {n} frames 340x256"
            src.mkdir()
            videos = [shutil.copyfile(clip, src / f"v{i}.mp4") for i in range(k)]
            new = process_rows("twostream", {
                f"two-step: dense_flow.py, -mode flow -root, -mode rgb --input; {what}": [
                    py("dense_flow.py", *videos, "-o", out / "jpg"),
                    py("extract_features.py", "-mode", "flow", "-load_model", flow, "-root", out / "jpg", "-save_dir",
                       out / "two" / "flow"),
                    py("extract_features.py", "-mode", "rgb", "-load_model", rgb, "--input", src, "-save_dir",
                       out / "two" / "rgb")],
                f"extract_features.py -mode both --input; {what}": [
                    py("extract_features.py", "-mode", "both", "-load_model", rgb, "--flow-model", flow, "--input", src,
                       "-save_dir", out / "both")]})
            diff = max_diff([(out / "two" / s / f"v{i}.npy", out / "both" / s / f"v{i}.npy")
                             for s in ("rgb", "flow") for i in range(k)])
            rows += [{**r, "note": f"{r['note']}, features max abs diff {diff:.1e}"} for r in new]
    return rows


def soak_rss(samples: list[tuple[float, int]]) -> tuple[float, float]:
    """(after warm-up, at the end) MiB: the largest sampled RSS while 5-10 % and while the last 5 % of
    the work was done (not after it: the exit); else the first sample past 5 %, the last one before 100 %."""
    live = [(f, r / 2**20) for f, r in samples if r]
    warm = [r for f, r in live if 0.05 <= f <= 0.10] or [r for f, r in live if f >= 0.05][:1]
    end = [r for f, r in live if 0.95 <= f < 1] or [r for f, r in live if f < 1][-1:] or [r for _, r in live][-1:]
    if not warm:
        raise RuntimeError("soak: no resident-memory sample after warm-up")
    return max(warm), max(end)


def reading(videos: list[Path]) -> Callable[[list[int]], float]:
    """Progress through `videos` read in order: the furthest one the processes hold open plus its file
    offset (one video: its offset now, as it seeks to its end when opened)."""
    index, sizes, best = {str(v): i for i, v in enumerate(videos)}, [v.stat().st_size for v in videos], [0.0]

    def progress(pids: list[int]) -> float:
        at = []
        for fd in (fd for p in pids for fd in Path(f"/proc/{p}/fd").glob("*")):
            try:
                path, pos = os.readlink(fd), int(_read(f"{fd.parent.parent}/fdinfo/{fd.name}").split()[1])  # "pos: N"
            except (OSError, IndexError, ValueError):  # closed meanwhile
                continue
            at += [index[path] + pos / sizes[index[path]]] if path in index else []
        best[0] = max([best[0]] + at) if len(videos) > 1 else max(at, default=best[0])
        return best[0] / len(videos)
    return progress


def benchmark_soak(args: argparse.Namespace) -> list[dict]:
    """Wall time and the process tree's RSS after warm-up and at the end (soak_rss) of --soak-videos
    through extract_features.py, one --soak-frames video, --soak-flow-videos through dense_flow.py, an FVD
    of --soak-clips clips; 16-frame --soak-size videos (make_video_file), fed to the network as they are."""
    n, long_n, flow_n, clips = args.soak_videos, args.soak_frames, args.soak_flow_videos, args.soak_clips
    (h, w), rows = args.soak_size, []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        videos = [make_video_file(tmp / f"{i:05d}.mp4", 16, h, w, seed=i) for i in range(max(n, flow_n, clips, 8))]
        for key, count in (("e", n), ("f", flow_n), ("a", clips), ("b", 8)):  # list files: a name a line
            (tmp / f"{key}.txt").write_text("".join(f"{v.name}\n" for v in videos[:count]))
        long, weights = make_video_file(tmp / "long.mp4", long_n, h, w), _weights_file(args, tmp, 400)
        fvd = ["--frames", 16, "--no-resize", "--weights", weights, "-q"]
        extract = ["-mode", "rgb", "-load_model", weights, "--resize", 0, "--crop", 0, "-q"]
        run_process(py("fvd.py", tmp / "b.txt", "--save-stats", tmp / "b.npz", *fvd))  # not measured
        jobs = [(f"extract_features.py, {n} videos of 16 frames {h}x{w}",
                 lambda pids: sum(1 for _ in (tmp / "e").glob("*.npy")) / n,
                 py("extract_features.py", "--input", tmp / "e.txt", "-save_dir", tmp / "e", *extract)),
                (f"extract_features.py, one video of {long_n} frames {h}x{w}", reading([long]),
                 py("extract_features.py", "--input", long, "-save_dir", tmp / "l", *extract)),
                (f"dense_flow.py, {flow_n} videos of 16 frames {h}x{w}",
                 lambda pids: sum(1 for _ in (tmp / "o").glob("*/.dense_flow.done")) / flow_n,
                 py("dense_flow.py", "--list", tmp / "f.txt", "-o", tmp / "o", "--resize", 0, "-q")),
                (f"fvd.py, FVD of {clips} clips of 16 frames {h}x{w}", reading(videos[:clips]),
                 py("fvd.py", tmp / "a.txt", tmp / "b.npz", *fvd))]
        for label, progress, cmd in jobs:
            r = run_process(cmd, progress)
            warm, end = soak_rss(r["samples"])
            note = f"RSS {warm:.0f} MiB after warm-up, {end:.0f} at the end ({end / warm - 1:+.1%}), CPU {r['cpu']:.0f}s"
            log.info("soak: %s: %.0f s, %s", label, r["wall"], note)  # each row as it comes: the section is long
            rows.append(row("soak", label, "s", r["wall"], None, None, note, rss_warm_mib=warm, rss_end_mib=end))
    return rows


def format_table(rows: list[dict]) -> str:
    header = ("section", "path", "median", "unit", "vs baseline", "notes")
    lines = [[r["section"], r["row"], f"{r['value']:.4g}", r["unit"],
              "-" if r["baseline_row"] is None else "baseline" if r["row"] == r["baseline_row"] else f"{ratio(r):.2f}x",
              r.get("note", "")] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    out = [fmt.format(*header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [fmt.format(*line) for line in lines])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-only", "--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections (default: {','.join(SECTIONS)}; also: soak)")
    p.add_argument("-repeat", "--repeat", type=int, default=5, help="timed runs per path (median taken)")
    p.add_argument("-frames", "--frames", type=int, default=64, help="clip length in frames")
    p.add_argument("-size", "--size", type=int, default=224, help="clip height and width")
    add_device(p)
    p.add_argument("--random-weights", action="store_true",
                   help=f"random-init weights even when {REAL_WEIGHTS.relative_to(MODELS_DIR.parent)} exists")
    p.add_argument("--fvd-clips", type=int, default=2048, help="clips per size in the fvd section")
    p.add_argument("--twostream-videos", default="1,8", help="videos per twostream row pair (default 1,8)")
    p.add_argument("--soak", action="store_true", help="also run the soak section (long)")
    p.add_argument("--soak-videos", type=int, default=2000, help="short videos through extract_features.py")
    p.add_argument("--soak-frames", type=int, default=20000, help="frames of the long video")
    p.add_argument("--soak-flow-videos", type=int, default=500, help="short videos through dense_flow.py")
    p.add_argument("--soak-clips", type=int, default=2048, help="clips of the FVD")
    p.add_argument("--soak-size", default="64x80", help="HxW of the soak's videos (default 64x80)")
    p.add_argument("-json", "--json", action="store_true", help="print the rows as JSON instead of a table")
    add_verbosity(p)
    args = p.parse_args(argv)
    args.sections = list(dict.fromkeys([s.strip() for s in args.only.split(",") if s.strip()] + ["soak"] * args.soak))
    unknown = [s for s in args.sections if s not in (*SECTIONS, "soak")]
    if unknown or not args.sections:
        raise UserError(f"--only: unknown section(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(SECTIONS)}, soak")
    try:
        args.soak_size = tuple(int(v) for v in args.soak_size.lower().split("x"))
        args.twostream_videos = tuple(int(v) for v in args.twostream_videos.split(","))
    except ValueError:
        args.soak_size = args.twostream_videos = ()
    if len(args.soak_size) != 2 or min(args.soak_clips, args.soak_frames, *args.soak_size) < 2 or min(
            args.repeat, args.frames, args.size, args.soak_videos, args.soak_flow_videos, *args.twostream_videos) < 1:
        raise UserError("--repeat, --frames, --size, the --soak and --twostream-videos counts (e.g. 1,8) must be "
                        "positive, --soak-size HxW (e.g. 64x80) and --soak-clips, -frames at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start(args)
    funcs = {"model": benchmark_model, "loading": benchmark_loading, "train": benchmark_train_step,
             "extract": benchmark_extraction, "flow": benchmark_dense_flow, "fvd": benchmark_fvd,
             "twostream": benchmark_twostream, "soak": benchmark_soak}
    rows, failed = [], []
    for section in args.sections:
        log.info("section %s ...", section)
        try:
            rows += funcs[section](args)
        except Exception as e:  # one broken section must not hide the others' results
            log.error("section %s failed: %s: %s", section, e.__class__.__name__, e)
            failed.append(section)
    print(json.dumps({"rows": rows, "failed": failed, "threads": torch.get_num_threads()}, indent=2) if args.json
          else format_table(rows))
    if failed:
        print(f"benchmark: error: section(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
