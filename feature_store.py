"""Where extracted features go: one .npy per video (NpyStore) or one HDF5 file rebuilt
atomically from finished videos (H5Store); and which videos a shard takes (parse_shard, shard)."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

import frame_io
from cli import UserError

log = logging.getLogger(__name__)


def parse_shard(text: str | None) -> tuple[int, int]:
    """'K/N' -> (K, N); None -> torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
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


def _json_attrs(attrs: dict) -> str:
    """attrs as standard JSON (an unknown fps, nan, becomes null)."""
    return json.dumps({k: None if isinstance(v, float) and v != v else v for k, v in attrs.items()}, indent=1)


class NpyStore:
    """SAVE_DIR/KEY.npy, each written atomically, with its attributes (fps, frames, each
    window's start and end in frames and seconds, ...) in the sidecar SAVE_DIR/KEY.json."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def done(self, key: str) -> bool:
        return (self.out_dir / f"{key}.npy").is_file()

    def save(self, key: str, array: np.ndarray, attrs: dict) -> None:
        if attrs:  # the sidecar first: a finished .npy always has its .json
            with frame_io.atomic_write(self.out_dir / f"{key}.json") as tmp:
                tmp.write_text(_json_attrs(attrs))
        frame_io.save_npy(self.out_dir / f"{key}.npy", array)

    def load(self, key: str) -> tuple[np.ndarray, dict]:
        side = self.out_dir / f"{key}.json"
        return (np.load(self.out_dir / f"{key}.npy", allow_pickle=False),
                json.loads(side.read_text()) if side.is_file() else {})

    def close(self) -> None:
        pass


class H5Store:
    """One HDF5 file; finished videos go to PENDING/KEY.npy (atomic) and are merged into a
    rebuilt copy of the HDF5 file that replaces it atomically (close(), or the next run)."""

    def __init__(self, path: Path, pending: Path):
        import h5py

        self.h5py, self.path, self.pending = h5py, path, pending
        self.present: set[str] = set()
        if path.exists():
            try:
                with h5py.File(path, "r", locking=False) as f:
                    f.visititems(lambda name, obj: self.present.add(name) if isinstance(obj, h5py.Dataset) else None)
            except OSError as e:
                raise UserError(f"{path}: unreadable HDF5 file ({e}); move it away to start over") from e

    def _pending(self, key: str) -> Path:
        return self.pending / f"{key}.npy"

    def done(self, key: str) -> bool:
        return key in self.present or self._pending(key).is_file()

    def save(self, key: str, array: np.ndarray, attrs: dict) -> None:
        frame_io.save_npy(self._pending(key), array)
        with frame_io.atomic_write(self.pending / f"{key}.attrs.json") as tmp:
            tmp.write_text(json.dumps(attrs))

    def load(self, key: str) -> tuple[np.ndarray, dict]:
        if self._pending(key).is_file():
            side = self.pending / f"{key}.attrs.json"
            return np.load(self._pending(key), allow_pickle=False), json.loads(side.read_text()) if side.is_file() else {}
        with self.h5py.File(self.path, "r", locking=False) as f:
            ds = f[key]
            return ds[()], {k: v.tolist() if hasattr(v, "tolist") else v for k, v in ds.attrs.items()}

    def close(self) -> None:
        new = sorted(p for p in self.pending.rglob("*.npy") if not p.name.startswith(".")) if self.pending.is_dir() else []
        if not new:
            return

        with frame_io.atomic_write(self.path, suffix=".tmp.h5") as tmp:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
            with self.h5py.File(tmp, "a", locking=False) as f:
                for p in new:
                    key = p.relative_to(self.pending).with_suffix("").as_posix()
                    if key in f:
                        continue
                    ds = f.create_dataset(key, data=np.load(p, allow_pickle=False))
                    attrs_file = p.with_name(p.name[:-4] + ".attrs.json")
                    if attrs_file.is_file():
                        for k, v in json.loads(attrs_file.read_text()).items():
                            ds.attrs[k] = v
        shutil.rmtree(self.pending, ignore_errors=True)
        log.info("wrote %s (%d new videos)", self.path, len(new))
