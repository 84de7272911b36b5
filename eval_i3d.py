"""Charades mAP of I3D models: classification over whole videos and per-frame localization.

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

The library parts live in charades_metrics.py (mean_average_precision, average_precision,
upsample_logits, video_frame_probs, evaluate; training's validation uses them) and streaming.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

import atomic_io
from charades_metrics import LOCALIZE_POINTS, evaluate
from cli import (add_allow_gaps, add_data_args, add_device, add_precision, add_verbosity, add_workers, keep_freed_memory,
                 positive_int, run_main, start)

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
# Command line
# ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-mode", "--mode", choices=("rgb", "flow"), default="rgb", help="stream of -load_model")
    p.add_argument("-root", "--root", type=Path, required=True, help="frames root: ROOT/VID/VID-000001.jpg")
    p.add_argument("-split", "--split", type=Path, nargs="+", required=True,
                   help="charades.json and/or Charades_v1_test.csv (merged)")
    p.add_argument("-load_model", "--load-model", required=True, help="weights (.pt path or a weights.py name)")
    p.add_argument("--flow-model", default=None, help="flow weights: two-stream evaluation with -mode rgb")
    p.add_argument("--flow-root", type=Path, default=None, help="flow frames root (with --flow-model)")
    p.add_argument("--fusion", choices=("prob", "logit"), default="prob",
                   help="two streams: average the per-frame probabilities (default) or the logits")
    p.add_argument("--subset", choices=("training", "testing"), default="testing")
    add_data_args(p)  # --clip-frames, --crop, --resize: training's flags and defaults
    add_device(p)
    add_precision(p, "fp32", "mAP as the reference computes it; bf16/fp16 are faster")
    add_workers(p, min(4, os.cpu_count() or 1), "threads decoding frames ahead of the network (0: none)")
    p.add_argument("--max-videos", type=positive_int, default=None, help="only the first N videos (sorted), for a quick look")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--submission", type=Path, default=None,
                   help="also write the official submission files PREFIX_classify.txt / PREFIX_localize.txt")
    add_allow_gaps(p)
    add_verbosity(p)
    args = p.parse_args(argv)
    if (args.flow_model is None) != (args.flow_root is None):
        p.error("--flow-model and --flow-root go together")
    if args.flow_model is not None and args.mode != "rgb":
        p.error("two-stream evaluation: -load_model is the RGB model (-mode rgb), --flow-model the flow one")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start(args)
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
