"""predict.py: Kinetics classification of real videos with DeepMind's real rgb_scratch weights."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import frame_io
import predict
import weights
from pytorch_i3d import InceptionI3d

ROOT = Path(__file__).resolve().parent.parent


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "predict.py"), *args], capture_output=True, text=True,
                          cwd=ROOT)


def whole_video_logits(model: InceptionI3d, frames: np.ndarray) -> torch.Tensor:
    """The reference: the plain model on the whole clip at once, logits averaged over time."""
    x = torch.from_numpy(frame_io.to_tensor_layout(frame_io.to_model_range(frames)))[None]
    with torch.inference_mode():
        return model(x)[0].mean(dim=1)


def test_labels():
    assert predict.load_labels(400)[0] == "abseiling"
    assert len(predict.load_labels(600)) == 600
    assert predict.load_labels(157)[3] == "class 3"


def test_streamed_logits_equal_whole_video(rgb_scratch_weights, sample_videos):
    """Windowed streaming gives the whole-video logits (fp32)."""
    bunny = sample_videos[1]
    model = weights.load_model(rgb_scratch_weights, mode="rgb")
    frames = np.stack(list(predict.rgb_clips(bunny, 128, 112)))
    ref = whole_video_logits(model, frames)
    cpu = torch.device("cpu")
    source = lambda: predict.rgb_clips(bunny, 128, 112)  # noqa: E731
    fp32 = predict.video_logits(model.for_inference("fp32"), source, len(frames), cpu)
    assert torch.allclose(fp32, ref, rtol=1e-4, atol=1e-4)
    # A wrong length guess is corrected by reading the stream again.
    assert torch.allclose(predict.video_logits(model.for_inference("fp32"), source, len(frames) + 3, cpu),
                          ref, rtol=1e-4, atol=1e-4)


@pytest.mark.bf16
def test_streamed_logits_bf16_keep_the_top_class(rgb_scratch_weights, sample_videos):
    bunny = sample_videos[1]
    model = weights.load_model(rgb_scratch_weights, mode="rgb")
    frames = np.stack(list(predict.rgb_clips(bunny, 128, 112)))
    ref = whole_video_logits(model, frames)
    source = lambda: predict.rgb_clips(bunny, 128, 112)  # noqa: E731
    bf16 = predict.video_logits(model.for_inference("bf16"), source, len(frames), torch.device("cpu"))
    assert bf16.argmax() == ref.argmax()
    assert torch.nn.functional.cosine_similarity(bf16, ref, dim=0) > 0.999


def test_predict_real_videos_json(rgb_scratch_weights, sample_videos, tmp_path):
    """Both sample videos end to end; a frame folder gives the same answer as its video."""
    bunny = sample_videos[1]
    folder = tmp_path / "bunny_frames"
    folder.mkdir()
    for i, frame in enumerate(frame_io.iter_frames(bunny)):
        frame_io.write_image(folder / f"{i:05d}.png", frame)  # lossless, so identical pixels
    r = run_predict(str(sample_videos[0]), str(bunny), str(folder), "--weights", str(rgb_scratch_weights),
                    "--json", "--top", "3", "--precision", "fp32", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["input"] for o in out] == [str(sample_videos[0]), str(bunny), str(folder)]
    for o in out:
        assert len(o["top"]) == 3
        probs = [t["prob"] for t in o["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert o["logits_norm"] > 0
        assert o["top"][0]["label"] == predict.load_labels(400)[o["top"][0]["index"]]
    # DeepMind's rgb_scratch on Big Buck Bunny (a rabbit among birds): feeding birds, clearly.
    assert out[1]["top"][0]["label"] == "feeding birds" and out[1]["top"][0]["prob"] > 0.5
    assert out[2]["top"][0]["label"] == out[1]["top"][0]["label"]
    assert abs(out[2]["top"][0]["logit"] - out[1]["top"][0]["logit"]) < 1e-3


def test_predict_text_output(rgb_scratch_weights, sample_videos):
    r = run_predict(str(sample_videos[1]), "--weights", str(rgb_scratch_weights), "--resize", "128",
                    "--crop", "112", "--top", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(sample_videos[1])
    assert lines[1].startswith("Norm of logits: ")
    assert len(lines) == 5


def test_two_stream_adds_flow_logits(rgb_scratch_weights, sample_videos, tmp_path):
    """Two-stream = RGB logits + flow logits, with flow read from x/y JPEG folders."""
    torch.manual_seed(0)
    flow_model = InceptionI3d(400, in_channels=2).eval()
    flow_path = tmp_path / "flow.pt"
    torch.save(flow_model.state_dict(), flow_path)
    flow_dir = tmp_path / "flow" / "clip"
    flow_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 17):
        for axis in "xy":
            frame_io.write_image(flow_dir / f"clip-{i:06d}{axis}.jpg", rng.integers(100, 156, (128, 160), np.uint8))
    r = run_predict(str(sample_videos[1]), "--weights", str(rgb_scratch_weights), "--flow-weights", str(flow_path),
                    "--flow-input", str(flow_dir), "--resize", "128", "--crop", "112", "--json",
                    "--precision", "fp32", "--top", "400")
    assert r.returncode == 0, r.stderr
    got = {t["index"]: t["logit"] for t in json.loads(r.stdout)[0]["top"]}
    rgb = predict.video_logits(weights.load_model(rgb_scratch_weights).for_inference("fp32"),
                               lambda: predict.rgb_clips(sample_videos[1], 128, 112), None, torch.device("cpu"))
    flow_frames = np.stack(list(predict.flow_frames(flow_dir, 128, 112)))
    flow = whole_video_logits(flow_model, flow_frames)
    expected = rgb + flow
    assert np.allclose([got[i] for i in range(400)], expected.numpy(), atol=1e-3)


@pytest.mark.parametrize("case", ["missing", "empty", "not_a_video", "flow_weights", "precision", "weights_name"])
def test_bad_input_one_line(case, rgb_scratch_weights, tmp_path):
    args = [str(tmp_path / "missing.mp4"), "--weights", str(rgb_scratch_weights)]
    if case == "empty":
        (tmp_path / "empty.mp4").write_bytes(b"")
        args[0] = str(tmp_path / "empty.mp4")
    elif case == "not_a_video":
        (tmp_path / "text.mp4").write_bytes(b"\0\1 not a video\n" * 100)  # binary: tried as a video
        args[0] = str(tmp_path / "text.mp4")
    elif case == "flow_weights":
        torch.save(InceptionI3d(400, in_channels=2).state_dict(), tmp_path / "flow.pt")
        args = [str(tmp_path), "--weights", str(tmp_path / "flow.pt")]
    elif case == "precision":
        args += ["--precision", "fp8"]
    elif case == "weights_name":
        args = [str(tmp_path), "--weights", "no_such_weights"]
    before = sorted(tmp_path.iterdir())
    r = run_predict(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("predict.py: error: ")]
    expected = {
        "missing": f"{tmp_path / 'missing.mp4'}: no such video file or frame folder",
        "empty": f"{tmp_path / 'empty.mp4'}: unreadable video",
        "not_a_video": f"{tmp_path / 'text.mp4'}: unreadable video",
        "flow_weights": f"{tmp_path / 'flow.pt'}: these are flow weights (2 input channels); mode rgb needs 3",
        "precision": "argument --precision/-precision: invalid choice: 'fp8'",
        "weights_name": "unknown weights 'no_such_weights'; one of rgb_scratch, ",
    }[case]
    assert errors and expected in errors[0], r.stderr
    if case in ("empty", "not_a_video"):  # a batch job: the item, then the summary, exit 1
        assert errors[1:] == [f"predict.py: error: 1 of 1 inputs failed: {args[0]}"], r.stderr
        assert r.returncode == 1
    else:  # bad input, refused before any work: one line, exit 2
        assert len(errors) == 1 and r.returncode == 2, r.stderr
    assert sorted(tmp_path.iterdir()) == before  # nothing left behind


def test_two_stream_computes_flow_when_not_given(rgb_scratch_weights, sample_videos, tmp_path):
    """Without --flow-input, predict.py computes TV-L1 flow with dense_flow.py; the result is
    what dense_flow.py's own JPEG frames of the same clip give."""
    import dense_flow
    clip = tmp_path / "clip"
    clip.mkdir()
    for i, frame in zip(range(10), frame_io.iter_frames(sample_videos[1], resize=128)):
        frame_io.write_image(clip / f"{i:04d}.png", frame)
    torch.manual_seed(0)
    torch.save(InceptionI3d(400, in_channels=2).state_dict(), tmp_path / "flow.pt")
    assert dense_flow.main([str(clip), "-o", str(tmp_path / "flow"), "--resize", "128", "--no-compile"]) == 0
    common = ["--weights", str(rgb_scratch_weights), "--flow-weights", str(tmp_path / "flow.pt"), "--resize", "128",
              "--crop", "112", "--json", "--precision", "fp32", "--top", "400"]
    computed = run_predict(str(clip), *common)
    given = run_predict(str(clip), *common, "--flow-input", str(tmp_path / "flow" / "clip"))
    assert computed.returncode == 0 and given.returncode == 0, computed.stderr + given.stderr
    a = {t["index"]: t["logit"] for t in json.loads(computed.stdout)[0]["top"]}
    b = {t["index"]: t["logit"] for t in json.loads(given.stdout)[0]["top"]}
    diff = np.array([a[i] - b[i] for i in range(400)])
    assert np.abs(diff).max() < 0.05 * np.abs(list(b.values())).max()  # only JPEG rounding apart
