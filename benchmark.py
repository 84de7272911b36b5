"""Speed of every path of the toolkit, each against its plain baseline measured in the same run.

    python benchmark.py                                  # every section
    python benchmark.py --only model --repeat 5 --frames 64 --size 224
    python benchmark.py --json                           # rows as JSON on stdout

Each row is one path: its median over --repeat timed runs (after one warm-up run) and its
ratio against the section's baseline row. The paths of a section are timed round-robin
(A, B, C, A, B, C, ...) so that load from other processes hits them all alike. Threads are
PyTorch's default (torch.get_num_threads()).

Sections: `model` (plain eager InceptionI3d against for_inference() in each precision), `loading`
(frames and training clips), `train`, `extract` (whole processes: the original pytorch-i3d path against
extract_features.py, and peak RSS), `flow` and `fvd`; each a function f(args) -> list of row dicts.
The model section uses models/rgb_scratch.pt when it exists (then the cosine / top-1 columns
compare real predictions of the fast paths with the plain model), else random weights.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
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
from synthetic_charades import calibrated_random_i3d, make_jpeg_video, synthetic_pair
from train_state import autocast_for, charades_losses
from tvl1 import compile_available, end_point_error, tvl1_torch
from weights import MODELS_DIR, load_model

log = logging.getLogger(__name__)
REAL_WEIGHTS = MODELS_DIR / "rgb_scratch.pt"
SAMPLE_VIDEO = Path(__file__).resolve().parent / "data" / "samples" / "bikes.mp4"  # make samples
SECTIONS = ("model", "loading", "train", "extract", "flow", "fvd")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(paths: dict[str, Callable[[], object]], repeat: int,
                     device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Median seconds per call of each path: one warm-up call each, then `repeat` rounds in
    which every path runs once, so that a burst of outside load slows all paths alike."""
    for fn in paths.values():
        fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeat):
        for name, fn in paths.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def ratio(row: dict) -> float:
    """How many times better than the baseline: lower is better for times, higher for rates."""
    if row["unit"].endswith("/s"):
        return row["value"] / row["baseline_value"]
    return row["baseline_value"] / row["value"]


def _model_and_input(args: argparse.Namespace, device: torch.device) -> tuple[InceptionI3d, torch.Tensor, str]:
    if REAL_WEIGHTS.is_file() and not getattr(args, "random_weights", False):
        model, source = load_model(REAL_WEIGHTS, mode="rgb"), REAL_WEIGHTS.name
    else:
        torch.manual_seed(0)
        model, source = InceptionI3d(num_classes=400, in_channels=3), "random init"
    gen = torch.Generator().manual_seed(0)
    clip = torch.rand((1, 3, args.frames, args.size, args.size), generator=gen) * 2 - 1  # model range
    return model.to(device).eval(), clip.to(device), source


def _runs(precision: str, device: torch.device) -> bool:
    """Whether the device computes `precision` (bf16 rows are left out on CPUs without it)."""
    try:
        return check_precision(precision, device) is None
    except PrecisionError as e:
        log.info("model: no %s rows: %s", precision, e)
        return False


def benchmark_model(args: argparse.Namespace) -> list[dict]:
    """Plain eager InceptionI3d (fp32) against for_inference() in fp32, bf16 (and fp16 on CUDA),
    for forward (per-time logits) and extract_features; seconds per (1, 3, T, S, S) clip."""
    device = select_device(args.device)
    model, clip, source = _model_and_input(args, device)
    precisions = [p for p in ("fp32", "bf16", "fp16") if _runs(p, device) and (p != "fp16" or device.type == "cuda")]
    fast = {p: model.for_inference(p, device=device) for p in precisions}
    log.info("model: clip %s on %s, %d threads, weights: %s, auto precision = %s", tuple(clip.shape), device,
             torch.get_num_threads(), source, resolve_precision("auto", device))

    def eager(method: str) -> Callable[[], torch.Tensor]:
        return lambda: torch.inference_mode()(getattr(model, method))(clip)

    rows = []
    for method in ("forward", "extract_features"):
        paths = {f"{method} eager fp32": eager(method)}
        paths.update({f"{method} for_inference {p}": (lambda f=fast[p], m=method: getattr(f, m)(clip))
                      for p in precisions})
        medians = time_round_robin(paths, args.repeat, device)
        with torch.inference_mode():
            ref = getattr(model, method)(clip).float()
        baseline = f"{method} eager fp32"
        for name, seconds in medians.items():
            note = f"{args.frames / seconds:.1f} frames/s"
            if name != baseline:
                out = getattr(fast[name.rsplit(' ', 1)[1]], method)(clip).float()
                cos = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
                rel = ((out - ref).abs().max() / ref.abs().max()).item()
                note += f", cosine {cos:.6f}, max rel diff {rel:.1e}"
                if method == "forward":
                    same = torch.equal(out.mean(2).argmax(1), ref.mean(2).argmax(1))
                    note += f", top-1 {'same' if same else 'DIFFERS'}"
            rows.append({"section": "model", "row": name, "unit": "s", "value": seconds,
                         "baseline_row": baseline, "baseline_value": medians[baseline], "note": note})
    return rows


def benchmark_dense_flow(args: argparse.Namespace) -> list[dict]:
    """Frame pairs/s at 340x256 (benchmark_flow): our TV-L1, one thread as each dense_flow.py worker,
    against OpenCV's with its default threads, on real (`make samples`) then synthetic pairs."""
    rows = []
    for video in (SAMPLE_VIDEO, None):
        if video is not None and not video.is_file():
            continue
        r = benchmark_flow(size=(340, 256), pairs=8, device=args.device, video=video,
                           repeat=max(1, min(args.repeat, 3)))
        base = f"OpenCV TV-L1 ({r['opencv_threads']} threads), {r['source'].split(':')[0]}"
        ours = (f"ours TV-L1 ({r['threads']} thread{'s' if r['threads'] > 1 else ''}, "
                f"{'compiled' if r['compiled'] else 'eager'}, {r['device']}), {r['source'].split(':')[0]}")
        note = f"mean |ours - OpenCV| {r['mean_diff_to_opencv']:.4f} px"
        if r["tvl1_epe"] is not None:
            note += f", end-point error ours {r['tvl1_epe']:.4f} px, OpenCV {r['opencv_tvl1_epe']:.4f} px"
        for name, value, n in ((base, r["opencv_tvl1_pairs_per_s"], r["source"]), (ours, r["tvl1_pairs_per_s"], note)):
            rows.append({"section": "flow", "row": name, "unit": "pairs/s", "value": value, "baseline_row": base,
                         "baseline_value": r["opencv_tvl1_pairs_per_s"], "note": n})
    return rows + (flow_whole_process_rows() if SAMPLE_VIDEO.is_file() else [])


_OPENCV_PROCESS = ("import sys, cv2\ncap, algo, prev = cv2.VideoCapture(sys.argv[1]), cv2.optflow.DualTVL1OpticalFlow_create(), None\n"
                   "while True:\n    ok, f = cap.read()\n    if not ok:\n        break\n"
                   "    g = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)\n    if prev is not None:\n"
                   "        algo.calc(prev, g, None)\n    prev = g\n")


def flow_whole_process_rows(frames: int = 120, size: tuple[int, int] = (340, 256)) -> list[dict]:
    """A new user's figure: `dense_flow.py` at its default flags as a whole process (start-up,
    compile cache, all cores) on ONE video of `frames` frames of the sample resized and cropped
    to size, against a process running OpenCV's TV-L1 with its default threads over the same pairs."""
    w, h = size
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.mp4"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
        for k, f in enumerate(frame_io.iter_frames(SAMPLE_VIDEO, resize=h)):
            if k == frames:
                break
            left = (f.shape[1] - w) // 2
            writer.write(cv2.cvtColor(np.ascontiguousarray(f[:h, left:left + w]), cv2.COLOR_RGB2BGR))
        writer.release()
        seconds = {}
        commands = {"opencv-tvl1": ["-c", _OPENCV_PROCESS, str(video)],  # OpenCV's default threads
                    "tvl1": [str(Path(__file__).with_name("dense_flow.py")), str(video), "-o", str(Path(tmp) / "o")]}
        for method, command in commands.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, *command], check=True, capture_output=True)
            seconds[method] = time.perf_counter() - t
    base = f"OpenCV TV-L1 ({cv2.getNumberOfCPUs()} threads), whole process, one {frames}-frame {w}x{h} video"
    return [{"section": "flow", "row": name, "unit": "s", "value": seconds[m], "baseline_row": base,
             "baseline_value": seconds["opencv-tvl1"], "note": note}
            for name, m, note in ((base, "opencv-tvl1", f"{frames - 1} pairs, start-up included"),
                                  (f"dense_flow.py (default flags), whole process, one {frames}-frame {w}x{h} video",
                                   "tvl1", f"--workers {os.cpu_count()} (one per core) split the video's pairs"))]


def run_section(name: str, args: argparse.Namespace) -> tuple[list[dict], str | None]:
    """(rows, None) or ([], why the section did not run)."""
    funcs = {"model": benchmark_model, "loading": benchmark_loading, "train": benchmark_train_step,
             "extract": benchmark_extraction, "flow": benchmark_dense_flow, "fvd": benchmark_fvd}
    return funcs[name](args), None


def format_table(rows: list[dict]) -> str:
    header = ("section", "path", "median", "unit", "vs baseline", "notes")
    lines = [[r["section"], r["row"], f"{r['value']:.4g}", r["unit"],
              "baseline" if r["row"] == r["baseline_row"] else f"{ratio(r):.2f}x", r.get("note", "")]
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    out = [fmt.format(*header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-only", "--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    p.add_argument("-repeat", "--repeat", type=int, default=5, help="timed runs per path (median taken)")
    p.add_argument("-frames", "--frames", type=int, default=64, help="clip length in frames")
    p.add_argument("-size", "--size", type=int, default=224, help="clip height and width")
    add_device(p)
    p.add_argument("--random-weights", action="store_true",
                   help=f"random-init weights even when {REAL_WEIGHTS.relative_to(MODELS_DIR.parent)} exists")
    p.add_argument("--fvd-clips", type=int, default=2048, help="clips per size in the fvd section")
    p.add_argument("-json", "--json", action="store_true", help="print the rows as JSON instead of a table")
    add_verbosity(p)
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        raise UserError(f"--only: unknown section(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(SECTIONS)}")
    if args.repeat < 1 or args.frames < 1 or args.size < 1:
        raise UserError("--repeat, --frames and --size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start(args)
    rows: list[dict] = []
    skipped: list[str] = []
    failed: list[str] = []
    for section in args.sections:
        log.info("section %s ...", section)
        try:
            section_rows, why = run_section(section, args)
        except Exception as e:  # one broken section must not hide the others' results
            log.error("section %s failed: %s: %s", section, e.__class__.__name__, e)
            failed.append(section)
            continue
        if why:
            log.warning("section %s %s", section, why)
            skipped.append(section)
        rows += section_rows
    if args.json:
        print(json.dumps({"rows": rows, "skipped": skipped, "failed": failed, "threads": torch.get_num_threads()},
                         indent=2))
    else:
        print(format_table(rows))
        if skipped:
            print(f"\nnot measured (module missing): {', '.join(skipped)}")
    if failed:
        print(f"benchmark: error: section(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _bench_arg(args, name: str, default):
    value = getattr(args, name, None) if args is not None else None
    return default if value is None else value


def _weights_file(args, folder: Path, num_classes: int) -> Path:
    """models/rgb_scratch.pt when present (and not --random-weights), else random weights
    (batch norm calibrated; num_classes logits) saved in folder."""
    if REAL_WEIGHTS.is_file() and not _bench_arg(args, "random_weights", False):
        return REAL_WEIGHTS
    torch.save(calibrated_random_i3d(num_classes=num_classes).state_dict(), folder / "random.pt")
    return folder / "random.pt"


def original_extract(root: str, vid: str, weights: str, out: str) -> None:
    """The original pytorch-i3d extract_features.py on one video, as a process of its own: its
    loader (cv2.imread, BGR->RGB, upscale only under 226, float64 (img/255)*2-1 -> float32),
    CenterCrop(224), eager InceptionI3d(400) (+ replace_logits(157) for Charades weights) + load_state_dict,
    extract_features on the whole video, np.save of (T', 1, 1, 1024)."""
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


def run_process(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of a whole process, as /usr/bin/time -v gives them
    (os.wait4's ru_maxrss: the largest of the process and its reaped children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")  # until it exits (no pipe deadlock)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds, proc.returncode = time.perf_counter() - t0, os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}): {err[-1500:]}")
    return seconds, usage.ru_maxrss / 2**20


def benchmark_extraction(args: argparse.Namespace | None = None) -> list[dict]:
    """Whole processes on a Charades-layout JPEG video of extract_height x extract_width
    (256x340): original_extract against `extract_features.py -mode rgb -load_model W -root ROOT
    -save_dir OUT` at default flags on the same extract_frames (480) frames (seconds; the
    features must agree to 1e-4), and the peak RSS of ours at extract_memory_frames (250, 2000).
    Weights: models/rgb_scratch.pt when present and not random_weights, else random ones."""
    n, mem_frames = _bench_arg(args, "extract_frames", 480), _bench_arg(args, "extract_memory_frames", (250, 2000))
    h, w = _bench_arg(args, "extract_height", 256), _bench_arg(args, "extract_width", 340)
    with tempfile.TemporaryDirectory() as name:
        tmp, rows = Path(name), []
        weights = _weights_file(args, tmp, 157)

        def ours(m: int) -> tuple[float, float]:
            make_jpeg_video(tmp / f"v{m}", "VID", m, h, w)
            return run_process([sys.executable, str(Path(__file__).resolve().parent / "extract_features.py"), "-mode",
                                "rgb", "-load_model", str(weights), "-root", str(tmp / f"v{m}"), "-save_dir",
                                str(tmp / f"out{m}"), "-q"])

        t_ours = ours(n)[0]
        t_orig = run_process([sys.executable, "-c", "import sys, benchmark; benchmark.original_extract(*sys.argv[1:])",
                              str(tmp / f"v{n}"), "VID", str(weights), str(tmp / "original.npy")])[0]
        ref, got = np.load(tmp / "original.npy"), np.load(tmp / f"out{n}" / "VID.npy")
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if not diff <= 1e-4 * max(1.0, float(np.abs(ref).max())):
            raise AssertionError(f"extract_features.py differs from the original path by {diff}")
        base, note = f"original pytorch-i3d path, {n} frames", f"whole process, {h}x{w} JPEG, max abs diff {diff:.1e}"
        for row, t in ((base, t_orig), (f"extract_features.py defaults, {n} frames", t_ours)):
            rows.append({"section": "extract", "row": row, "unit": "s", "value": t, "baseline_row": base,
                         "baseline_value": t_orig, "note": note})
        rss = {m: ours(m)[1] for m in mem_frames}
    for m in mem_frames:
        rows.append({"section": "extract", "row": f"peak RSS, extract_features.py defaults, {m} frames", "unit": "GiB",
                     "value": rss[m], "baseline_row": f"peak RSS, extract_features.py defaults, {mem_frames[0]} frames",
                     "baseline_value": rss[mem_frames[0]], "note": f"{h}x{w} JPEG, os.wait4 ru_maxrss"})
    return rows


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
            for f in frame_io.iter_frames(video):
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
    """Frame pairs/s of our TV-L1 against OpenCV's (cv2.optflow defaults) on the same pairs (size
    is width x height), back to back in this process, alternating `repeat` times (medians).
    threads None: OpenCV its default (all cores), ours ONE thread, as each `--workers N` process
    of the CLI runs it (2 OpenMP threads on a shared 2-core machine lose ~5-10x whenever another
    process holds a core); `threads` gives both that count. Ours is torch.compile'd when a
    compiler works, in batches of `batch` pairs, on real consecutive frames of the sample video
    when present (benchmark_pairs), else synthetic ones with known flow (end-point errors
    reported too). The compile / warm-up run is not timed (warmup_s)."""
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
    i0 = torch.from_numpy(frames[first]).float()[:, None].to(dev)
    i1 = torch.from_numpy(frames[first + 1]).float()[:, None].to(dev)
    batch = batch or pairs
    if compile_step is None:
        compile_step = compile_available(dev)

    def ours() -> np.ndarray:
        out = [tvl1_torch(i0[k:k + batch], i1[k:k + batch], compile_step=compile_step) for k in range(0, pairs, batch)]
        return torch.cat(out).permute(0, 2, 3, 1).cpu().numpy()

    algo = cv2.optflow.DualTVL1OpticalFlow_create()

    def opencv() -> np.ndarray:
        return np.stack([algo.calc(frames[a], frames[b], None) for a, b in zip(first, first + 1)])

    def timed(fn):
        synchronize(dev)
        t = time.perf_counter()
        return fn(), time.perf_counter() - t

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
                  opencv_threads=cv_threads, compiled=compile_step, warmup_s=round(warmup_s, 2), repeat=len(ours_t),
                  tvl1_pairs_per_s=pairs / ours_s, tvl1_epe=end_point_error(flow, gt, 4) if gt is not None else None)
    if reference:
        ref_s = float(np.median(ref_t))
        result.update(opencv_tvl1_pairs_per_s=pairs / ref_s,
                      opencv_tvl1_epe=end_point_error(ref, gt, 4) if gt is not None else None,
                      speedup=ref_s / ours_s, mean_diff_to_opencv=end_point_error(flow, ref))
    return result


def benchmark_train_step(args=None) -> list[dict]:
    """Clips/s of one training step (forward, loss, backward, SGD step) on a random (B, 3, T, S, S)
    clip: plain fp32 eager against channels_last_3d, and bf16 autocast (CPU with native bf16) or
    fp16 AMP + cudnn.benchmark (CUDA), measured round-robin in the same run. Every step of every
    path uses the same dropout seed, so the first-step losses (in each row's note) compare the
    precisions. On CPU the clip is at most 16 frames (a step of 64 would take ~10 s here)."""
    device = select_device(getattr(args, "device", "auto") or "auto")
    frames = int(getattr(args, "train_frames", None) or getattr(args, "frames", 64) or 64)
    if device.type == "cpu":
        frames = min(frames, 16)
    size = int(getattr(args, "size", 224) or 224)
    batch = int(getattr(args, "train_batch", None) or (8 if device.type == "cuda" else 1))
    repeat = int(getattr(args, "repeat", 3) or 3)
    gen = torch.Generator().manual_seed(0)
    clip = (torch.rand((batch, 3, frames, size, size), generator=gen) * 2 - 1).to(device)
    labels = (torch.rand((batch, 157, frames), generator=gen) < 0.05).float().to(device)

    def make(channels_last: bool, amp: bool, cudnn_benchmark: bool):
        torch.manual_seed(0)
        model = InceptionI3d(num_classes=157).to(device).train()
        x = clip
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
            x = clip.contiguous(memory_format=torch.channels_last_3d)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
        losses = []

        def run():
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

    cuda = device.type == "cuda"
    base = "fp32 eager (plain)"
    paths = {base: make(False, False, False)}
    if cuda:
        paths["fp32 cudnn.benchmark"] = make(False, False, True)
    paths["fp32 channels_last_3d" + (" cudnn.benchmark" if cuda else "")] = make(True, False, cuda)
    low = "fp16 AMP" if cuda else "bf16 autocast"
    if cuda or cpu_has_native_bf16():
        paths[low + (" cudnn.benchmark" if cuda else "")] = make(False, True, cuda)
        paths[low + " channels_last_3d" + (" cudnn.benchmark" if cuda else "")] = make(True, True, cuda)
    # time_round_robin's warm-up call gives each path's first-step loss, compared below
    medians = time_round_robin({name: fn for name, (fn, _) in paths.items()}, repeat, device)
    first = {name: losses[0] for name, (_, losses) in paths.items()}
    torch.backends.cudnn.benchmark = False
    rate = {name: batch / m for name, m in medians.items()}
    shape = f"({batch}, 3, {frames}, {size}, {size})"
    return [{"section": "train", "row": f"{name} {shape}", "unit": "clips/s", "value": v,
             "baseline_row": f"{base} {shape}", "baseline_value": rate[base],
             "note": f"first-step loss {first[name]:.4f} (fp32 {first[base]:.4f})"} for name, v in rate.items()]


def _original_style_load(root: Path, vid: str, start: int, num: int) -> np.ndarray:
    """A plain loop like the original load_rgb_frames: cv2 per frame, float64 scaling."""
    frames = []
    for i in range(start, start + num):
        img = cv2.imread(str(frame_io.charades_frame_path(root, vid, i)))[:, :, [2, 1, 0]]
        w, h, c = img.shape
        if w < 226 or h < 226:
            d = 226. - min(w, h)
            sc = 1 + d / min(w, h)
            img = cv2.resize(img, dsize=(0, 0), fx=sc, fy=sc)
        img = (img / 255.) * 2 - 1
        frames.append(img)
    return np.asarray(frames, dtype=np.float32)


def _rows(section: str, times: dict[str, float], base: str, per_call: int) -> list[dict]:
    """Rate rows (per_call items per timed call) against the base path of the same run."""
    return [{"section": section, "row": name, "unit": "clips/s", "value": per_call / t, "baseline_row": base,
             "baseline_value": per_call / times[base]} for name, t in times.items()]


def benchmark_loading(args=None) -> list[dict]:
    """Clips/s: JPEG frames, ours against the original-style loop (checked to give the same
    pixels); then 8 training clips read by seeking in an .mp4 against the same clips from JPEGs."""
    frames_n, repeat = int(getattr(args, "frames", 64) or 64), int(getattr(args, "repeat", 3) or 3)
    clip = 16 if select_device(getattr(args, "device", "auto") or "auto").type == "cpu" else frames_n
    base, jpeg = "original-style loop (cv2, float64)", f"training clips, JPEG folder ({clip} frames)"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_jpeg_video(root, "v", max(frames_n, 250))  # 10 s at 25 fps: clips start anywhere
        item = VideoItem("v", frames_n, np.zeros((NUM_CLASSES, frames_n), np.float32))
        paths = {base: lambda: _original_style_load(root, "v", 1, frames_n),
                 "ours (uint8, float32 at the end)":
                     lambda: frame_io.to_model_range(load_clip(root, item, 0, frames_n, "rgb", None)[0])}
        assert np.abs(paths[base]() - paths["ours (uint8, float32 at the end)"]()).max() < 1e-5
        rows = _rows("loading", time_round_robin(paths, repeat), base, 1)
        writer = cv2.VideoWriter(str(root / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (340, 256))
        for f in frame_io.list_frame_files(root / "v"):
            writer.write(cv2.imread(str(f)))
        writer.release()
        flip = videotransforms.Compose([videotransforms.RandomCrop(224), videotransforms.horizontal_flip("rgb")])
        clips = {}
        for name, source in ((jpeg, "v"), (jpeg.replace("JPEG folder", ".mp4 seek"), "v.mp4")):
            videos = LabelledVideos("list", [Sample("v", str(root / source), (0,))] * 8, ["a"])
            data = VideoClips(videos, "rgb", flip, clip_frames=clip)
            clips[name] = lambda data=data: [data[i] for i in range(8)]
        rows += _rows("loading", time_round_robin(clips, repeat), jpeg, 8)
    return rows


# ----------------------------------------------------------------------------------------------
# FVD: the in-loop metric's throughput against a plain per-clip eager loop
# ----------------------------------------------------------------------------------------------

def benchmark_fvd(args: argparse.Namespace) -> list[dict]:
    """FVDMetric against a plain eager per-clip loop, --fvd-clips clips of 16 frames made batch by batch."""
    device, n, t, batch, rows = select_device(args.device), _bench_arg(args, "fvd_clips", 2048), 16, 16, []
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
            rows += [{"section": "fvd", "row": name, "unit": "clips/s", "value": n / medians[key], "note": note,
                      "baseline_row": base, "baseline_value": n / medians["plain"]} for name, key in
                     ((base, "plain"), (f"FVDMetric (for_inference fp32, batches of {batch}), {side}x{side}", "ours"))]
    return rows


if __name__ == "__main__":
    run_main(main)
