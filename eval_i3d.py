"""Accuracy of I3D models on labelled video datasets (UCF101, HMDB51, Kinetics, class folders,
lists: top-1, top-5, mean class accuracy), and Charades mAP (classification over whole videos
and per-frame localization).

    python eval_i3d.py -root UCF101/videos --split ucfTrainTestlist -load_model out/ucf_000100.pt --json
    python eval_i3d.py -root kinetics400/val --split validate.csv -load_model rgb_scratch --skip-bad
    python eval_i3d.py -root UCF101/videos --split ucfTrainTestlist -load_model rgb.pt \\
        --flow-model flow.pt --flow-root UCF101/flow --views 10 --crops 3

Video datasets (video_datasets.py reads every format, detected from --split; video_eval.py
scores): each video of the testing set is scored by the whole video through the network
(exact, the default: logits averaged over time, softmax) or by --views N --crops 1|3 clips
(softmax averaged); two streams average the RGB and flow probabilities. Prints top-1, top-5
and mean class accuracy (--json: top1, top5, mean_class_accuracy, videos, missing, ...);
--per-class CSV, --predictions CSV and --confusion PNG write the details. Videos missing
from -root are counted and listed; unreadable ones are skipped and listed; either makes the
exit status 1 unless --skip-bad.

Flags a model file trained here records (mode, clip frames, frame stride, crop, resize) are
its defaults; a flag given explicitly wins, with a one-line notice. A published checkpoint
(-load_model rgb_scratch, or a file named after one) scores a video dataset on the input
weights.py records for it (the Kinetics models: smaller side 256, center crop 224), so
DeepMind's figures can be checked on a Kinetics validation CSV as they are:

    python eval_i3d.py -load_model rgb_scratch --split kinetics_400_val.csv -root kinetics400/val --json

Charades:

    python eval_i3d.py -mode rgb -root data/Charades_v1_rgb --split data/charades.json -load_model models/rgb_charades.pt
    python eval_i3d.py -mode rgb -root RGB_ROOT --split Charades_v1_test.csv -load_model rgb.pt \\
        --flow-root FLOW_ROOT --flow-model flow.pt --json

What is computed, for every video of the subset (default: testing) found under -root:
- The whole video goes through the network at once, exactly and in bounded memory
  (streaming.stream_logits: every layer streams over chunks and keeps just the frames it
  still needs, equal to the single whole-video pass). Frames: the Charades rule (upscale only when the smaller side is under
  226; --resize N for smaller side N), center crop --crop (224).
- The logits layer (a 1x1x1 convolution) on the pooled features gives per-time logits
  (C, T'), T' = ceil(T/8) - 1, upsampled to the video's T frames as training does
  (upsample_logits: linear, align_corners=False, the default of the original's F.upsample in
  today's PyTorch), and the per-frame probabilities are their sigmoid, (C, T).
- Classification (Charades_v1_classify): a video's score for a class is the max over its
  frames of that probability; its labels are the classes in its annotated actions.
- Localization (Charades_v1_localize): 25 time points per video, t_j = j / 25 * duration
  (j = 0..24); each is one item, scored by the probabilities of frame round(t_j * fps) and
  labelled with the actions for which start <= t_j <= end (the official rule).
- mAP: the mean over classes that have at least one positive (others skipped, as the
  official scripts' NaN handling) of the average precision; see average_precision.
- Two streams (--flow-model): the per-frame probabilities of the RGB and flow models are
  averaged (--fusion prob, default; the late fusion of the I3D paper, which averaged
  predictions) or their logits are averaged before the sigmoid (--fusion logit). A flow
  video with a different frame count is resampled to the RGB count.

Output: one line of the two mAPs (or --json: {"classification_map", "localization_map",
"videos", ...}); --submission PREFIX also writes the official submission files
PREFIX_classify.txt and PREFIX_localize.txt. A video that cannot be read is skipped, named at
the end, and the exit status is 1.

The library parts live in charades_eval.py (video_frame_probs, evaluate; training's validation
uses them), charades_metrics.py (ground truth, upsample_logits), metrics.py (AP, mAP, accuracy)
and streaming.py.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np

import atomic_io
import video_eval
import weights
from charades_metrics import LOCALIZE_POINTS
from charades_eval import evaluate
from errors import UserError
from video_datasets import FORMATS, LabelledVideos, detect_format, read_dataset, read_recipe
import metrics
from cli import (add_allow_gaps, add_data_args, add_device, add_precision, add_verbosity, add_workers, apply_recorded,
                 keep_freed_memory, nonneg_float, nonneg_int, positive_int, run_main, start)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Submission files
# ----------------------------------------------------------------------------------------------

def write_submission(prefix: str | Path, result: dict) -> tuple[Path, Path]:
    """The official submission files of evaluate(..., details=True): PREFIX_classify.txt
    ('VID s0 s1 ...' per video) and PREFIX_localize.txt ('VID FRAME s0 s1 ...', frames 0..24)."""
    prefix = Path(prefix)
    cls_path, loc_path = Path(f"{prefix}_classify.txt"), Path(f"{prefix}_localize.txt")
    atomic_io.atomic_write_bytes(cls_path, "".join(f"{v} " + " ".join(f"{s:.6g}" for s in row) + "\n"
                               for v, row in zip(result["vids"], result["video_scores"])).encode())
    rows = result["frame_scores"].reshape(len(result["vids"]), LOCALIZE_POINTS, -1)
    atomic_io.atomic_write_bytes(loc_path, "".join(f"{v} {j} " + " ".join(f"{s:.6g}" for s in rows[i, j]) + "\n"
                               for i, v in enumerate(result["vids"]) for j in range(LOCALIZE_POINTS)).encode())
    return cls_path, loc_path


# ----------------------------------------------------------------------------------------------
# Video datasets: outputs
# ----------------------------------------------------------------------------------------------

def _csv_bytes(rows: list[list]) -> bytes:
    f = io.StringIO(newline="")
    csv.writer(f).writerows(rows)
    return f.getvalue().encode()


def class_names(data: LabelledVideos, recipe: dict | None) -> list[str]:
    names = (recipe or {}).get("classes")
    return list(names) if names and len(names) == data.num_classes else data.classes


def write_per_class(path: Path, result: dict, names: list[str]) -> None:
    """class, name, videos, correct (top-1), accuracy."""
    y = np.array([ls[0] for ls in result["labels"]])
    pred = result["probs"].argmax(axis=1)
    rows = [["class", "name", "videos", "correct", "accuracy"]]
    for c, name in enumerate(names):
        n, hit = int((y == c).sum()), int(((y == c) & (pred == c)).sum())
        rows.append([c, name, n, hit, f"{hit / n:.6f}" if n else ""])
    atomic_io.atomic_write_bytes(path, _csv_bytes(rows))


def write_predictions(path: Path, result: dict, names: list[str]) -> None:
    """video, true class(es), predicted, then the top 5 as name:probability."""
    rows = [["video", "true", "predicted", "top5"]]
    for key, probs, labels in zip(result["keys"], result["probs"], result["labels"]):
        top = np.argsort(-probs, kind="stable")[:5]
        rows.append([key, ";".join(names[i] for i in labels), names[top[0]],
                     " ".join(f"{names[i]}:{probs[i]:.4f}" for i in top)])
    atomic_io.atomic_write_bytes(path, _csv_bytes(rows))


def write_confusion(path: Path, result: dict, names: list[str]) -> None:
    """The confusion matrix (rows true, columns predicted) as a PNG, rows normalised."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.array([ls[0] for ls in result["labels"]])
    m = metrics.confusion_matrix(result["probs"], y, len(names)).astype(np.float64)
    m /= np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = min(30, 3 + 0.25 * len(names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 60:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_io.atomic_write_bytes(path, buf.getbuffer())


# ----------------------------------------------------------------------------------------------
# Defaults from the model file
# ----------------------------------------------------------------------------------------------

RECIPE_FLAGS = {"mode": "-mode", "clip_frames": "--clip-frames", "frame_stride": "--frame-stride", "crop": "--crop",
                "resize": "--resize"}


def evaluate_videos(args: argparse.Namespace, recipe: dict | None) -> int:
    """Evaluation of a video dataset (not Charades); returns the exit status."""
    num = (recipe or {}).get("num_classes") or weights.infer_config(
        weights.load_state_dict(weights.resolve_weights(args.load_model)))[0]
    data = read_dataset(args.split, args.root, args.subset, args.format, args.fold, args.val_fraction, args.seed,
                        num_classes=num if (args.format or detect_format(args.split or [])) == "list" else None)
    result = video_eval.evaluate(args.load_model, data, args.mode, flow_model=args.flow_model,
                                 flow_root=args.flow_root, resize=args.resize, crop=args.crop, device=args._device,
                                 precision=args.precision, clip_frames=args.clip_frames, frame_stride=args.frame_stride,
                                 views=args.views, crops=args.crops, max_videos=args.max_videos,
                                 progress=not args.quiet)
    names = class_names(data, recipe)
    for flag, write in ((args.per_class, write_per_class), (args.predictions, write_predictions),
                        (args.confusion, write_confusion)):
        if flag is not None:
            write(flag, result, names)
            log.info("wrote %s", flag)
    summary = {k: result.get(k) for k in ("top1", "top5", "mean_class_accuracy", "map", "videos", "missing")
               if k in result}
    summary.update(failed=result["failed"], missing_videos=result["missing_videos"], num_classes=data.num_classes,
                   format=data.format, precision=args.precision, precision_reason=args.precision_reason)
    if args.json:
        print(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}))
    else:
        mca = result["mean_class_accuracy"]
        print(f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  mean class accuracy "
              + (f"{mca:.4f}" if mca is not None else "n/a (multi-label)")
              + (f"  mAP {result['map']:.4f}" if "map" in result else "")
              + f"  ({result['videos']} videos, {data.num_classes} classes, {result['missing']} missing, "
                f"{len(result['failed'])} unreadable)")
    for path, where in result["missing_videos"]:
        log.warning("missing: %s (%s)", path, where)
    for key, msg in result["failed"]:
        log.error("unreadable: %s", msg)
    if (result["failed"] or result["missing_videos"]) and not args.skip_bad:
        log.error("%d video(s) missing and %d unreadable (--skip-bad accepts that)", len(result["missing_videos"]),
                  len(result["failed"]))
        return 1
    return 0


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-mode", "--mode", choices=("rgb", "flow"), default="rgb",
                   help="stream of -load_model (default: the one its file records, else rgb)")
    p.add_argument("-root", "--root", type=Path, required=True,
                   help="Charades frames root (ROOT/VID/VID-000001.jpg) or the videos' root (ROOT/CLASS/video.mp4)")
    p.add_argument("-split", "--split", type=Path, nargs="+", default=None,
                   help="split files, format detected: charades.json / Charades CSVs, UCF101 classInd.txt + "
                        "testlistNN.txt (or their folder), HMDB51 *_test_splitN.txt, a Kinetics CSV, a 'path label' "
                        "list; none: class folders under -root")
    p.add_argument("--format", choices=FORMATS, default=None, help="force the dataset format (default: detected)")
    p.add_argument("--fold", type=positive_int, default=1, help="UCF101 / HMDB51 split number")
    p.add_argument("--val-fraction", type=nonneg_float, default=0.0,
                   help="class folders: the held-out fraction of each class (as in training, with --seed)")
    p.add_argument("--seed", type=int, default=0, help="class folders with --val-fraction: training's --seed")
    p.add_argument("--views", type=nonneg_int, default=0,
                   help="video datasets: N uniformly spaced clips of --clip-frames instead of the whole video (0)")
    p.add_argument("--crops", type=int, choices=(1, 3), default=1, help="with --views: 1 center or 3 crops per clip")
    p.add_argument("--frame-stride", type=positive_int, default=1, help="with --views: every N-th frame")
    p.add_argument("--skip-bad", action="store_true",
                   help="missing or unreadable videos are listed but do not make the exit status 1")
    p.add_argument("--per-class", type=Path, default=None, help="video datasets: per-class accuracy CSV")
    p.add_argument("--predictions", type=Path, default=None,
                   help="video datasets: CSV of video, true, predicted, top-5 with probabilities")
    p.add_argument("--confusion", type=Path, default=None, help="video datasets: confusion matrix PNG")
    p.add_argument("-load_model", "--load-model", required=True, help="weights (.pt path or a weights.py name)")
    p.add_argument("--flow-model", default=None, help="flow weights: two-stream evaluation with -mode rgb")
    p.add_argument("--flow-root", type=Path, default=None,
                   help="flow frames root (with --flow-model, or -mode flow on a video dataset: dense_flow.py "
                        "folders mirroring the videos' layout)")
    p.add_argument("--fusion", choices=("prob", "logit"), default="prob",
                   help="two streams: average the per-frame probabilities (default) or the logits")
    p.add_argument("--subset", choices=("training", "testing"), default="testing")
    add_data_args(p)  # --clip-frames, --crop, --resize: training's flags and defaults
    add_device(p)
    add_precision(p, "fp32", "scores as the references compute them; bf16/fp16 are faster")
    add_workers(p, min(4, os.cpu_count() or 1), "threads decoding frames ahead of the network (0: none)")
    p.add_argument("--max-videos", type=positive_int, default=None, help="only the first N videos (sorted), for a quick look")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--submission", type=Path, default=None,
                   help="also write the official submission files PREFIX_classify.txt / PREFIX_localize.txt")
    add_allow_gaps(p)
    add_verbosity(p)
    args = p.parse_args(argv)
    if args.flow_model is not None and args.flow_root is None:
        p.error("--flow-model needs --flow-root")
    if args.flow_model is not None and args.mode != "rgb":
        p.error("two-stream evaluation: -load_model is the RGB model (-mode rgb), --flow-model the flow one")
    return args


def published_input(load_model: str | Path) -> dict | None:
    """The input a published checkpoint was trained on (weights.py's record: DeepMind's Kinetics
    models 256 / 224), or None for a file that is not one."""
    info = weights.weights_info(load_model)
    return {"resize": info.preprocessing.resize, "crop": info.preprocessing.crop} if info else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    recipe = read_recipe(weights.resolve_weights(args.load_model))
    apply_recorded(args, argv, recipe, RECIPE_FLAGS)  # unless given, the flags the model was trained with
    fmt = args.format or (detect_format(args.split) if args.split else "folders")
    if recipe is None and fmt != "charades":  # a published checkpoint scores on its own input (Kinetics)
        apply_recorded(args, argv, published_input(args.load_model), {"resize": "--resize", "crop": "--crop"})
    device = args._device = start(args)
    if fmt != "charades":
        return evaluate_videos(args, recipe)
    if args.flow_model is None and args.flow_root is not None:
        raise UserError("Charades: --flow-root goes with --flow-model")
    result = evaluate(args.load_model, args.split, args.root, args.mode, subset=args.subset,
                      flow_model=args.flow_model, flow_root=args.flow_root, fusion=args.fusion,
                      resize=args.resize, crop=args.crop, clip_frames=args.clip_frames, device=device, precision=args.precision,
                      max_videos=args.max_videos, workers=args.workers, details=args.submission is not None,
                      progress=not args.quiet)
    if args.submission is not None:
        for path in write_submission(args.submission, result):
            log.info("wrote %s", path)
    summary = {k: v for k, v in result.items() if not isinstance(v, np.ndarray) and k != "vids"}
    summary.update(precision=args.precision, precision_reason=args.precision_reason)
    if args.json:  # strict JSON: an undefined mAP (no class with a positive) is null, not NaN
        print(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}))
    else:
        print(f"classification mAP {result['classification_map']:.4f}  localization mAP "
              f"{result['localization_map']:.4f}  ({result['videos']} videos, {result['classes_scored']} classes; "
              f"chance {result['classification_chance']:.4f} / {result['localization_chance']:.4f})")
    if result["failed"]:
        log.error("%d video(s) could not be evaluated:", len(result["failed"]))
        for vid, msg in result["failed"]:
            log.error("  %s: %s", vid, msg)
        return 1
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # streamed chunks reuse freed memory (see cli.keep_freed_memory)
    run_main(main)
