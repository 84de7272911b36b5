"""Labelled video datasets, every format read in one place: each turns into one list of samples
(video file or frame folder, label or labels) plus the class names.

Formats (detected from the files given to --split; --format NAME forces one):
- folders:  ROOT/CLASS/video.mp4 or ROOT/CLASS/VIDEO/ (frame folders); classes sorted by name,
            as torchvision's ImageFolder; --val-fraction F --seed S holds out a stratified part.
- ucf101:   classInd.txt ("1 ApplyEyeMakeup"), trainlistNN.txt ("CLASS/v_CLASS_g08_c01.avi 1"),
            testlistNN.txt ("CLASS/v_CLASS_g01_c01.avi", no label); --fold N; videos ROOT/CLASS/...
- hmdb51:   CLASS_test_splitN.txt ("VIDEO.avi 1": 1 train, 2 test, 0 unused); videos
            ROOT/CLASS/VIDEO.avi; classes sorted by name.
- kinetics: CSV label,youtube_id,time_start,time_end,split[,is_cc]; videos
            {youtube_id}_{start:06d}_{end:06d}.mp4 under ROOT/, ROOT/SPLIT/ or ROOT/LABEL/; labels
            mapped to the Kinetics-400 / -600 label maps (data/label_map*.txt) when they all
            belong to one, so the published checkpoints score as they are.
- list:     "path label [label ...]" per line (mmaction2's list form; several labels make the
            dataset multi-label), paths relative to the list's folder; labels 0-based.
- charades: charades.json / Charades_v1_*.csv (read by charades_dataset.py, per-frame labels).

A video path whose file is absent but whose suffix-less name is a folder of frames is read
from that folder (ROOT/CLASS/v_X/ for ROOT/CLASS/v_X.avi). Flow lives in dense_flow.py folders
that mirror the layout: FLOW_ROOT/KEY/ with KEY the video's path under ROOT without suffix.

Bad split lines are one UserError naming the file and line; videos that are not there are
collected in `missing`, never silently dropped.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import frame_io
from errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("folders", "ucf101", "hmdb51", "kinetics", "list", "charades")
SUBSETS = ("training", "testing")
LABEL_MAPS = (Path(__file__).resolve().parent / "data" / "label_map.txt",
              Path(__file__).resolve().parent / "data" / "label_map_600.txt")
RECIPE_KEY = "i3d_training"  # where a model file keeps how it was trained (see attach_recipe)


@dataclass(frozen=True)
class Sample:
    """One labelled video. key: its name in outputs (path under root without suffix, '/'-separated);
    path: the video file or frame folder; labels: class indices; where: 'file:line' it came from."""
    key: str
    path: str
    labels: tuple[int, ...]
    where: str = ""


@dataclass
class LabelledVideos:
    format: str
    samples: list[Sample]
    classes: list[str]
    multilabel: bool = False
    missing: list[Sample] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ----------------------------------------------------------------------------------------------
# Lines of text files: Windows line ends, trailing spaces, blank lines
# ----------------------------------------------------------------------------------------------

def media_path(path: Path) -> Path | None:
    """The video file, or the frame folder of the same name without suffix, or None."""
    if path.is_file():
        return path
    folder = path.with_suffix("") if path.suffix else path
    return folder if folder.is_dir() else None


def _sample(root: Path, rel: str, labels: tuple[int, ...], where: str, out: list, missing: list) -> None:
    rel = rel.replace("\\", "/")
    key = rel.rsplit(".", 1)[0] if Path(rel).suffix.lower() in frame_io.VIDEO_EXTS else rel
    found = media_path(root / rel)
    s = Sample(key=key, path=str(found if found is not None else root / rel), labels=labels, where=where)
    (out if found is not None else missing).append(s)


def _subset_of(name: str) -> str | None:
    name = name.lower()
    if "train" in name:
        return "training"
    if any(w in name for w in ("test", "val")):
        return "testing"
    return None


# ----------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------

_UCF_LIST = re.compile(r"^(train|test)list(\d+)\.txt$", re.I)
_HMDB = re.compile(r"^(.+)_test_split(\d+)\.txt$", re.I)


def detect_format(split: Sequence[Path]) -> str:
    """The format of the --split files (a folder: what it holds); none given means class folders."""
    if not split:
        return "folders"
    kinds = {}
    for p in split:
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        for f in files:
            kind = _file_format(f)
            if kind is not None:
                kinds.setdefault(kind, f)
    if not kinds:
        raise UserError(f"{split[0]}: cannot tell the dataset format; give --format "
                        f"({', '.join(FORMATS)})")
    if len(kinds) > 1:
        (k1, f1), (k2, f2) = list(kinds.items())[:2]
        raise UserError(f"{f2}: a {k2} file among {k1} ones ({f1}): one dataset format at a time")
    return next(iter(kinds))


def _file_format(f: Path) -> str | None:
    name = f.name
    if name.lower() == "classind.txt" or _UCF_LIST.match(name):
        return "ucf101"
    if _HMDB.match(name):
        return "hmdb51"
    if f.suffix.lower() == ".json" or (f.suffix.lower() == ".csv" and name.lower().startswith("charades")):
        return "charades"
    if f.suffix.lower() == ".csv":
        return "kinetics"
    if f.suffix.lower() in (".txt", ".lst", ".list"):
        return "list"
    return None


def _split_files(split: Sequence[Path]) -> list[Path]:
    out = []
    for p in split:
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and _file_format(f)))
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"{p}: no such split file")
    return out


# ----------------------------------------------------------------------------------------------
# The formats
# ----------------------------------------------------------------------------------------------

def read_folders(root: Path, subset: str, val_fraction: float = 0.0, seed: int = 0) -> LabelledVideos:
    """ROOT/CLASS/VIDEO: classes sorted by name; with val_fraction, each class's videos split
    by a seeded permutation (the same for a given seed), the first part held out as testing."""
    if not root.is_dir():
        raise UserError(f"{root}: no such dataset folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{root}: no class folders (expected ROOT/CLASS/video.mp4)")
    samples = []
    for c, name in enumerate(classes):
        items = sorted(p for p in (root / name).iterdir()
                       if not p.name.startswith(".") and (p.is_dir() or frame_io.is_video_file(p)))
        if not items:
            raise UserError(f"{root / name}: empty class folder (no videos or frame folders)")
        order = np.random.default_rng([seed, c]).permutation(len(items)) if val_fraction else np.arange(len(items))
        n_val = int(round(len(items) * val_fraction))
        for rank, i in enumerate(order):
            if (rank < n_val) == (subset == "testing") or not val_fraction:
                p = items[i]
                key = (p.relative_to(root).with_suffix("") if p.is_file() else p.relative_to(root)).as_posix()
                samples.append(Sample(key, str(p), (c,), str(root / name)))
    samples.sort(key=lambda s: s.key)
    return LabelledVideos("folders", samples, classes)


def read_class_ind(path: Path) -> list[str]:
    """UCF101's classInd.txt: 'INDEX NAME' lines, indices 1..N in order."""
    classes = []
    for n, line in frame_io.read_lines(path, UserError):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise UserError(f"{path}:{n}: expected 'INDEX CLASS', got {line!r}")
        if int(parts[0]) != len(classes) + 1:
            raise UserError(f"{path}:{n}: class index {parts[0]}, expected {len(classes) + 1}")
        classes.append(parts[1])
    if not classes:
        raise UserError(f"{path}: no classes")
    return classes


def read_ucf101(files: list[Path], root: Path, subset: str, fold: int = 1) -> LabelledVideos:
    """UCF101's split files: classInd.txt with trainlist{fold:02d}.txt or testlist{fold:02d}.txt."""
    want = "train" if subset == "training" else "test"
    lists = [f for f in files if (m := _UCF_LIST.match(f.name)) and m[1].lower() == want and int(m[2]) == fold]
    if not lists:
        raise UserError(f"no {want}list{fold:02d}.txt among the split files ({', '.join(str(f) for f in files)})")
    ind = [f for f in files if f.name.lower() == "classind.txt"]
    if not ind:  # beside the list, as in ucfTrainTestlist/
        ind = [p for p in lists[0].parent.iterdir() if p.name.lower() == "classind.txt"]
    if not ind:
        raise UserError(f"{lists[0]}:1: UCF101 lists name classes through classInd.txt, which is not given "
                        f"(nor beside the list)")
    classes = read_class_ind(ind[0])
    index = {c: i for i, c in enumerate(classes)}
    samples, missing = [], []
    for lst in lists:
        for n, line in frame_io.read_lines(lst, UserError):
            parts = line.split()
            where = f"{lst}:{n}"
            cls_name = parts[0].replace("\\", "/").split("/")[0]
            if cls_name not in index:
                raise UserError(f"{where}: class {cls_name!r} is not in {ind[0]}")
            if len(parts) == 2:  # a train list: the label must agree with the folder
                if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                    raise UserError(f"{where}: label {parts[1]!r} out of range 1..{len(classes)}")
                if int(parts[1]) - 1 != index[cls_name]:
                    raise UserError(f"{where}: label {parts[1]} is {classes[int(parts[1]) - 1]} in {ind[0]}, "
                                    f"but the video is under {cls_name}/")
            elif len(parts) != 1:
                raise UserError(f"{where}: expected 'CLASS/VIDEO.avi [LABEL]', got {line!r}")
            _sample(root, parts[0], (index[cls_name],), where, samples, missing)
    return LabelledVideos("ucf101", samples, classes, missing=missing)


def read_hmdb51(files: list[Path], root: Path, subset: str, fold: int = 1) -> LabelledVideos:
    """HMDB51's CLASS_test_split{fold}.txt files: 'VIDEO.avi 1|2|0' (train, test, unused)."""
    per_class = {}
    for f in files:
        m = _HMDB.match(f.name)
        if m is None:
            raise UserError(f"{f}: not an HMDB51 split file (CLASS_test_splitN.txt)")
        if int(m[2]) == fold:
            per_class[m[1]] = f
    if not per_class:
        raise UserError(f"no *_test_split{fold}.txt among the split files")
    classes = sorted(per_class)
    want = "1" if subset == "training" else "2"
    samples, missing = [], []
    for c, name in enumerate(classes):
        for n, line in frame_io.read_lines(per_class[name], UserError):
            parts = line.split()
            where = f"{per_class[name]}:{n}"
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise UserError(f"{where}: expected 'VIDEO.avi 0|1|2', got {line!r}")
            if parts[1] == want:
                _sample(root, f"{name}/{parts[0]}", (c,), where, samples, missing)
    return LabelledVideos("hmdb51", samples, classes, missing=missing)


def kinetics_label_map(labels: set[str]) -> list[str]:
    """The published label map (400, then 600 classes) holding every label, else the labels sorted."""
    for path in LABEL_MAPS:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if labels <= set(names):
            return names
    return sorted(labels)


def read_kinetics(files: list[Path], root: Path, subset: str, classes: list[str] | None = None) -> LabelledVideos:
    """Kinetics CSVs (label,youtube_id,time_start,time_end,split): the rows of the subset
    (training: split 'train'; testing: 'val'/'validate'/'test'), videos looked up in root,
    root/SPLIT and root/LABEL (with spaces or underscores)."""
    rows = []
    for f in files:
        try:
            reader = csv.DictReader(io.StringIO(f.read_bytes().decode("utf-8-sig"), newline=""))
            fields = set(reader.fieldnames or [])
            if not {"youtube_id", "time_start", "time_end"} <= fields:
                raise UserError(f"{f}:1: not a Kinetics CSV (needs youtube_id, time_start, time_end"
                                f"{', label' if 'label' not in fields else ''})")
            for row in reader:
                rows.append((f"{f}:{reader.line_num}", {k: (v or "").strip() for k, v in row.items() if k}))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise UserError(f"{f}: not a readable CSV ({e})") from e
    wanted = ("train",) if subset == "training" else ("val", "validate", "validation", "test")
    rows = [(w, r) for w, r in rows if r.get("split", "").lower() in wanted or "split" not in r]
    if any(not r.get("label") for _, r in rows):
        w = next(w for w, r in rows if not r.get("label"))
        raise UserError(f"{w}: row without a label (Kinetics' test CSVs carry none: they cannot be scored)")
    classes = classes or kinetics_label_map({r["label"] for _, r in rows})
    index = {c: i for i, c in enumerate(classes)}
    samples, missing = [], []
    for where, r in rows:
        if r["label"] not in index:
            raise UserError(f"{where}: label {r['label']!r} is not one of the {len(classes)} classes")
        try:
            name = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        except ValueError:
            raise UserError(f"{where}: time_start / time_end {r['time_start']!r}, {r['time_end']!r} are not numbers") from None
        label = (index[r["label"]],)
        found = None
        for d in (root, root / r.get("split", ""), root / r["label"], root / r["label"].replace(" ", "_")):
            for ext in (".mp4", ".mkv", ".webm"):
                if (d / f"{name}{ext}").is_file():
                    found = d / f"{name}{ext}"
                    break
            if found:
                break
        s = Sample(name, str(found or root / f"{name}.mp4"), label, where)
        (samples if found else missing).append(s)
    return LabelledVideos("kinetics", samples, classes, missing=missing)


def read_list(files: list[Path], subset: str, num_classes: int | None = None) -> LabelledVideos:
    """'path label [label ...]' lists; with several files, their names say training (train) and
    testing (val / test); one file is the set asked for."""
    if len(files) > 1:
        files = [f for f in files if _subset_of(f.stem) == subset]
        if not files:
            raise UserError(f"none of the lists is named for {subset} (train / val / test in the file name)")
    samples, missing, multi, top = [], [], False, -1
    for f in files:
        for n, line in frame_io.read_lines(f, UserError):
            where = f"{f}:{n}"
            parts = line.split()
            if len(parts) < 2:
                raise UserError(f"{where}: expected 'PATH LABEL [LABEL ...]', got {line!r}")
            try:
                labels = tuple(int(x) for x in parts[1:])
            except ValueError:
                raise UserError(f"{where}: labels must be integers (a list in another format?), got {line!r}") from None
            if min(labels) < 0 or (num_classes is not None and max(labels) >= num_classes):
                raise UserError(f"{where}: label out of range 0..{(num_classes or 1) - 1}: {line!r}")
            multi |= len(labels) > 1
            top = max(top, *labels)
            _sample(f.parent, parts[0], labels, where, samples, missing)
    n = num_classes or top + 1
    return LabelledVideos("list", samples, [str(i) for i in range(n)], multilabel=multi, missing=missing)


def read_dataset(split: Sequence[str | Path] | None, root: str | Path, subset: str = "training",
                 fmt: str | None = None, fold: int = 1, val_fraction: float = 0.0, seed: int = 0,
                 num_classes: int | None = None) -> LabelledVideos:
    """Any non-Charades format as one LabelledVideos (Charades: charades_dataset.read_annotations).
    Raises UserError (naming the file and line) for bad split files; a dataset with no video
    found is an error, missing ones are listed in .missing."""
    if subset not in SUBSETS:
        raise UserError(f"subset must be training or testing, not {subset!r}")
    split = [Path(p) for p in split or []]
    fmt = fmt or detect_format(split)
    root = Path(root)
    if fmt == "folders":
        ds = read_folders(root, subset, val_fraction, seed)
    elif fmt == "charades":
        raise UserError("Charades annotations are read by charades_dataset.py")
    else:
        files = _split_files(split)
        if not files:
            raise UserError(f"{fmt}: no split files given (--split)")
        if fmt == "ucf101":
            ds = read_ucf101(files, root, subset, fold)
        elif fmt == "hmdb51":
            ds = read_hmdb51(files, root, subset, fold)
        elif fmt == "kinetics":
            ds = read_kinetics(files, root, subset)
        elif fmt == "list":
            ds = read_list(files, subset, num_classes)
        else:
            raise UserError(f"unknown dataset format {fmt!r} (one of {', '.join(FORMATS)})")
    if ds.missing:
        log.warning("%d of %d %s videos are missing under %s, e.g. %s (%s); skipped", len(ds.missing),
                    len(ds.missing) + len(ds.samples), subset, root, ds.missing[0].path, ds.missing[0].where)
    if not ds.samples:
        raise UserError(f"{root}: none of the {len(ds.missing)} {subset} videos of the split is there"
                        + (f" (e.g. {ds.missing[0].path})" if ds.missing else ""))
    return ds


def flow_path(sample: Sample, flow_root: str | Path) -> Path:
    """The dense_flow.py folder of a video: FLOW_ROOT/KEY/ (x/y JPEGs), mirroring the layout."""
    return Path(flow_root) / sample.key


# ----------------------------------------------------------------------------------------------
# Clips for training
# ----------------------------------------------------------------------------------------------

def frame_count(path: str | Path, mode: str = "rgb") -> int:
    """Frames of a video file (the container's count, else counted) or of a frame folder."""
    p = Path(path)
    if p.is_dir():
        if mode == "flow":
            return frame_io.flow_folder_frames(p)[0]
        return len(frame_io.list_frame_files(p))
    n = frame_io.video_info(p)[0]
    return n if n > 0 else frame_io.count_video_frames(p)


def load_clip(path: str | Path, indices: Sequence[int], mode: str, resize: int | None) -> np.ndarray:
    """uint8 (T, H, W, C) frames at the given 0-based indices (increasing, maybe repeated) of a
    video file (frame-accurate seek, frame_io.read_video_frames) or a frame folder."""
    p = Path(path)
    if p.is_dir():
        if mode == "flow":
            _, it = frame_io.flow_folder_frames(p)
            frames = [f for i, f in enumerate(it) if i <= indices[-1]]
        else:
            files = frame_io.list_frame_files(p)
            wanted = sorted(set(indices))
            frames = {i: frame_io.read_image(files[i]) for i in wanted if i < len(files)}
            frames = [frames.get(i) for i in range(indices[-1] + 1)]
        out = [frames[min(i, len(frames) - 1)] for i in indices]
    else:
        out = frame_io.read_video_frames(p, indices)
    return np.stack([frame_io.resize_for_mode(f, resize, mode) for f in out])


class VideoClips(torch.utils.data.Dataset):
    """Random clips of labelled videos: (clip (C, T, H, W) float32 in [-1, 1], label) with label
    the class index (single-label) or a (C,) multi-hot float (multi-label).

    Clip: clip_frames frames every frame_stride frames from a random start; a short video
    repeats its last frame (as Charades clips). Every random draw of item i in epoch e comes from
    a Generator seeded with (seed, e, i), as charades_dataset.Charades, so resumes are exact."""

    def __init__(self, data: LabelledVideos, mode: str = "rgb", transforms=None, clip_frames: int = 64,
                 frame_stride: int = 1, resize: int | None = None, seed: int = 0, flow_root: str | Path | None = None):
        if mode == "flow" and flow_root is None:
            raise UserError("flow training on a video dataset needs --flow-root (dense_flow.py folders)")
        self.data, self.mode, self.transforms = data, mode, transforms
        self.clip_frames, self.stride, self.resize, self.seed, self.epoch = clip_frames, frame_stride, resize, seed, 0
        self.paths = [str(flow_path(s, flow_root)) if mode == "flow" else s.path for s in data.samples]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data.samples)

    def label(self, index: int):
        labels = self.data.samples[index].labels
        if not self.data.multilabel:
            return labels[0]
        out = torch.zeros(self.data.num_classes)
        out[list(labels)] = 1.0
        return out

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        n = frame_count(self.paths[index], self.mode)
        span = (self.clip_frames - 1) * self.stride + 1
        start = int(rng.integers(0, max(1, n - span + 1)))
        indices = [min(start + k * self.stride, max(n - 1, 0)) for k in range(self.clip_frames)]
        frames = load_clip(self.paths[index], indices, self.mode, self.resize)
        if self.transforms is not None:
            frames = self.transforms(frames, rng)
        clip = frame_io.to_tensor_layout(frame_io.to_model_range(frames))
        return torch.from_numpy(clip), self.label(index)


# ----------------------------------------------------------------------------------------------
# What a model file says about its training (issue: checkpoints carry their training)
# ----------------------------------------------------------------------------------------------

def attach_recipe(state: dict, recipe: dict) -> dict:
    """The state dict with the recipe in its torch `_metadata` (kept by torch.save, ignored by
    load_state_dict), so the file stays a plain state dict for every loader."""
    meta = getattr(state, "_metadata", None)
    if meta is None:
        import collections
        state = collections.OrderedDict(state)
        state._metadata = meta = collections.OrderedDict()  # type: ignore[attr-defined]
    meta.setdefault("", {})[RECIPE_KEY] = dict(recipe)
    return state


def read_recipe(path: str | Path) -> dict | None:
    """The training recipe of a model file (a state dict written by train_i3d.py, or its
    last.ckpt), or None for other weights."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("recipe"), dict):
        return obj["recipe"]
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    meta = getattr(obj, "_metadata", None) or {}
    recipe = meta.get("", {}).get(RECIPE_KEY) if isinstance(meta.get("", None), dict) else None
    return recipe if isinstance(recipe, dict) else None
