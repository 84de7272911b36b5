"""extract_features.py --stack N --step 1 --centered: one feature per frame, window t centred on
frame t (frames t - N//2 .. t + (N-1)//2, the ends padded by repeating the first / last frame, as
MS-TCN's per-frame I3D features), with -mode both, --concat, --fps and HDF5. The model is the
calibrated random I3D of synthetic_charades (its features respond to the input)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import extract_features as ef
import streaming

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model5c(random_i3d):
    return random_i3d(final_endpoint="Mixed_5c")


def window_feature(model, frames: np.ndarray) -> np.ndarray:
    """The plain model on one window, averaged over time and space: (1024,)."""
    x = torch.from_numpy((frames.astype(np.float32) / 255.0 * 2 - 1).transpose(3, 0, 1, 2))[None]
    with torch.no_grad():
        return model.extract_features(x)[0].mean(dim=(1, 2, 3)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("stack", [4, 5])
def test_centered_window_t_is_centred_on_frame_t(model5c, stack):
    frames = np.random.default_rng(stack).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    stacker = streaming.WindowStacker(streaming.make_runner(model5c, torch.device("cpu")), stack, 1, batch=3,
                                      centered=True)
    for i in range(0, 6, 4):  # pieces of 4 and 2 frames, as the engine's chunks arrive
        stacker.push(frames[i:i + 4])
    out = stacker.finish()[0].numpy()
    assert out.shape == (6, 1024)  # exactly one row per frame
    padded = np.concatenate([frames[:1].repeat(stack // 2, 0), frames, frames[-1:].repeat((stack - 1) // 2, 0)])
    ref = np.stack([window_feature(model5c, padded[t:t + stack]) for t in range(6)])  # frames t-N//2 .. t+(N-1)//2
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(out - ref).max() <= 1e-4 * scale
    # the edge rows really are padded with the edge frames (not zeros, not dropped)
    assert np.abs(out[0] - out[1]).max() > 1e-3 * scale


def test_centered_keeps_memory_flat():
    """The stacker holds at most one window of frames whatever the video length."""
    seen = []
    run = lambda x: (seen.append(x.shape[0]), torch.zeros(x.shape[0], 1, 1, 4))[1]  # noqa: E731
    stacker = streaming.WindowStacker(run, 9, 1, batch=2, centered=True)
    held = []
    for _ in range(50):
        stacker.push(np.zeros((3, 2, 2, 3), np.uint8))
        held.append(sum(len(p) for p in stacker.pieces))
    assert stacker.finish().shape == (1, 150, 4) and max(held) <= 9


def test_centered_needs_step_1(tmp_path, capsys):
    for extra in ([], ["--stack", "8"], ["--stack", "8", "--step", "4"]):
        with pytest.raises(SystemExit) as e:
            ef.parse_args(["-load_model", "x.pt", "--input", str(tmp_path), "-save_dir", str(tmp_path / "o"),
                           "--centered", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1].endswith("--centered needs --stack N --step 1 (one window per frame)")
        assert sum("error" in line for line in err) == 1


@pytest.mark.slow
def test_centered_cli_both_streams_concat_fps_h5(tmp_path, monkeypatch, random_i3d_file):
    import h5py
    import tvl1
    # What is tested is the windows, --concat, --fps and HDF5, not TV-L1: the flow runs on the
    # 32 px frames themselves (--flow-resize 0, not upscaled to 256) and eager (compiling it takes
    # longer than this whole test otherwise; the forked loader workers inherit the patch).
    monkeypatch.setattr(tvl1, "compile_available", lambda device: False)
    weights = {mode: random_i3d_file(num_classes=157, in_channels=ch) for mode, ch in (("rgb", 3), ("flow", 2))}
    video = tmp_path / "v" / "clip.avi"
    video.parent.mkdir()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32))
    base = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for i in range(20):
        writer.write(np.roll(base, i, axis=1))
    writer.release()
    common = ["-mode", "both", "-load_model", weights["rgb"], "--flow-model", weights["flow"], "--input", video,
              "--resize", "0", "--crop", "32", "--workers", "1", "-q", "--stack", "5", "--step", "1", "--centered",
              "--fps", "12.5", "--concat", "--flow-resize", "0"]
    assert ef.main([str(a) for a in [*common, "-save_dir", tmp_path / "npy"]]) == 0
    rgb, flow = np.load(tmp_path / "npy" / "rgb" / "clip.npy"), np.load(tmp_path / "npy" / "flow" / "clip.npy")
    concat = np.load(tmp_path / "npy" / "concat" / "clip.npy")
    assert rgb.shape == flow.shape == (10, 1024) and concat.shape == (10, 2048)  # 20 frames at 25 fps -> 10 at 12.5
    np.testing.assert_array_equal(concat, np.concatenate([rgb, flow], axis=1))
    side = json.loads((tmp_path / "npy" / "rgb" / "clip.json").read_text())
    assert side["window_center_frame"] == list(range(10))
    assert side["window_center_s"] == [round(t / 12.5, 6) for t in range(10)]
    assert side["window_start_frame"][:4] == [0, 0, 0, 1] and side["window_end_frame"][-3:] == [10, 10, 10]
    assert ef.main([str(a) for a in [*common, "-save_dir", tmp_path / "h5", "--format", "h5"]]) == 0
    with h5py.File(tmp_path / "h5" / "rgb" / "features.h5", "r") as f:
        np.testing.assert_allclose(f["clip"][()], rgb, rtol=0, atol=1e-5 * max(1.0, float(np.abs(rgb).max())))
        assert list(f["clip"].attrs["window_center_frame"]) == list(range(10))


def test_centered_is_part_of_the_recipe_both_ways():
    """--centered into plain --stack N --step 1 outputs, and a plain rerun into --centered
    outputs (the stale case: the old check compared only the keys asked for), are both another
    recipe; outputs made before --centered existed (no key) read as plain and still resume."""
    base = ["-load_model", "x.pt", "--input", "v", "-save_dir", "o", "--stack", "21", "--step", "1"]
    plain = ef.recipe(ef.parse_args(base), "rgb", "")
    centered = ef.recipe(ef.parse_args([*base, "--centered"]), "rgb", "")
    assert plain["centered"] is False and centered["centered"] is True
    assert ef.recipe_difference(plain, centered) == "centered False there, True asked"
    assert ef.recipe_difference(centered, plain) == "centered True there, False asked"
    older = {k: v for k, v in plain.items() if k != "centered"}
    assert ef.recipe_difference(older, plain) is None and ef.recipe_difference(plain, older) is None
    assert ef.recipe_difference(older, centered) == "centered False there (not recorded: the default), True asked"
    assert ef.recipe_difference(centered, older) == "centered True there, False asked (not recorded: the default)"


def test_recipe_keys_of_either_side_count():
    """A recipe key only the stored output has is a difference too (no default: not asked)."""
    wanted = {"mode": "flow", "stack": 16}
    assert ef.recipe_difference({**wanted, "flow_resize": 256}, wanted) == "flow_resize 256 there, not asked"
    assert ef.recipe_difference(wanted, {**wanted, "flow_resize": 256}) == \
        "flow_resize not recorded (an older version made it), 256 asked"
    assert ef.recipe_difference({**wanted, "flow.stack": 8}, wanted) == "flow.stack 8 there, not asked"
    assert ef.recipe_difference({**wanted, "window_center_s": [0.0]}, wanted) is None  # not a recipe key
    assert ef.recipe_difference({**wanted, "code_version": "abc"}, {**wanted, "code_version": "def"}) is None


@pytest.mark.parametrize("stored_centered", [True, False])
def test_rerun_into_the_other_centring_is_refused(tmp_path, stored_centered):
    """Through the store, both directions: refused in one line without --overwrite, redone with it."""
    from types import SimpleNamespace
    from errors import UserError
    from feature_store import NpyStore

    base = ["-load_model", "x.pt", "--input", "v", "-save_dir", "o", "--stack", "21", "--step", "1"]
    plain = ef.recipe(ef.parse_args(base), "rgb", "")
    centered = ef.recipe(ef.parse_args([*base, "--centered"]), "rgb", "")
    stored, wanted = (centered, plain) if stored_centered else (plain, centered)
    store = NpyStore(tmp_path)
    store.save("A", np.zeros((3, 4), np.float32), stored)
    src = [SimpleNamespace(key="A")]
    assert ef.select_todo(store, src, stored, overwrite=False) == []  # the same recipe: done
    with pytest.raises(UserError, match=rf"A.npy was made with another recipe \(centered {stored_centered} there, "
                                        rf"{not stored_centered} asked\); give --overwrite"):
        ef.select_todo(store, src, wanted, overwrite=False)
    assert ef.select_todo(store, src, wanted, overwrite=True) == src
