"""Flow straight from video files: extract_features.py -mode flow/both --input VIDEO (TV-L1 on
the fly, --keep-flow, --concat), --fps sampling by timestamps and the seconds in the outputs,
truncated videos and bad flags, and dense_flow.py splitting one video across workers (the batched
TV-L1 path against pair by pair: test_dense_flow.py)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dense_flow
import extract_features as ef
import feature_store
import frame_io
import predict
import synthetic_charades
import tvl1
from charades_dataset_full import input_sources
from errors import FrameError

REPO = Path(__file__).resolve().parent.parent


def write_video(path: Path, n: int, h: int = 48, w: int = 64, fps: float = 10, fourcc: str = "mp4v",
                values: list[int] | None = None) -> Path:
    """A moving gray texture (content shifts 2 px left, 1 px up per frame), or flat frames of
    the given values (to tell which frames were picked)."""
    rng = np.random.default_rng(5)
    tex = synthetic_charades.gray_texture(h + 2 * n + 20, w + 2 * n + 20, rng).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    for i in range(n):
        f = np.full((h, w), values[i], np.uint8) if values else tex[10 + i:10 + i + h, 10 + 2 * i:10 + 2 * i + w]
        writer.write(np.repeat(f[..., None], 3, axis=2))
    writer.release()
    return path


@pytest.fixture(scope="module")
def weights(random_i3d_file) -> dict:
    return {"flow": str(random_i3d_file(in_channels=2)), "rgb": str(random_i3d_file())}


def run_cli(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          errors="replace")


# one DataLoader worker: TV-L1 runs there on one thread, as in real use
SMALL = ["--resize", "0", "--crop", "0", "--stack", "8", "--step", "4", "--workers", "1", "-q"]


@pytest.mark.slow
def test_flow_from_video_equals_two_step_path(tmp_path, weights):
    video = write_video(tmp_path / "clip.mp4", 12)
    # the two-step path: dense_flow.py, then -mode flow -root on its folder
    assert dense_flow.main([str(video), "-o", str(tmp_path / "df"), "--resize", "0", "--workers", "1"]) == 0
    assert ef.main(["-mode", "flow", "-load_model", weights["flow"], "-root", str(tmp_path / "df"),
                    "-save_dir", str(tmp_path / "two"), *SMALL]) == 0
    # one command: both streams from the video, flow kept as JPEGs, concatenated features
    assert ef.main(["-mode", "both", "-load_model", weights["rgb"], "--flow-model", weights["flow"],
                    "--input", str(video), "-save_dir", str(tmp_path / "one"), "--flow-resize", "0",
                    "--keep-flow", str(tmp_path / "kept"), "--concat", *SMALL]) == 0
    two, one = np.load(tmp_path / "two" / "clip.npy"), np.load(tmp_path / "one" / "flow" / "clip.npy")
    assert one.shape == two.shape == (2, 1024)
    np.testing.assert_array_equal(one, two)  # the README: equal to the two-step path, difference 0.0
    # --no-flow-jpeg skips the JPEG round trip: 0.05 % (relative L2) on this video, as the README says
    assert ef.main(["-mode", "flow", "--flow-model", weights["flow"], "--input", str(video), "-save_dir",
                    str(tmp_path / "raw"), "--flow-resize", "0", "--no-flow-jpeg", *SMALL]) == 0
    raw = np.load(tmp_path / "raw" / "clip.npy")
    rel = np.linalg.norm(raw - two) / np.linalg.norm(two)
    assert 0 < rel < 6e-4, rel
    # --keep-flow: dense_flow.py's files, byte for byte
    kept = sorted(p.name for p in (tmp_path / "kept" / "clip").iterdir())
    assert kept == sorted(p.name for p in (tmp_path / "df" / "clip").iterdir() if p.name != dense_flow.DONE_MARKER)
    assert len(kept) == 24
    for name in kept:
        assert (tmp_path / "kept" / "clip" / name).read_bytes() == (tmp_path / "df" / "clip" / name).read_bytes()
    # --concat: RGB then flow, one 2048-d row per window, with the windows' seconds
    rgb = np.load(tmp_path / "one" / "rgb" / "clip.npy")
    both = np.load(tmp_path / "one" / "concat" / "clip.npy")
    assert both.shape == (2, 2048)
    assert np.array_equal(both[:, :1024], rgb) and np.array_equal(both[:, 1024:], one)
    side = json.loads((tmp_path / "one" / "concat" / "clip.json").read_text())
    assert side["fps"] == 10 and side["frames"] == 12 and side["mode"] == "rgb+flow"
    assert side["window_start_s"] == [0.0, 0.4] and side["window_end_s"] == [0.8, 1.2]
    # the concatenation records both streams' recipes, and is remade when the flow stream is redone
    assert side["weights_sha256"] != side["flow.weights_sha256"] and side["flow.flow_jpeg"] is True
    flow_side = json.loads((tmp_path / "one" / "flow" / "clip.json").read_text())
    store = feature_store.NpyStore(tmp_path / "one" / "flow")
    store.save("clip", 2 * one, {**flow_side, "flow_jpeg": False})  # as an --overwrite --no-flow-jpeg rerun would
    args = ef.parse_args(["-mode", "both", "-load_model", weights["rgb"], "--flow-model", weights["flow"], "--input",
                          str(video), "-save_dir", str(tmp_path / "one"), "--concat", *SMALL])
    assert ef.concat_streams(args, input_sources([video]), "") == []
    assert np.array_equal(np.load(tmp_path / "one" / "concat" / "clip.npy")[:, 1024:], 2 * one)
    assert json.loads((tmp_path / "one" / "concat" / "clip.json").read_text())["flow.flow_jpeg"] is False


@pytest.mark.slow
def test_predict_flow_on_the_fly_equals_dense_flow_frames(tmp_path):
    video = write_video(tmp_path / "clip.mp4", 5)
    assert dense_flow.main([str(video), "-o", str(tmp_path / "df"), "--resize", "0", "--workers", "1"]) == 0
    computed = np.stack(list(predict.computed_flow_frames(video, 0, 0, torch.device("cpu"))))
    stored = np.stack(list(predict.flow_frames(tmp_path / "df" / "clip", 0, 0)))
    assert computed.shape == stored.shape == (5, 48, 64, 2)
    # the same flow frames, up to the last bits of a different thread count's float sums
    diff = np.abs(computed.astype(int) - stored.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.01


@pytest.mark.slow
def test_fps_sampling_picks_nearest_frames_and_records_seconds(tmp_path, weights):
    values = [10 * i + 20 for i in range(20)]  # frame i is flat gray 10 i + 20
    video = write_video(tmp_path / "v.avi", 20, fps=10, fourcc="MJPG", values=values)
    picked = [int(round(f.mean())) for f in frame_io.sample_frames(video, 4)]
    # targets 0, .25, .5, ... s at 10 fps: frames 0, 2 (2.5 -> the earlier), 5, 7 (7.5), 10, ...
    nearest = [0, 2, 5, 7, 10, 12, 15, 17]
    assert [min(range(20), key=lambda i: abs(values[i] - v)) for v in picked] == nearest
    assert [len(list(frame_io.sample_frames(video, r))) for r in (10, 5, 1)] == [20, 10, 2]
    out = tmp_path / "out"
    assert ef.main(["-mode", "rgb", "-load_model", weights["rgb"], "--input", str(video), "-save_dir", str(out),
                    "--fps", "5", "--resize", "0", "--crop", "0", "--stack", "4", "--step", "2", "--workers", "0",
                    "-q", "--format", "h5"]) == 0
    import h5py

    with h5py.File(out / "features.h5", "r") as f:
        ds = f["v"]
        assert ds.shape == (4, 1024)
        assert ds.attrs["fps"] == 5 and ds.attrs["frames"] == 10
        assert list(ds.attrs["window_start_s"]) == [0.0, 0.4, 0.8, 1.2]
        assert list(ds.attrs["window_end_s"]) == [0.8, 1.2, 1.6, 2.0]


@pytest.mark.slow
def test_truncated_video_gives_features_for_what_decodes(tmp_path, weights, caplog):
    video = write_video(tmp_path / "t.avi", 24, fourcc="MJPG")
    data = video.read_bytes()
    video.write_bytes(data[:len(data) * 6 // 10])  # cut in the middle
    with caplog.at_level(logging.WARNING):
        frames = list(frame_io.iter_frames(video))
    assert 8 <= len(frames) < 24
    assert f"decoding stopped after frame {len(frames)}" in caplog.text
    out = tmp_path / "out"
    assert ef.main(["-mode", "rgb", "-load_model", weights["rgb"], "--input", str(video), "-save_dir", str(out),
                    *SMALL]) == 0
    side = json.loads((out / "t.json").read_text())
    assert side["frames"] == len(frames)
    assert np.load(out / "t.npy").shape == ((len(frames) - 8) // 4 + 1, 1024)
    # nothing decodable: non-zero exit, the video named
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "b.avi").write_bytes(data[:200])
    r = run_cli("extract_features.py", "-mode", "rgb", "-load_model", weights["rgb"], "--input",
                tmp_path / "bad" / "b.avi", "-save_dir", tmp_path / "out2", *SMALL)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "b.avi" in r.stderr


@pytest.mark.slow
def test_bad_flags_one_line_nothing_written(tmp_path, weights):
    video = write_video(tmp_path / "clip.mp4", 6, fps=10)
    base = ["-load_model", weights["rgb"], "--input", video]
    cases = [(["--fps", "0"], "--fps must be a positive"), (["--fps", "-2"], "--fps must be a positive"),
             (["--fps", "25"], "above the 10 fps"),
             (["--flow-model", weights["flow"]], "--flow-model is for the flow stream"),
             (["-mode", "both", "--flow-model", weights["rgb"]], "rgb weights"),
             (["--concat"], "--concat needs -mode both")]
    for extra, message in cases:
        out = tmp_path / "out"
        r = run_cli("extract_features.py", *base, "-save_dir", out, *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert "Traceback" not in r.stderr and message in r.stderr, (extra, r.stderr)
        assert sum("error:" in line for line in r.stderr.splitlines()) == 1, (extra, r.stderr)
        assert not out.exists() or not any(out.rglob("*")), extra


@pytest.mark.slow
def test_dense_flow_workers_split_one_video_same_files(tmp_path):
    video = write_video(tmp_path / "clip.mp4", 12)
    assert dense_flow.split_pairs(12, 2) == [(0, 6), (6, None)]
    assert dense_flow.split_pairs(0, 2) == [(0, None)]
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        assert dense_flow.main([str(video), "-o", str(out), "--resize", "0", "--rgb", "--visualize",
                                "--workers", workers, "--no-compile"]) == 0
        outs.append(out / "clip")
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir()) and len(names) == 38  # 36 frames, vis, marker
    assert dense_flow.DONE_MARKER in names  # written last, by the parent, also for a split video
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert [p.name for p in (tmp_path / "w2").iterdir()] == ["clip"]  # no temporary folder left


# ---- both streams from one decode, TV-L1 on worker processes (issue 20) ----

def _stacked(items: list[tuple[str, dict]], mode: str) -> np.ndarray:
    return np.concatenate([it["frames"].numpy() for m, it in items if m == mode])


@pytest.mark.slow
def test_flow_split_across_workers_equals_one_worker(tmp_path):
    """1, 2 and 17 pairs (jobs of FLOW_JOB_PAIRS pairs do not divide them evenly): the flow of
    two worker processes, and of this process, equals the single-worker path's (tvl1.iter_video_flow
    in one DataLoader worker), and the RGB frames the per-stream path's."""
    from video_sources import FLOW_JOB_PAIRS, FlowOptions, FlowWorkers, iter_pieces, two_stream_items

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the old path runs here: with one thread, as in its worker
    try:
        for n in (2, 3, 18):
            assert (n - 1) % FLOW_JOB_PAIRS != 0 or n == 2
            src = input_sources([write_video(tmp_path / f"v{n}.mp4", n)])[0]
            old_flow = np.concatenate([p["frames"].numpy() for p in iter_pieces(src, "flow", 0, 0, flow=FlowOptions(resize=0))])
            old_rgb = np.concatenate([p["frames"].numpy() for p in iter_pieces(src, "rgb", 0, 0)])
            assert old_flow.shape == (n, 48, 64, 2) and old_rgb.shape == (n, 48, 64, 3)
            for workers in (2, 0):
                with FlowWorkers(workers) as w:
                    items = list(two_stream_items([(src, ("rgb", "flow"))], w, lambda f: f,
                                                  lambda f: cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), lambda f: f,
                                                  piece_frames=5))
                np.testing.assert_array_equal(_stacked(items, "flow"), old_flow, err_msg=f"{n} frames, {workers}")
                np.testing.assert_array_equal(_stacked(items, "rgb"), old_rgb)
                for mode in ("rgb", "flow"):
                    ends = [it for m, it in items if m == mode and it["last"]]
                    assert len(ends) == 1 and ends[0]["count"] == n and ends[0]["error"] is None
                    assert [it["start"] for m, it in items if m == mode] == sorted(
                        it["start"] for m, it in items if m == mode)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_parallel_two_stream_equals_two_step_and_old_path(tmp_path, weights):
    """-mode both on 2 TV-L1 processes: the features equal the two-step path's (dense_flow.py,
    then -mode flow -root) and the single-worker path's, difference 0.0."""
    video = write_video(tmp_path / "clip.mp4", 19)
    assert dense_flow.main([str(video), "-o", str(tmp_path / "df"), "--resize", "0", "--workers", "1"]) == 0
    opts = ["--resize", "0", "--crop", "0", "-q"]
    assert ef.main(["-mode", "flow", "-load_model", weights["flow"], "-root", str(tmp_path / "df"),
                    "-save_dir", str(tmp_path / "two"), *opts, "--workers", "0"]) == 0
    assert ef.main(["-mode", "rgb", "-load_model", weights["rgb"], "--input", str(video),
                    "-save_dir", str(tmp_path / "two_rgb"), *opts, "--workers", "0"]) == 0
    assert ef.main(["-mode", "both", "-load_model", weights["rgb"], "--flow-model", weights["flow"], "--input",
                    str(video), "-save_dir", str(tmp_path / "one"), "--flow-resize", "0", *opts,
                    "--workers", "2"]) == 0
    flow, rgb = np.load(tmp_path / "one" / "flow" / "clip.npy"), np.load(tmp_path / "one" / "rgb" / "clip.npy")
    assert flow.shape == rgb.shape == (2, 1, 1, 1024)
    np.testing.assert_array_equal(flow, np.load(tmp_path / "two" / "clip.npy"))
    np.testing.assert_array_equal(rgb, np.load(tmp_path / "two_rgb" / "clip.npy"))
    # the single-worker path (a DataLoader worker running tvl1.iter_video_flow), still behind extract_videos
    args = ef.parse_args(["-mode", "flow", "-load_model", weights["flow"], "--input", str(video), "-save_dir",
                          str(tmp_path / "old"), "--flow-resize", "0", *opts, "--workers", "1"])
    model = ef.weights.load_model(weights["flow"], mode="flow").for_inference(precision="fp32")
    done, fails = ef.extract_videos(args, model, input_sources([video]), "flow", tmp_path / "old",
                                    torch.device("cpu"), "", ef.recipe(args, "flow", ""))
    assert (done, fails) == (1, [])
    np.testing.assert_array_equal(flow, np.load(tmp_path / "old" / "clip.npy"))


@pytest.mark.slow
def test_flow_worker_error_skips_the_video_in_one_line(tmp_path, weights, monkeypatch, caplog):
    """TV-L1 failing in a worker on a frame in the middle of one video (here: any frame that is
    all white, standing for a corrupt one): that video's flow fails with one line naming it,
    nothing of its flow is written (no kept frames, no temporaries), the other video is done,
    exit status 1."""
    import video_sources

    real = video_sources.tvl1.compute_flow

    def failing(frames, **kw):
        if (np.asarray(frames).mean(axis=(1, 2)) > 250).any():
            raise FrameError("corrupt frame")
        return real(frames, **kw)
    monkeypatch.setattr(video_sources.tvl1, "compute_flow", failing)  # inherited by the forked workers
    (tmp_path / "in").mkdir()
    write_video(tmp_path / "in" / "good.mp4", 14)
    values = [40 + 5 * i for i in range(14)]
    values[9] = 255
    write_video(tmp_path / "in" / "bad.avi", 14, fourcc="MJPG", values=values)
    out, kept = tmp_path / "out", tmp_path / "kept"
    with caplog.at_level(logging.ERROR):
        code = ef.main(["-mode", "both", "-load_model", weights["rgb"], "--flow-model", weights["flow"], "--input",
                        str(tmp_path / "in"), "-save_dir", str(out), "--flow-resize", "0", "--keep-flow", str(kept),
                        "--resize", "0", "--crop", "0", "-q", "--workers", "2"])
    assert code == 1
    assert (out / "flow" / "good.npy").is_file() and (out / "rgb" / "good.npy").is_file()
    assert not (out / "flow" / "bad.npy").exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "bad.avi" in r.getMessage()]
    assert errors and all(e.count("\n") == 0 and "corrupt frame" in e for e in errors), errors
    assert [line.split("\t")[0] for line in (out / "flow" / "failures.txt").read_text().splitlines()] == ["bad"]
    assert sorted(p.name for p in kept.iterdir()) == ["good"]  # bad's kept frames removed with their temporary


@pytest.mark.slow
def test_predict_two_stream_engine_equals_per_stream_path(tmp_path, weights):
    """predict.py's two-stream logits of a video file from one decode (TV-L1 on 2 workers)
    equal the per-stream path's (RGB, then flow computed on the fly), exactly."""
    from video_sources import FlowWorkers

    video = write_video(tmp_path / "clip.mp4", 11)
    rgb_model = predict.build_model(Path(weights["rgb"]), "rgb", torch.device("cpu"), "fp32")
    flow_model = predict.build_model(Path(weights["flow"]), "flow", torch.device("cpu"), "fp32")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with FlowWorkers(2) as w:
            engine = predict.two_stream_logits(rgb_model, flow_model, video, 0, 32, torch.device("cpu"), w)
        per_stream = (predict.video_logits(rgb_model, lambda: predict.rgb_clips(video, 0, 32), 11, torch.device("cpu"))
                      + predict.video_logits(flow_model, lambda: predict.computed_flow_frames(video, 0, 32,
                                                                                             torch.device("cpu")),
                                             11, torch.device("cpu")))
    finally:
        torch.set_num_threads(threads)
    assert engine.shape == (157,)
    assert torch.equal(engine, per_stream)
