"""Where extracted features go: one .npy per video (NpyStore) or one HDF5 file rebuilt
atomically from finished videos (H5Store); and which videos a shard takes (parse_shard, shard)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

import atomic_io
from errors import UserError
from runtime import dist_env

log = logging.getLogger(__name__)


# Every parameter that shapes a feature array (extract_features.recipe); code_version is recorded
# but not compared: a new commit is not a new recipe.
NOT_COMPARED = ("code_version",)
RECIPE_KEYS = ("mode", "endpoint", "stack", "step", "centring", "sample_fps", "resize", "crop", "ten_crop", "precision",
               "weights_sha256", "flow_resize", "flow_jpeg", "centered")
# Keys added after outputs existed: absent on one side reads as this value, so those outputs still resume.
RECIPE_DEFAULTS = {"centered": False}
_ABSENT = object()


def _side(recipe: dict, key: str, value: object, where: str) -> str:
    if key in recipe:
        return f"{value!r} {where}"
    if value is not _ABSENT:
        return f"{value!r} {where} (not recorded: the default)"
    return "not recorded (an older version made it)" if where == "there" else "not asked"


def recipe_difference(stored: dict, wanted: dict, keys: tuple[str, ...] = RECIPE_KEYS,
                      defaults: dict | None = None) -> str | None:
    """'step 8 there, 4 asked' for the first parameter that differs; None when they agree.
    Symmetric: every key of `wanted` and every recipe key (`keys`, also as 'flow.KEY' for the
    fused streams) of `stored` counts; a key absent on one side is compared as its default
    (RECIPE_DEFAULTS unless `defaults` is given), and without one it is a difference."""
    defaults = RECIPE_DEFAULTS if defaults is None else defaults
    extra = [k for k in stored if k not in wanted and k.removeprefix("flow.") in keys]
    for k in [*wanted, *extra]:
        if k in NOT_COMPARED:
            continue
        default = defaults.get(k.removeprefix("flow."), _ABSENT)
        there, asked = stored.get(k, default), wanted.get(k, default)
        if there is _ABSENT or asked is _ABSENT or there != asked:
            return f"{k} {_side(stored, k, there, 'there')}, {_side(wanted, k, asked, 'asked')}"
    return None


def parse_shard(text: str | None) -> tuple[int, int]:
    """'K/N' -> (K, N); None -> torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    if text is None:
        rank, world, _ = dist_env()  # checked: WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE
        return rank, world
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= k < n):
        raise UserError(f"--shard {text!r}: need 0 <= K < N")
    return k, n


def shard(items: list, k: int, n: int) -> list:
    """Videos i % n == k of the list sorted by key: shards are disjoint and cover the list."""
    return [v for i, v in enumerate(sorted(items, key=lambda v: v.key)) if i % n == k]


@contextlib.contextmanager
def closed_unless_stopped(*stores):
    """Close the stores (H5Store: merge the finished videos into the HDF5 file) when the block
    ends, whether it returns or fails, but not when a stop (Ctrl-C, SIGTERM: KeyboardInterrupt)
    ends it: the merge copies the whole HDF5 file, far longer than a stop may take. The finished
    videos wait as their pending files, which count as done; the rerun merges them."""
    stopped = False
    try:
        yield
    except KeyboardInterrupt:
        stopped = True
        raise
    finally:
        if not stopped:
            for store in stores:
                store.close()


def _clean_tree(folder: Path) -> None:
    """Temporaries of killed runs anywhere under folder (a live process's are kept)."""
    if folder.is_dir():
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir() and not p.name.startswith("."))]:
            atomic_io.clean_stale_temps(sub)


def _json_attrs(attrs: dict) -> str:
    """attrs as standard JSON (an unknown fps, nan, becomes null)."""
    return json.dumps({k: None if isinstance(v, float) and v != v else v for k, v in attrs.items()}, indent=1)


class NpyStore:
    """SAVE_DIR/KEY.npy, each written atomically (fsync, rename): the rename is the marker, and
    a file is trusted only when whole (header and size agree). Its attributes (fps, frames, each
    window's start and end in frames and seconds, ...) go in the sidecar SAVE_DIR/KEY.json,
    written before the array, so a trusted array always has its sidecar."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        _clean_tree(out_dir)

    def done(self, key: str) -> bool:
        return atomic_io.npy_complete(self.out_dir / f"{key}.npy")

    def save(self, key: str, array: np.ndarray, attrs: dict) -> None:
        side = self.out_dir / f"{key}.json"
        if attrs:  # the sidecar first: a finished .npy always has its .json
            with atomic_io.atomic_write(side) as tmp:
                tmp.write_text(_json_attrs(attrs))
        try:
            atomic_io.save_npy(self.out_dir / f"{key}.npy", array)
        except BaseException:
            side.unlink(missing_ok=True)  # no sidecar without its array
            raise

    def attrs(self, key: str) -> dict:
        """The attributes (recipe included) saved with a finished video; {} where none."""
        side = self.out_dir / f"{key}.json"
        try:
            return json.loads(side.read_text()) if side.is_file() else {}
        except (OSError, ValueError):
            return {}

    def describe(self, key: str) -> str:
        return str(self.out_dir / f"{key}.npy")

    def load(self, key: str) -> tuple[np.ndarray, dict]:
        side = self.out_dir / f"{key}.json"
        return (np.load(self.out_dir / f"{key}.npy", allow_pickle=False),
                json.loads(side.read_text()) if side.is_file() else {})

    def close(self) -> None:
        pass


class H5Store:
    """One HDF5 file; each finished video goes to PENDING/KEY.npz (array and attrs in one file,
    written atomically, so no kill separates them) and is merged into a rebuilt copy of the HDF5
    file that replaces it atomically (close(), or the next run). The merge runs under an
    exclusive lock (flock on the output folder), so runs sharing the file take turns and each merges and
    deletes exactly the pending files it read; HDF5 is only ever written into the temporary
    copy, after checking that the disk has room for it."""

    def __init__(self, path: Path, pending: Path):
        import h5py

        self.h5py, self.path, self.pending = h5py, path, pending
        self.lock = path.parent  # the output folder itself is locked (flock on the folder)
        self.present: set[str] = set()
        _clean_tree(pending)
        if path.exists():
            try:
                with h5py.File(path, "r", locking=False) as f:
                    f.visititems(lambda name, obj: self.present.add(name) if isinstance(obj, h5py.Dataset) else None)
            except OSError as e:
                raise UserError(f"{path}: unreadable HDF5 file ({e}); move it away to start over") from e

    def _pending(self, key: str) -> Path:
        return self.pending / f"{key}.npz"

    def done(self, key: str) -> bool:
        legacy = self.pending / f"{key}.npy"  # older versions: .npy + .attrs.json, done only as a pair
        return (key in self.present or self._pending(key).is_file()
                or (legacy.is_file() and legacy.with_name(legacy.name[:-4] + ".attrs.json").is_file()))

    def save(self, key: str, array: np.ndarray, attrs: dict) -> None:
        buf = io.BytesIO()
        np.savez(buf, array=array, attrs=np.array(json.dumps(attrs)))
        atomic_io.atomic_write_bytes(self._pending(key), buf.getbuffer())

    def _read_pending(self) -> list[tuple[str, list[Path]]]:
        """[(key, its pending files)] of the finished videos waiting in PENDING."""
        if not self.pending.is_dir():
            return []
        out = []
        for p in sorted(self.pending.rglob("*")):
            if p.name.startswith(".") or not p.is_file():
                continue
            key = p.relative_to(self.pending).as_posix()
            if p.suffix == ".npz":
                out.append((key[:-4], [p]))
            elif p.suffix == ".npy" and p.with_name(p.name[:-4] + ".attrs.json").is_file():
                out.append((key[:-4], [p, p.with_name(p.name[:-4] + ".attrs.json")]))
        return out

    def attrs(self, key: str) -> dict:
        """The attributes (recipe included) saved with a finished video; {} where none."""
        if self._pending(key).is_file():
            with np.load(self._pending(key), allow_pickle=False) as z:
                return json.loads(str(z["attrs"]))
        if key not in self.present:
            return {}
        with self.h5py.File(self.path, "r", locking=False) as f:
            return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in f[key].attrs.items()}

    def describe(self, key: str) -> str:
        return f"{self.path}:{key}"

    def load(self, key: str) -> tuple[np.ndarray, dict]:
        if self._pending(key).is_file():  # array and attributes in one .npz
            with np.load(self._pending(key), allow_pickle=False) as z:
                return z["array"], json.loads(str(z["attrs"]))
        with self.h5py.File(self.path, "r", locking=False) as f:
            ds = f[key]
            return ds[()], {k: v.tolist() if hasattr(v, "tolist") else v for k, v in ds.attrs.items()}

    def close(self) -> None:
        self.lock.mkdir(parents=True, exist_ok=True)
        with atomic_io.file_lock(self.lock):
            atomic_io.clean_stale_temps(self.path.parent, self.path.name)  # a killed rebuild's copy
            new = self._read_pending()
            if not new:
                return
            need = (self.path.stat().st_size if self.path.exists() else 0) + sum(
                f.stat().st_size for _, files in new for f in files) + (1 << 20)
            if shutil.disk_usage(self.path.parent).free < need:  # HDF5 must not meet a full disk
                raise atomic_io.disk_full(self.path)
            try:
                with atomic_io.atomic_write(self.path, suffix=".tmp.h5") as tmp:
                    if self.path.exists():
                        shutil.copyfile(self.path, tmp)
                    with self.h5py.File(tmp, "a", locking=False) as f:
                        for key, files in new:
                            if key in f:  # recomputed (--overwrite): the pending file is the newer
                                del f[key]
                            if files[0].suffix == ".npz":
                                with np.load(files[0], allow_pickle=False) as z:
                                    array, attrs = z["array"], json.loads(str(z["attrs"]))
                            else:
                                array, attrs = np.load(files[0], allow_pickle=False), json.loads(files[1].read_text())
                            ds = f.create_dataset(key, data=array)
                            for k, v in attrs.items():
                                ds.attrs[k] = v
                    with open(tmp, "rb+") as fh:
                        os.fsync(fh.fileno())
            except (OSError, RuntimeError) as e:
                if atomic_io.is_disk_full(e) or shutil.disk_usage(self.path.parent).free < need:
                    raise atomic_io.disk_full(self.path) from None
                raise
            for _, files in new:  # exactly the ones merged: another run's newer files stay
                for f in files:
                    f.unlink(missing_ok=True)
            for d in sorted((p for p in self.pending.rglob("*") if p.is_dir()), reverse=True) + [self.pending]:
                with contextlib.suppress(OSError):  # only empty folders go; others' files stay
                    d.rmdir()
        log.info("wrote %s (%d new videos)", self.path, len(new))
