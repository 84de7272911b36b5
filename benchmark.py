"""Speed of every path of the toolkit, each against its plain baseline measured in the same run.

    python benchmark.py                                  # every section
    python benchmark.py --only model --repeat 5 --frames 64 --size 224
    python benchmark.py --json                           # rows as JSON on stdout

Each row is one path: its median over --repeat timed runs (after one warm-up run) and its
ratio against the section's baseline row. The paths of a section are timed round-robin
(A, B, C, A, B, C, ...) so that load from other processes hits them all alike. Threads are
PyTorch's default (torch.get_num_threads()).

Sections: `model` (here: the plain eager InceptionI3d against for_inference() in each
precision), and `loading`, `train`, `extract`, `flow`, each provided by its own module
(charades_dataset.benchmark_loading, train_i3d.benchmark_train_step,
extract_features.benchmark_extraction, dense_flow.benchmark_flow) as a function
f(args) -> list of row dicts {"section", "row", "unit", "value", "baseline_row",
"baseline_value"} (optionally "note"). A section whose module is missing is reported and skipped.

Speed does not depend on the weights, so the model section uses random-init weights; when
models/rgb_scratch.pt exists it is loaded instead, and the cosine / top-1 columns then compare
real predictions of the fast paths with the plain model.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from cli import UserError, run_main, select_device, setup_logging
from pytorch_i3d import InceptionI3d, PrecisionError, check_precision, resolve_precision

log = logging.getLogger("benchmark")
MODELS_DIR = Path(__file__).resolve().parent / "models"
REAL_WEIGHTS = MODELS_DIR / "rgb_scratch.pt"

# section -> (module, function) of the sections other modules provide
EXTERNAL_SECTIONS = {
    "loading": ("charades_dataset", "benchmark_loading"),
    "train": ("train_i3d", "benchmark_train_step"),
    "extract": ("extract_features", "benchmark_extraction"),
    "flow": ("benchmark", "benchmark_dense_flow"),
}
SECTIONS = ("model", *EXTERNAL_SECTIONS)


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
        from weights import load_model
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
        check_precision(precision, device)
        return True
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
        def run():
            with torch.inference_mode():
                return getattr(model, method)(clip)
        return run

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
                note += f", cosine {cos:.6f}"
                if method == "forward":
                    same = torch.equal(out.mean(2).argmax(1), ref.mean(2).argmax(1))
                    note += f", top-1 {'same' if same else 'DIFFERS'}"
            rows.append({"section": "model", "row": name, "unit": "s", "value": seconds,
                         "baseline_row": baseline, "baseline_value": medians[baseline], "note": note})
    return rows


def benchmark_dense_flow(args: argparse.Namespace) -> list[dict]:
    """Frame pairs/s at 340x256: our TV-L1 (one thread, as each dense_flow.py worker runs it)
    against OpenCV's TV-L1 with its default threads, on the same pairs in the same run: real
    consecutive frames of the sample video (when present; `make samples`), then synthetic pairs
    with known flow, whose end-point errors are reported too (dense_flow.benchmark_flow)."""
    import dense_flow

    rows = []
    for video in (dense_flow.SAMPLE_VIDEO, None):
        if video is not None and not video.is_file():
            continue
        r = dense_flow.benchmark_flow(size=(340, 256), pairs=8, device=args.device, video=video,
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
    return rows


def run_section(name: str, args: argparse.Namespace) -> tuple[list[dict], str | None]:
    """(rows, None) or ([], why the section did not run)."""
    if name == "model":
        return benchmark_model(args), None
    module_name, func_name = EXTERNAL_SECTIONS[name]
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        return [], f"skipped: {module_name}.{func_name} not available ({e.__class__.__name__})"
    return func(args), None


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
    p.add_argument("-device", "--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--random-weights", action="store_true",
                   help=f"random-init weights even when {REAL_WEIGHTS.relative_to(MODELS_DIR.parent)} exists")
    p.add_argument("-json", "--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("-v", "--verbose", action="store_true")
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
    setup_logging(args.verbose)
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



# ----------------------------------------------------------------------------------------------
# FVD (fvd.py): throughput against a plain per-video eager loop, and how the common ports differ
# ----------------------------------------------------------------------------------------------

def benchmark_fvd(args: argparse.Namespace) -> list[dict]:
    """Videos/s of fvd.py's path (DataLoader decode workers, for_inference fp32, equal-shape
    batches) against a plain loop (eager InceptionI3d, one video at a time, preprocessing in
    the same process), both on the same N videos of 16 frames 64x64 (.npy, resized to 224)."""
    import tempfile

    import numpy as np

    import fvd
    from weights import load_model

    device = select_device(args.device)
    n, t = 8, 16
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "videos.npy"
        np.save(data, np.random.default_rng(0).integers(0, 256, (n, t, 64, 64, 3), dtype=np.uint8))
        if REAL_WEIGHTS.is_file() and not getattr(args, "random_weights", False):
            weights = REAL_WEIGHTS
        else:
            torch.manual_seed(0)
            weights = Path(tmp) / "random.pt"
            torch.save(InceptionI3d(400, in_channels=3).state_dict(), weights)
        ext = fvd.Extractor(weights=weights, device=device, batch_size=4, workers=2, progress=False)
        eager = load_model(weights, mode="rgb", device=device)

        def plain() -> np.ndarray:
            videos = np.load(data)
            out = []
            with torch.inference_mode():
                for v in videos:
                    x = fvd.preprocess(v)[None].to(device)
                    out.append(eager(x).mean(2).double().cpu().numpy())
            return np.concatenate(out)

        medians = time_round_robin({"plain": plain, "fvd": lambda: ext.features(data)}, max(1, min(args.repeat, 3)),
                                   device)
        diff = float(np.abs(plain() - ext.features(data)[0]).max())
    base = "plain eager InceptionI3d, one video at a time"
    note = f"{n} videos x {t} frames 64x64 -> 224, max |logit diff| {diff:.2e}"
    return [{"section": "fvd", "row": base, "unit": "videos/s", "value": n / medians["plain"], "baseline_row": base,
             "baseline_value": n / medians["plain"], "note": note},
            {"section": "fvd", "row": "fvd.py (workers, for_inference fp32, batches of 4)", "unit": "videos/s",
             "value": n / medians["fvd"], "baseline_row": base, "baseline_value": n / medians["plain"], "note": note}]


EXTERNAL_SECTIONS["fvd"] = ("benchmark", "benchmark_fvd")
SECTIONS = (*SECTIONS, "fvd")


def fvd_port_table(weights: str | Path = REAL_WEIGHTS, clips: int = 3, frames: int = 16) -> list[tuple[str, float, float, float]]:
    """FVD of the same sets under each choice the common ports make differently: rows of
    (choice, zeros vs 255 at 15 frames, zeros vs 255 at 30 frames, bikes vs bigbuckbunny clips).
    The sample videos (`make samples`) give `clips` clips of `frames` frames each."""
    import numpy as np

    import fvd
    from frame_io import read_frames

    ext = fvd.Extractor(weights=weights, workers=0, progress=False)
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
        "reference: TF1 resize, [-1, 1], rgb_scratch, N-1": (lambda v: fvd.preprocess(v), 1),
        "input range [-0.5, 0.5]": (lambda v: fvd.preprocess(v) / 2, 1),
        "resize: half-pixel bilinear (F.interpolate)": (half_pixel, 1),
        "resize: antialiased bilinear (torchvision)": (lambda v: fvd.preprocess(v, resize="torch"), 1),
        "covariance with N (np.cov bias=True)": (lambda v: fvd.preprocess(v), 0),
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
            values.append(fvd.frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1]))
        rows.append((name, *values))
        log.info("%s: %s", name, ", ".join(f"{v:.3f}" for v in values))
    return rows


if __name__ == "__main__":
    run_main(main)
