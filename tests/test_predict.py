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
    """predict.py as a process: for what only a process shows (exit status, no traceback)."""
    return subprocess.run([sys.executable, str(ROOT / "predict.py"), *args], capture_output=True, text=True,
                          cwd=ROOT)


def predict_main(capsys, *args: str) -> str:
    """predict.main in this process (no interpreter start, no second load of torch): its stdout."""
    capsys.readouterr()
    assert predict.main(list(args)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def scratch_model(rgb_scratch_weights) -> InceptionI3d:
    """The plain rgb_scratch model, loaded once (for_inference copies it, leaving it alone)."""
    return weights.load_model(rgb_scratch_weights, mode="rgb")


@pytest.fixture(scope="module")
def bunny_logits(scratch_model, sample_videos) -> torch.Tensor:
    """The fp32 streamed logits of Big Buck Bunny at 128 / 112 (test_streamed_logits_equal_whole_video
    checks this computation against the whole-video forward): the reference of the CLI tests."""
    return predict.video_logits(scratch_model.for_inference("fp32"), lambda: predict.rgb_clips(sample_videos[1], 128, 112),
                                None, torch.device("cpu"))


def whole_video_logits(model: InceptionI3d, frames: np.ndarray) -> torch.Tensor:
    """The reference: the plain model on the whole clip at once, logits averaged over time."""
    x = torch.from_numpy(frame_io.to_tensor_layout(frame_io.to_model_range(frames)))[None]
    with torch.inference_mode():
        return model(x)[0].mean(dim=1)


def test_labels():
    assert predict.load_labels(400)[0] == "abseiling"
    assert len(predict.load_labels(600)) == 600
    assert predict.load_labels(157)[3] == "class 3"


def test_streamed_logits_equal_whole_video(scratch_model, sample_videos, bunny_logits):
    """Windowed streaming gives the whole-video logits (fp32)."""
    bunny = sample_videos[1]
    model = scratch_model
    frames = np.stack(list(predict.rgb_clips(bunny, 128, 112)))
    ref = whole_video_logits(model, frames)
    cpu = torch.device("cpu")
    source = lambda: predict.rgb_clips(bunny, 128, 112)  # noqa: E731
    fp32 = predict.video_logits(model.for_inference("fp32"), source, len(frames), cpu)
    assert torch.allclose(fp32, ref, rtol=1e-4, atol=1e-4)
    # A wrong length guess is corrected by reading the stream again.
    assert torch.allclose(predict.video_logits(model.for_inference("fp32"), source, len(frames) + 3, cpu),
                          ref, rtol=1e-4, atol=1e-4)
    # and without a length (the CLI's case for folders): the reference the CLI tests below use
    assert torch.allclose(bunny_logits, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.bf16
def test_streamed_logits_bf16_keep_the_top_class(scratch_model, sample_videos):
    bunny = sample_videos[1]
    model = scratch_model
    frames = np.stack(list(predict.rgb_clips(bunny, 128, 112)))
    ref = whole_video_logits(model, frames)
    source = lambda: predict.rgb_clips(bunny, 128, 112)  # noqa: E731
    bf16 = predict.video_logits(model.for_inference("bf16"), source, len(frames), torch.device("cpu"))
    assert bf16.argmax() == ref.argmax()
    assert torch.nn.functional.cosine_similarity(bf16, ref, dim=0) > 0.999


def test_predict_real_videos_json(rgb_scratch_weights, sample_videos, tmp_path, capsys):
    """Both sample videos end to end; a frame folder gives the same answer as its video."""
    bunny = sample_videos[1]
    folder = tmp_path / "bunny_frames"
    folder.mkdir()
    for i, frame in enumerate(frame_io.iter_frames(bunny)):
        frame_io.write_image(folder / f"{i:05d}.png", frame)  # lossless, so identical pixels
    out = json.loads(predict_main(capsys, str(sample_videos[0]), str(bunny), str(folder), "--weights",
                                  str(rgb_scratch_weights), "--json", "--top", "3", "--precision", "fp32",
                                  "--device", "cpu"))
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


def test_predict_text_output(rgb_scratch_weights, sample_videos, bunny_logits, capsys):
    """The text form prints the input, the logits' norm and the top classes with their
    probabilities and logits: the values of the fp32 streamed logits, to the printed digits."""
    bunny = sample_videos[1]
    out = predict_main(capsys, str(bunny), "--weights", str(rgb_scratch_weights), "--resize", "128", "--crop", "112",
                       "--top", "2", "--precision", "fp32")
    want = predict.top_k(bunny_logits, predict.load_labels(400), 2)
    lines = out.splitlines()
    assert lines[:3] == [str(bunny), f"Norm of logits: {want['logits_norm']:f}", "Top classes and probabilities"]
    assert len(lines) == 5
    for line, t in zip(lines[3:], want["top"]):
        prob, logit, label = line.split(" ", 2)
        assert label == t["label"]
        assert float(prob) == pytest.approx(t["prob"], rel=1e-5) and float(logit) == pytest.approx(t["logit"], abs=0.01)


def test_two_stream_adds_flow_logits(rgb_scratch_weights, sample_videos, tmp_path, random_i3d, bunny_logits, capsys):
    """Two-stream = RGB logits + flow logits, with flow read from x/y JPEG folders (fp32: the
    streamed logits equal the whole-video ones to 1e-4 of their scale, as the README states)."""
    flow_model = random_i3d(num_classes=400, in_channels=2)
    flow_path = tmp_path / "flow.pt"
    torch.save(flow_model.state_dict(), flow_path)
    flow_dir = tmp_path / "flow" / "clip"
    flow_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 17):
        for axis in "xy":
            frame_io.write_image(flow_dir / f"clip-{i:06d}{axis}.jpg", rng.integers(100, 156, (128, 160), np.uint8))
    out = predict_main(capsys, str(sample_videos[1]), "--weights", str(rgb_scratch_weights), "--flow-weights",
                       str(flow_path), "--flow-input", str(flow_dir), "--resize", "128", "--crop", "112", "--json",
                       "--precision", "fp32", "--top", "400")
    got = {t["index"]: t["logit"] for t in json.loads(out)[0]["top"]}
    got = np.array([got[i] for i in range(400)])
    rgb = bunny_logits
    flow_frames = np.stack(list(predict.flow_frames(flow_dir, 128, 112)))
    flow = whole_video_logits(flow_model, flow_frames).numpy()
    expected = rgb.numpy() + flow
    scale = np.abs(expected).max()
    assert np.abs(flow - flow.mean()).max() > 0.01 * scale  # the flow stream moves the answer, not just its mean
    assert np.abs(got - expected).max() < 1e-4 * scale


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


def test_two_stream_computes_flow_when_not_given(rgb_scratch_weights, sample_videos, tmp_path, random_i3d, capsys):
    """Without --flow-input, predict.py computes TV-L1 flow on the fly; the README promises the
    same flow frames as dense_flow.py's JPEGs read back, so the same logits."""
    import dense_flow
    clip = tmp_path / "clip"
    clip.mkdir()
    for i, frame in zip(range(10), frame_io.iter_frames(sample_videos[1], resize=128)):
        frame_io.write_image(clip / f"{i:04d}.png", frame)
    torch.save(random_i3d(num_classes=400, in_channels=2).state_dict(), tmp_path / "flow.pt")
    # the compiled solver, as predict.py runs it (eager and compiled TV-L1 differ by float rounding)
    assert dense_flow.main([str(clip), "-o", str(tmp_path / "flow"), "--resize", "128"]) == 0
    rgb_only = ["--weights", str(rgb_scratch_weights), "--resize", "128", "--crop", "112", "--json",
                "--precision", "fp32", "--top", "400"]
    common = [*rgb_only, "--flow-weights", str(tmp_path / "flow.pt")]
    # in this process, as the solver dense_flow.main just compiled here (predict.py compiles it the same way)
    runs = [predict_main(capsys, str(clip), *args) for args in
            (common, [*common, "--flow-input", str(tmp_path / "flow" / "clip")], rgb_only)]
    computed, given, rgb = ({t["index"]: t["logit"] for t in json.loads(out)[0]["top"]} for out in runs)
    computed, given, rgb = (np.array([d[i] for i in range(400)]) for d in (computed, given, rgb))
    scale = np.abs(given).max()
    assert np.abs(given - rgb).max() > 0.01 * scale  # the flow stream counts
    assert np.abs(computed - given).max() <= 1e-6 * scale  # the same frames: equal up to float printing
