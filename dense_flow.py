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

A video is finished when OUT/VID/.dense_flow.done exists (written last); a folder without it
is done again (other files in it, such as RGB frames of the same root, are kept).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from errors import DiskFullError, FrameError, UserError
from runtime import select_device, stop_pool
from cli import add_device, add_resize_crop, add_verbosity, add_workers, positive_int, progress, run_main, start
from atomic_io import atomic_write_bytes, clean_stale_temps, file_lock, temp_dir_for, write_bytes_checked
from frame_io import (charades_frame_name, is_video_file, iter_frames, list_frame_files, read_list, refuse_text_file,
                      video_info, write_image)
from tvl1 import (METHODS, compile_available, compile_cached, compute_flow, flow_to_color, flow_to_uint8,
                  start_pool)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Videos -> Charades-layout flow (and RGB) frames
# ---------------------------------------------------------------------------------------------

def video_id(src: str | Path) -> str:
    """VID of an input: a video's file name without extension, a frame folder's name."""
    src = Path(src)
    return src.stem if is_video_file(src) else src.name


DONE_MARKER = ".dense_flow.done"  # OUT/VID/.dense_flow.done, written last: the video is complete


def is_done(out_root: str | Path, vid: str) -> bool:
    """Whether OUT/VID holds a finished video (its marker). A folder without the marker (a
    killed run's, an older version's, or RGB frames of the same root) is done again."""
    return (Path(out_root) / vid / DONE_MARKER).is_file()


def _commit_video(out_root: Path, vid: str, tmp: Path) -> None:
    """Move a finished temporary folder to OUT/VID under the output's lock: renamed there with
    the marker inside, or, when OUT/VID already holds other files (RGB frames in the same root),
    the files moved in and the marker written last. A video another process finished meanwhile
    is left as it is (the temporary is removed)."""
    dest = out_root / vid
    marker = json.dumps({"vid": vid, "flow_frames": len(list(tmp.glob("*x.jpg")))}).encode()
    with file_lock(out_root):
        if is_done(out_root, vid):
            shutil.rmtree(tmp, ignore_errors=True)
        elif not dest.exists():
            atomic_write_bytes(tmp / DONE_MARKER, marker)
            os.replace(tmp, dest)
        else:
            for f in sorted(tmp.iterdir()):
                os.replace(f, dest / f.name)
            tmp.rmdir()
            atomic_write_bytes(dest / DONE_MARKER, marker)


@contextlib.contextmanager
def _video_dir(out_root: Path, vid: str) -> Iterator[Path]:
    """A temporary folder for one video's frames, committed to OUT/VID (_commit_video) when the
    block ends, removed on error."""
    tmp = temp_dir_for(out_root / vid)
    try:
        yield tmp
        _commit_video(out_root, vid, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_flow(folder: Path, vid: str, index: int, flow: np.ndarray) -> None:
    x, y = flow_to_uint8(flow)
    write_image(folder / charades_frame_name(vid, index, "x"), x)
    write_image(folder / charades_frame_name(vid, index, "y"), y)


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
    if is_done(out_root, vid):  # e.g. finished by another process since this one listed it
        return json.loads((out_root / vid / DONE_MARKER).read_text())["flow_frames"]
    # a killed run's temporaries of this video only (never clip.v2's, never a live process's)
    clean_stale_temps(out_root, vid)
    with _video_dir(out_root, vid) as tmp:
        n = extract_range(src, tmp, 0, None, method=method, rgb=rgb, resize=resize, device=device, batch=batch,
                          visualize=visualize, compile_step=compile_step)
        finish_video(src, tmp, n)
    return n


def extract_range(src: str | Path, folder: str | Path, start: int, stop: int | None, method: str = "tvl1",
                  rgb: bool = False, resize: int = 256, device: str | torch.device = "cpu", batch: int = 8,
                  visualize: bool = False, compile_step: bool = False) -> int:
    """One worker's share of a video: the flows of pairs start..stop-1 (pair i: frame i -> i+1,
    0-based; stop None: to the end), written as FOLDER/VID-%06dx.jpg with index i+1, and with
    rgb frames start..stop-1 (to the end when stop is None). Returns the index after the last
    frame decoded (the video's length for the range that reads to the end). The flow files do
    not depend on how a video is split: each pair is solved on its own."""
    src, folder = Path(src), Path(folder)
    vid = video_id(src)
    batch = max(1, batch)
    frames = iter_frames(src, resize=resize, start=start)
    if stop is not None:
        frames = itertools.islice(frames, stop - start + 1)  # frame `stop` ends the last pair
    n, prev, vis_flow = start, None, None
    for chunk in _chunks(frames, batch):
        grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in chunk]
        if rgb:
            for k, f in enumerate(chunk):
                if stop is None or n + k < stop:
                    write_image(folder / charades_frame_name(vid, n + k + 1), f)
        stack = np.stack(([prev] if prev is not None else []) + grays)
        if len(stack) >= 2:
            flows = compute_flow(stack, method=method, device=device, batch=batch, compile_step=compile_step)
            first = n if prev is not None else n + 1  # 1-based index of the first flow of this chunk
            for k, fl in enumerate(flows):
                _write_flow(folder, vid, first + k, fl)
            if vis_flow is None and visualize and start == 0:
                vis_flow = flows[len(flows) // 2]
                write_image(folder / "flow_vis.png", flow_to_color(vis_flow))
        n += len(chunk)
        prev = grays[-1]
    return n


def finish_video(src: str | Path, folder: str | Path, n: int) -> None:
    """After all ranges of a video: frame N repeats flow N-1 (a copy of its files) so that flow
    and RGB counts match; checks that every flow 1..N-1 is there."""
    src, folder = Path(src), Path(folder)
    vid = video_id(src)
    if n < 2:
        raise FrameError(f"{src}: {n} frame(s), flow needs at least two")
    for axis in "xy":
        missing = [i for i in range(1, n) if not (folder / charades_frame_name(vid, i, axis)).is_file()]
        if missing:
            raise FrameError(f"{src}: flow frame {missing[0]} missing after all ranges finished")
        write_bytes_checked(folder / charades_frame_name(vid, n, axis),
                            (folder / charades_frame_name(vid, n - 1, axis)).read_bytes())


def split_pairs(count: int, parts: int) -> list[tuple[int, int | None]]:
    """Contiguous (start, stop) ranges of pairs for `parts` workers on a video of about `count`
    frames (the container's figure): the last range reads to the end whatever the true length."""
    pairs = count - 1
    parts = max(1, min(parts, pairs // 2))
    bounds = [round(k * pairs / parts) for k in range(parts)] + [None]
    return list(zip(bounds[:-1], bounds[1:]))


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write_test."):
            pass
    except OSError as e:
        raise UserError(f"{out}: output folder cannot be written ({e.strerror or e})") from e


def _job(args: tuple) -> tuple[str, int, str | None]:
    """One pool job: a whole video (src, kwargs), or a range of its pairs (src, kwargs, folder,
    start, stop). Returns (src, frames or range end, error)."""
    src, kwargs = args[:2]
    try:
        if kwargs.get("compile_step") is not False:  # a worker finds out itself whether it can compile
            kwargs = {**kwargs, "compile_step": compile_available(torch.device(kwargs["device"]))}
        if len(args) == 2:
            return str(src), extract_video(src, **kwargs), None
        folder, start, stop = args[2:]
        kwargs = {k: v for k, v in kwargs.items() if k != "out_root"}
        return str(src), extract_range(src, folder, start, stop, **kwargs), None
    except DiskFullError:
        raise  # stops the job: every later video would fail too
    except (FrameError, UserError, ValueError, OSError) as e:
        return str(src), 0, str(e)
    except Exception as e:  # an unexpected failure of one video must not stop the others
        return str(src), 0, f"{src}: {e.__class__.__name__}: {e}"


def _frame_count(src: str | Path) -> int:
    """Frames of a folder, or the container's count of a video (0 if unknown or unreadable)."""
    try:
        return len(list_frame_files(src)) if Path(src).is_dir() else video_info(src)[0]
    except FrameError:
        return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="video files or folders of frame images")
    parser.add_argument("-o", "-out", "--out", required=True, help="output root: OUT/VID/VID-000001x.jpg ...")
    parser.add_argument("-list", "--list", help="text file with one input per line, relative to the list file "
                                                "(added to INPUT...)")
    parser.add_argument("-method", "--method", default="tvl1", choices=METHODS)
    parser.add_argument("-rgb", "--rgb", action="store_true", help="also write the RGB frames VID-000001.jpg")
    add_resize_crop(parser, 256, with_crop=False,
                    resize_help="smaller side of the frames the flow is computed on (0 keeps the size)")
    add_workers(parser, None, "processes, one thread each (default: one per core on CPU, 1 on CUDA); fewer "
                              "videos than workers: each video's pairs are split between them")
    add_device(parser, " (method tvl1)")
    parser.add_argument("-batch", "--batch", type=positive_int, default=8, help="frame pairs computed at once")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the TV-L1 iteration (default: on; about 30 s to compile once, "
                             "cached on disk; falls back to eager if it fails)")
    parser.add_argument("-visualize", "--visualize", action="store_true",
                        help="also write OUT/VID/flow_vis.png, the HSV-coded flow of the middle frame")
    add_verbosity(parser)
    args = parser.parse_args(argv)
    if args.workers == 0:
        parser.error("argument --workers/-workers: 0: must be at least 1")
    return args


def gather_inputs(args: argparse.Namespace) -> list[str]:
    """INPUT... and the --list entries (relative to the list file), each checked to exist and
    their video names unique, before any work."""
    inputs = list(args.inputs) + ([str(p) for p in read_list(args.list)] if args.list else [])
    if not inputs:
        raise UserError("no input videos or frame folders given")
    for p in inputs:
        if not Path(p).exists():
            raise UserError(f"{p}: no such video or frame folder")
        refuse_text_file(p)
    vids = [video_id(p) for p in inputs]
    dup = sorted({v for v in vids if vids.count(v) > 1})
    if dup:
        raise UserError(f"several inputs share the video name(s) {', '.join(dup)}")
    return inputs


def plan_jobs(todo: list[str], workers: int, device: torch.device, kwargs: dict, out: Path) -> tuple[list, dict]:
    """The pool's jobs: a whole video each, or, with fewer videos than workers on CPU, each
    video's pairs split into contiguous ranges solved into the video's temporary folder (the
    parent finishes it). Returns (jobs, {src: split video's state})."""
    parts = workers // len(todo) if todo and device.type == "cpu" and workers > len(todo) else 1
    jobs: list[tuple] = []
    split: dict[str, dict] = {}
    for p in todo:
        ranges = split_pairs(_frame_count(p), parts) if parts > 1 else [(0, None)]
        if len(ranges) == 1:
            jobs.append((p, kwargs))
            continue
        clean_stale_temps(out, video_id(p))  # a killed run's temporaries of this video only
        folder = temp_dir_for(out / video_id(p))
        split[str(p)] = dict(folder=folder, left=len(ranges), n=0, error=None)
        jobs += [(p, kwargs, folder, a, b) for a, b in ranges]
    return jobs, split


def _start_pool(workers: int, jobs: list, device: torch.device, kwargs: dict, compile_step: bool):
    """tvl1.start_pool's workers for the jobs, one thread each (or a share of the cores)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    if device.type == "cpu":
        torch.set_num_threads(threads)  # before any parallel region (the compile): forking is then safe
    pool, kwargs["compile_step"] = start_pool(min(workers, len(jobs)), threads, device, compile_step)
    return pool


def _finish_split(out: Path, src: str, v: dict) -> str | None:
    """All ranges of a split video are in: finish and commit it; the error, if any (its
    temporary folder is then removed)."""
    try:
        if v["error"]:
            raise FrameError(v["error"])
        finish_video(src, v["folder"], v["n"])
        _commit_video(out, video_id(src), v["folder"])
        return None
    except (FrameError, OSError) as e:
        shutil.rmtree(v["folder"], ignore_errors=True)
        return str(e)


def collect(results, split: dict[str, dict], out: Path, total: int, quiet: bool,
            done_before: int = 0) -> list[tuple[str, str]]:
    """Take the jobs' results as they come, finishing each split video when its last range is
    in; returns the failures [(src, error)]. `done_before`: videos finished by earlier runs."""
    failures: list[tuple[str, str]] = []
    finished = 0
    progress(done_before, done_before + total)  # what a stop reports (cli.run_main)
    with tqdm(total=total, desc="videos", unit="video", disable=not total or quiet) as bar:
        for src, n, err in results:
            v = split.get(src)
            if v is not None:
                v["left"] -= 1
                v["n"], v["error"] = max(v["n"], n), v["error"] or err
                if v["left"]:
                    continue
                err = _finish_split(out, src, v)
            bar.update(1)
            if err:
                failures.append((src, err))
            else:
                finished += 1
                progress(done_before + finished, done_before + total)
                log.debug("%s: %d frames", src, n)
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = gather_inputs(args)  # before anything else: bad input is one line
    start(args)
    out = Path(args.out)
    _check_writable(out)
    device = select_device(args.device) if args.method == "tvl1" else torch.device("cpu")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1) if device.type == "cpu" else 1
    todo = [p for p in inputs if not is_done(out, video_id(p))]  # finished videos (marker) are skipped
    if len(todo) < len(inputs):
        log.info("%d of %d videos already done, skipped", len(inputs) - len(todo), len(inputs))
    compile_step = args.method == "tvl1" and args.compile is not False  # workers try it, else eager
    if compile_step and not compile_cached():
        log.info("compiling the TV-L1 kernels for this machine (first run only, about 15-35 s; cached on disk)")
    kwargs = dict(out_root=out, method=args.method, rgb=args.rgb, resize=args.resize, device=str(device),
                  batch=args.batch, visualize=args.visualize, compile_step=compile_step)
    # one thread per pair stream (as each --workers process gets): the fused TV-L1 kernels are
    # memory bound, and with 2 OpenMP threads every kernel waits at a barrier whenever another
    # process holds a core (measured 5-10x slower on a shared machine)
    saved_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    jobs, split = plan_jobs(todo, workers, device, kwargs, out)
    progress(len(inputs) - len(todo), len(inputs))  # what a stop says while the pool compiles and forks
    pool = None
    try:  # (a stop while the pool compiles or forks leaves no split video's temporaries either)
        if workers > 1 and len(jobs) > 1:
            pool = _start_pool(workers, jobs, device, kwargs, compile_step)
        results = pool.imap_unordered(_job, jobs) if pool is not None else map(_job, jobs)
        failures = collect(results, split, out, len(todo), args.quiet, len(inputs) - len(todo))
    finally:
        if pool is not None:
            stop_pool(pool)
            for p in todo:  # the temporaries of whole videos the (now ended) workers had in progress
                clean_stale_temps(out, video_id(p))
        for v in split.values():  # a split video not committed (stopped, or failed): its temporaries go
            shutil.rmtree(v["folder"], ignore_errors=True)
        torch.set_num_threads(saved_threads)  # main() is also called in-process (tests, notebooks)
    if failures:
        for src, err in failures:
            print(f"dense_flow.py: failed: {err}", file=sys.stderr)
        print(f"dense_flow.py: {len(failures)} of {len(todo)} videos failed", file=sys.stderr)
        return 1
    log.info("%d videos written to %s", len(todo), out)
    return 0


if __name__ == "__main__":
    run_main(main)
