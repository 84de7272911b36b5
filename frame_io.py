"""The one place frames come in and go out: decode videos and frame folders, resize, crop,
scale to the models' [-1, 1] range, write JPEG frames (through atomic_io's checked write path).

Frames are numpy uint8 arrays, RGB (H, W, 3) or single-channel (H, W), until `to_model_range`
turns a stack of them into float32 at the very end (no float64 anywhere).

Layouts:
- a video file: anything OpenCV decodes (mp4, avi, webm, mkv, gif, ...);
- a frame folder: read by kind from its file names (list_frame_files: RGB, flow x/y pairs,
  or plain images), the same in every job;
- Charades / pytorch-i3d: `root/VID/VID-000001.jpg` (RGB) and `VID-000001x.jpg`, `...y.jpg` (flow).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from errors import FrameError

from atomic_io import write_bytes_checked

cv2.setNumThreads(1)  # decoding runs in DataLoader workers / threads of our own
log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".flv", ".wmv", ".ogv", ".3gp"}


MODE_CHANNELS = {"rgb": 3, "flow": 2}  # channels of a frame (and of a model's input) per stream


ALLOW_GAPS_ENV = "I3D_ALLOW_GAPS"  # set by --allow-gaps (cli.apply_allow_gaps); inherited by workers


def allow_gaps() -> bool:
    """Whether a missing frame in a numbered sequence is skipped (--allow-gaps) or an error."""
    return os.environ.get(ALLOW_GAPS_ENV, "") == "1"


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def is_video_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTS


LIST_EXTS = {".txt", ".lst"}  # a list of inputs: one path per line


def read_lines(path: str | Path, error: type[Exception] = FrameError) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a text file (a UTF-8 BOM is
    dropped): the one reader of every list and split file; an unreadable or binary file raises
    `error` naming it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file") from None
    return [(i, s.strip()) for i, s in enumerate(text.splitlines(), 1) if s.strip()]


def read_list(path: str | Path) -> list[Path]:
    """The inputs a list file names, one per line ('#' comments and blank lines skipped),
    relative to the list file's folder (absolute paths stay as they are), in every job alike.
    A file that is not a list is refused: another suffix (README.md), unreadable text, or no
    line naming an existing file or folder."""
    path = Path(path)
    if not path.is_file():
        raise FrameError(f"{path}: no such list file")
    if path.suffix.lower() not in LIST_EXTS:
        raise FrameError(f"{path}: not a list of inputs (a list is a {' or '.join(sorted(LIST_EXTS))} file, "
                         f"one video or frame folder per line)")
    entries = [path.parent / line for _, line in read_lines(path) if not line.startswith("#")]
    if entries and not any(p.exists() for p in entries):
        raise FrameError(f"{path}: not a list of inputs: none of its {len(entries)} entries exists "
                         f"(entries are relative to the list file's folder)")
    return entries


# Frame folders are read by kind, from the file names (stems), the same way in every job:
# - flow: `...x.jpg` / `...y.jpg` pairs, a number then x or y (dense_flow.py's VID-000001x.jpg);
# - rgb: numbered frames without that suffix (VID-000001.jpg, frame_0001.png); a folder with no
#   numbered frame of either kind is read as plain images sorted by name;
# any other image beside numbered frames (dense_flow's flow_vis.png, a cover.jpg) is named in a
# warning and not read. So a folder dense_flow.py filled with RGB, flow and flow_vis.png reads
# as its RGB frames for RGB and as its x/y pairs for flow.
FRAME_KINDS = ("rgb", "flow")
_FLOW_STEM = re.compile(r"^.*\d[xy]$")
_RGB_STEM = re.compile(r"^.*\d$")
_warned_folders: set[tuple[str, str]] = set()


def frame_kind(name: str | Path) -> str | None:
    """'flow' (…0001x.jpg / …0001y.jpg), 'rgb' (…0001.jpg) or None (no frame number)."""
    stem = Path(name).stem
    return "flow" if _FLOW_STEM.match(stem) else "rgb" if _RGB_STEM.match(stem) else None


def refuse_text_file(path: str | Path) -> None:
    """A text file given where a video is expected (README.md, notes, a list without .txt) is
    refused in one line instead of failing later as an unreadable video: video containers hold
    NUL bytes in their first 4 KiB (box / chunk sizes), text files do not."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() in LIST_EXTS:
        return
    with path.open("rb") as f:
        head = f.read(4096)
    if head and b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return
        raise FrameError(f"{path}: a text file, not a video (a list of inputs is a {' or '.join(sorted(LIST_EXTS))} "
                         f"file)")


def list_frame_files(folder: str | Path, kind: str = "rgb") -> list[Path]:
    """The frame images of `kind` in a folder, sorted by name (flow: the x file of each pair).
    Images of no kind beside numbered frames are named in a warning (once per folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FrameError(f"{folder}: not a folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    kinds = {p: frame_kind(p) for p in images}
    if not any(kinds.values()):  # plain images, nothing numbered: RGB frames by name
        if kind == "flow" and images:
            raise FrameError(f"{folder}: no flow frames (*x.jpg / *y.jpg)")
        return images
    other = [p.name for p, k in kinds.items() if k is None]
    if other and (str(folder), kind) not in _warned_folders:
        _warned_folders.add((str(folder), kind))
        log.warning("%s: %d file(s) that are not %s frames ignored: %s", folder, len(other), kind,
                    ", ".join(other[:5]) + (" ..." if len(other) > 5 else ""))
    if kind == "flow":
        files = [p for p, k in kinds.items() if k == "flow" and p.stem.endswith("x")]
    else:
        files = [p for p, k in kinds.items() if k == "rgb"]
    return _check_numbering(files)


_NUMBERED = re.compile(r"^(.*?)(\d+)([xy]?)$")


def _check_numbering(files: list[Path]) -> list[Path]:
    """Numbered frames (frame_0001.png, VID-000001x.jpg ...) must be consecutive: a gap is a
    FrameError naming the first missing file; with --allow-gaps the missing ones are skipped
    (the frames there are used, in order). Unnumbered names are not checked."""
    groups: dict[tuple[str, str, str, int], list[int]] = {}
    for f in files:
        m = _NUMBERED.match(f.stem)
        if m is None:  # e.g. dense_flow's flow_vis.png beside the frames
            continue
        groups.setdefault((m[1], m[3], f.suffix, len(m[2])), []).append(int(m[2]))
    for (prefix, tail, ext, width), nums in groups.items():
        nums.sort()
        for a, b in zip(nums, nums[1:]):
            if b != a + 1:
                missing = files[0].with_name(f"{prefix}{a + 1:0{width}d}{tail}{ext}")
                if not allow_gaps():
                    raise FrameError(f"{missing}: missing frame (frames are numbered with a gap; "
                                     f"--allow-gaps skips missing frames)")
                log.warning("%s: missing frame, skipped (--allow-gaps)", missing)
                break
    return files


def read_image(path: str | Path, gray: bool = False) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), or (H, W) with gray=True."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise FrameError(f"{path}: missing frame")
    img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise FrameError(f"{path}: corrupt or unreadable image")
    return img if gray else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_smaller_side(img: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize so the smaller side is `size` pixels (aspect kept); size 0 keeps the image."""
    h, w = img.shape[:2]
    if size <= 0 or min(h, w) == size:
        return img
    if h <= w:
        new_h, new_w = size, max(1, round(w * size / h))
    else:
        new_h, new_w = max(1, round(h * size / w)), size
    return cv2.resize(img, (new_w, new_h), interpolation=interpolation)


def upscale_if_smaller(img: np.ndarray, min_side: int) -> np.ndarray:
    """The original pytorch-i3d rule: scale up (aspect kept) only when the smaller side is under
    `min_side` (226 for RGB, 224 for flow), to a smaller side of exactly `min_side`."""
    h, w = img.shape[:2]
    if min(h, w) >= min_side:
        return img
    scale = 1 + (min_side - min(h, w)) / min(h, w)
    return cv2.resize(img, dsize=(0, 0), fx=scale, fy=scale)


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Center crop of the two spatial axes of (..., H, W, C) or (H, W); size 0 keeps all."""
    spatial = frames.shape[-3:-1] if frames.ndim >= 3 else frames.shape
    h, w = spatial
    if size <= 0 or (h == size and w == size):
        return frames
    if h < size or w < size:
        raise FrameError(f"frames of {h}x{w} are smaller than the {size}x{size} crop")
    # Offsets rounded as the original pytorch-i3d CenterCrop (and torchvision): round half to even.
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    if frames.ndim >= 3:
        return frames[..., top:top + size, left:left + size, :]
    return frames[top:top + size, left:left + size]


def to_model_range(frames):
    """uint8 -> float32 in [-1, 1] (x / 255 * 2 - 1), the models' input scaling: a numpy array,
    or a torch tensor (scaled on its own device; the input is never modified)."""
    if isinstance(frames, np.ndarray):
        out = frames.astype(np.float32)
    else:
        out = frames.float()
        if out is frames:  # already float32: do not scale the caller's tensor in place
            out = out.clone()
    out *= 2.0 / 255.0
    out -= 1.0
    return out


def negate_flow_x(flow, axis: int = -1):
    """The flow of a horizontally mirrored clip: mirrored motion runs the other way, so the x
    channel (index 0 on `axis`) changes sign: uint8-encoded x -> 255 - x, float x -> -x. Works on
    numpy arrays and torch tensors; returns a copy. (The original flipped flow like RGB, leaving
    x with the wrong sign.)"""
    out = flow.clone() if hasattr(flow, "clone") else flow.copy()
    x = (slice(None),) * (axis % out.ndim) + (0,)
    out[x] = 255 - out[x] if str(out.dtype) in ("uint8", "torch.uint8") else -out[x]
    return out


def to_tensor_layout(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) -> (C, T, H, W), the layout the network takes (contiguous)."""
    return np.ascontiguousarray(frames.transpose(3, 0, 1, 2))


def video_info(path: str | Path) -> tuple[int, float, int, int]:
    """(frame count as the container reports it, fps, width, height) of a video file."""
    cap = _open_video(path)
    try:
        return (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()


def count_video_frames(path: str | Path) -> int:
    """The frames a video file really has: a pass of grab() without retrieve (demuxes and
    decodes, no colour conversion or copy out). For containers that report no count."""
    cap = _open_video(path)
    try:
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def _open_video(path: str | Path) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise FrameError(f"{path}: no such video file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise FrameError(f"{path}: unreadable video")
    return cap


def iter_frames(source: str | Path, resize: int = 0, gray: bool = False, start: int = 0) -> Iterator[np.ndarray]:
    """Stream the frames of a video file or a frame folder, one uint8 array at a time, the
    smaller side resized to `resize` (0 keeps the size), from frame `start` (0-based; earlier
    frames of a video are decoded but not converted). Memory does not grow with length.

    A video whose decoding fails part-way (truncated, damaged) ends at its last good frame with
    a warning naming it; only a video with no decodable frame raises FrameError."""
    source = Path(source)
    if source.is_dir():
        files = list_frame_files(source)
        if not files:
            raise FrameError(f"{source}: no frame images in folder")
        for f in files[start:]:
            yield resize_smaller_side(read_image(f, gray=gray), resize)
        return
    cap = _open_video(source)
    try:
        count = 0
        while count < start and cap.grab():
            count += 1
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            count += 1
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY if gray else cv2.COLOR_BGR2RGB)
            yield resize_smaller_side(frame, resize)
        if count == 0:
            raise FrameError(f"{source}: unreadable video (no frame decoded)")
        _warn_if_short(source, cap, count)
    finally:
        cap.release()


def read_video_frames(path: str | Path, indices: list[int] | tuple[int, ...]) -> list[np.ndarray]:
    """RGB uint8 frames of a video file at 0-based `indices` (increasing; repeats allowed),
    frame-accurate: one seek to the first index (OpenCV seeks to the keyframe before it and
    decodes forward), then grab() past the frames in between. When the container cannot report
    the position reached, the video is read from its start instead. Past the end, the last
    decoded frame repeats."""
    cap = _open_video(path)
    try:
        first = indices[0]
        pos = 0
        if first > 0 and cap.set(cv2.CAP_PROP_POS_FRAMES, first) and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == first:
            pos = first
        elif first > 0:  # no reliable seek: from the start
            cap.release()
            cap = _open_video(path)
        out: list[np.ndarray] = []
        last, read_at = None, -1
        for i in indices:
            if i != read_at:
                while pos < i and cap.grab():
                    pos += 1
                ok, frame = cap.read() if pos == i else (False, None)
                if ok:
                    last, read_at, pos = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), i, pos + 1
            if last is None:
                raise FrameError(f"{path}: unreadable video (no frame decoded at {i})")
            out.append(last)
        return out
    finally:
        cap.release()


def _warn_if_short(source: Path, cap: cv2.VideoCapture, count: int) -> None:
    # A stream shorter than its container says is not an error by itself (the streaming engine
    # re-reads with the true count); a big gap usually means a truncated or damaged file.
    expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if count < expected:
        log.warning("%s: decoding stopped after frame %d of the %d the container reports (truncated or "
                    "damaged?); using the frames up to %d", source, count, expected, count)


def sample_frames(source: str | Path, fps: float, resize: int = 0, gray: bool = False) -> Iterator[np.ndarray]:
    """The frames of a video file at `fps` frames per second by their timestamps: for each
    target time k / fps (k = 0, 1, ... up to the last frame's time) the decoded frame nearest to
    it (the earlier on a tie). No re-encoding; frames are decoded once, in order. Timestamps are
    the container's (CAP_PROP_POS_MSEC), or index / source fps where it gives none."""
    source = Path(source)
    if fps <= 0:
        raise FrameError(f"--fps must be positive, got {fps:g}")
    cap = _open_video(source)
    src_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
    try:
        k, count, prev, prev_t = 0, 0, None, -1.0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if count and t <= prev_t:  # no (or broken) timestamps: the nominal rate
                t = prev_t + 1.0 / src_fps
            count += 1
            while k / fps <= t:
                target = k / fps
                pick = prev if prev is not None and target - prev_t <= t - target else frame
                k += 1
                yield resize_smaller_side(cv2.cvtColor(pick, cv2.COLOR_BGR2GRAY if gray else cv2.COLOR_BGR2RGB),
                                          resize)
            prev, prev_t = frame, t
        if count == 0:
            raise FrameError(f"{source}: unreadable video (no frame decoded)")
        _warn_if_short(source, cap, count)
    finally:
        cap.release()


def read_frames(source: str | Path, resize: int = 0, gray: bool = False) -> np.ndarray:
    """All frames of a video file or frame folder as one uint8 array (T, H, W[, 3])."""
    return np.stack(list(iter_frames(source, resize=resize, gray=gray)))


# ---------------------------------------------------------------------------------------------
# Charades / pytorch-i3d frame folders
# ---------------------------------------------------------------------------------------------

def resize_for_mode(img: np.ndarray, resize: int | None, mode: str = "rgb") -> np.ndarray:
    """resize=None: the original pytorch-i3d rule (upscale only when the smaller side is under
    226 for RGB, 224 for flow); resize=N: smaller side N; resize=0: keep."""
    if resize is None:
        return upscale_if_smaller(img, 226 if mode == "rgb" else 224)
    return resize_smaller_side(img, resize)


def flow_folder_frames(folder: str | Path) -> tuple[int, Iterator[np.ndarray]]:
    """(count, iterator) of the x/y flow JPEG pairs of a folder (`*x.jpg` with `*y.jpg`, as
    dense_flow.py writes them), each as uint8 (H, W, 2)."""
    folder = Path(folder)
    xs = list_frame_files(folder, "flow")
    if not xs:
        raise FrameError(f"{folder}: no flow frames (*x.jpg / *y.jpg)")

    def pairs() -> Iterator[np.ndarray]:
        for fx in xs:
            fy = fx.with_name(fx.stem[:-1] + "y" + fx.suffix)
            yield np.stack([read_image(fx, gray=True), read_image(fy, gray=True)], axis=-1)
    return len(xs), pairs()


def charades_frame_name(vid: str, index: int, suffix: str = "") -> str:
    """VID-000001.jpg for index 1; suffix 'x' or 'y' for the flow frames (the one place this
    naming is spelled out)."""
    return f"{vid}-{index:06d}{suffix}.jpg"


def charades_frame_path(root: str | Path, vid: str, index: int, suffix: str = "") -> Path:
    """root/VID/VID-000001.jpg for index 1; suffix 'x' or 'y' for the flow frames."""
    return Path(root) / vid / charades_frame_name(vid, index, suffix)


def count_charades_frames(root: str | Path, vid: str, mode: str = "rgb") -> int:
    """N, the frames 1..N of root/VID (flow counts x files). A frame numbered past a missing
    one is a FrameError naming the first missing file; with --allow-gaps (allow_gaps()) the
    video is cut at the gap (frames 1..N before it are used, with a warning)."""
    folder = Path(root) / vid
    if not folder.is_dir():
        raise FrameError(f"{folder}: missing video folder")
    suffix = "x" if mode == "flow" else ""
    pattern = re.compile(rf"^{re.escape(vid)}-(\d{{6}}){suffix}\.jpg$")
    numbers = {int(m[1]) for m in map(pattern.match, os.listdir(folder)) if m}
    n = 0
    while n + 1 in numbers:
        n += 1
    if numbers and max(numbers) > n:
        missing = charades_frame_path(root, vid, n + 1, suffix)
        if not allow_gaps():
            raise FrameError(f"{missing}: missing frame (frames up to {max(numbers)} exist; "
                             f"--allow-gaps uses the frames before the gap)")
        log.warning("%s: missing frame; %s uses its first %d frames (--allow-gaps)", missing, vid, n)
    return n


def load_charades_frames(root: str | Path, vid: str, start: int, num: int, mode: str = "rgb",
                         resize: int | None = None) -> np.ndarray:
    """Frames start..start+num-1 (1-based) of a Charades-layout video as uint8:
    (num, H, W, 3) for rgb, (num, H, W, 2) for flow (x, y).

    resize=None applies the original rule (upscale only when the smaller side is under 226 for
    RGB, 224 for flow); resize=N makes the smaller side N; resize=0 keeps the size."""
    out: list[np.ndarray] = []
    for i in range(start, start + num):
        if mode == "rgb":
            img = read_image(charades_frame_path(root, vid, i))
        elif mode == "flow":
            img = np.stack([read_image(charades_frame_path(root, vid, i, "x"), gray=True),
                            read_image(charades_frame_path(root, vid, i, "y"), gray=True)], axis=-1)
        else:
            raise ValueError(f"mode must be 'rgb' or 'flow', got {mode!r}")
        out.append(resize_for_mode(img, resize, mode))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# Writing (through atomic_io's checked path)
# ---------------------------------------------------------------------------------------------

def write_image(path: str | Path, img: np.ndarray, quality: int = 95) -> None:
    """Write an RGB (H, W, 3) or gray (H, W) uint8 image; format by the file's extension."""
    path = Path(path)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix, img, params)
    if not ok:
        raise OSError(f"{path}: could not encode image")
    write_bytes_checked(path, buf)
