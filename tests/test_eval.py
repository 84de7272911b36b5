"""eval_i3d.py: average precision against scikit-learn, per-frame probabilities against the
plain whole-video forward pass, classification / localization mAP on a small synthetic
Charades dataset (one and two streams), the command line and its bad-input errors."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import eval_i3d
import synthetic_charades
from charades_dataset import VideoAnnotation, read_annotations
from video_sources import VideoSource, open_video
from synthetic_charades import calibrated_random_i3d
import charades_eval
import charades_metrics

ROOT = Path(__file__).resolve().parent.parent
CLASSES, CROP = 3, 48


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    """6 videos (3 testing) of 18..24 frames at 48x60, 3 motion classes, RGB and flow."""
    out = tmp_path_factory.mktemp("syn")
    synthetic_charades.write_dataset(out, videos=6, num_classes=CLASSES, frames=24, size=48, flow=True,
                                     test_fraction=0.5, seed=0)
    return out


@pytest.fixture(scope="module")
def rgb_model() -> torch.nn.Module:
    return calibrated_random_i3d(seed=0, num_classes=CLASSES)


@pytest.fixture(scope="module")
def flow_model() -> torch.nn.Module:
    return calibrated_random_i3d(seed=1, num_classes=CLASSES, in_channels=2)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, rgb_model, flow_model) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("weights")
    paths = {"rgb": d / "rgb.pt", "flow": d / "flow.pt"}
    torch.save(rgb_model.state_dict(), paths["rgb"])
    torch.save(flow_model.state_dict(), paths["flow"])
    return paths


# ----------------------------------------------------------------------------------------------
# Average precision
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("decimals", [None, 1])  # continuous scores, and scores with many ties
def test_average_precision_matches_sklearn(decimals):
    rng = np.random.default_rng(0)
    n, c = 60, 8
    labels = (rng.random((n, c)) < 0.3).astype(int)
    labels[:, 5] = 0  # a class without positives: skipped by the mAP
    labels[:, 6] = 1  # a class where every item is positive
    scores = rng.random((n, c)) + 0.4 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    aps = charades_metrics.average_precisions(scores, labels)
    for k in range(c):
        if labels[:, k].any():
            assert aps[k] == pytest.approx(average_precision_score(labels[:, k], scores[:, k]), abs=1e-12)
        else:
            assert np.isnan(aps[k])
    expected = np.mean([average_precision_score(labels[:, k], scores[:, k]) for k in range(c) if labels[:, k].any()])
    assert charades_metrics.mean_average_precision(scores, labels) == pytest.approx(expected, abs=1e-12)
    # Ties are counted together: the order of the items does not matter.
    perm = rng.permutation(n)
    assert charades_metrics.mean_average_precision(scores[perm], labels[perm]) == pytest.approx(
        charades_metrics.mean_average_precision(scores, labels), abs=1e-12)


def test_average_precision_values():
    assert charades_metrics.average_precision([0.9, 0.8, 0.1, 0.0], [1, 1, 0, 0]) == 1.0
    # Positives at ranks 2 and 4: (1/2 + 2/4) / 2; the official per-positive loop without ties.
    assert charades_metrics.average_precision([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1]) == pytest.approx(0.5)
    # One tie block of all items: precision 2/4 at the only threshold.
    assert charades_metrics.average_precision([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert np.isnan(charades_metrics.average_precision([0.3, 0.2], [0, 0]))
    assert np.isnan(charades_metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2))))
    assert np.isnan(charades_metrics.mean_average_precision(np.array([[np.nan], [0.5]]), np.array([[1], [0]])))
    with pytest.raises(ValueError):
        charades_metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))


def test_localize_points_follow_the_official_rule():
    ann = VideoAnnotation("testing", 10.0, [(1, 0.0, 2.0), (2, 4.0, 4.4), (1, 9.5, 10.0)])
    frames, labels = charades_metrics.localize_points(ann, num_frames=240, num_classes=3)
    t = np.arange(25) * 0.4  # t_j = j / 25 * duration
    assert frames.tolist() == np.round(t * 24).astype(int).tolist()  # 24 fps
    assert labels[:, 0].sum() == 0
    assert labels[:, 1].tolist() == [int(x <= 2.0 or x >= 9.5) for x in t]  # inclusive ends
    assert np.flatnonzero(labels[:, 2]).tolist() == [10, 11]  # t = 4.0 and 4.4
    assert charades_metrics.video_labels(ann, 3).tolist() == [0, 1, 1]


# ----------------------------------------------------------------------------------------------
# Per-frame probabilities and evaluation
# ----------------------------------------------------------------------------------------------

def _frames(root: Path, vid: str, mode: str) -> np.ndarray:
    src = VideoSource(key=vid, layout="charades", path=str(root), vid=vid)
    return np.stack(list(open_video(src, mode, None, CROP)[2]))


@pytest.mark.slow
def test_video_frame_probs_equal_the_whole_video_forward(syn, rgb_model):
    root = syn / "rgb"
    frames = _frames(root, "SYN0000", "rgb")
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 255 * 2 - 1
    rgb_model.eval()
    with torch.no_grad():
        logits = rgb_model(x)[0]  # (C, T')
    expected = torch.sigmoid(torch.nn.functional.interpolate(logits[None], size=len(frames), mode="linear",
                                                             align_corners=False))[0].numpy()
    got = charades_eval.video_frame_probs(rgb_model, root, "SYN0000", len(frames), "rgb", None, CROP, "cpu")
    assert got.shape == (CLASSES, len(frames)) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.ptp(got) > 1e-3  # not a constant: the check above has teeth


@pytest.mark.slow
def test_short_video_is_padded_to_clip_frames_as_in_training(syn, rgb_model):
    """--clip-frames (training's flag and default): a video shorter than it is padded with its
    last frame, as training pads its clips; the per-frame outputs are cut back to the video."""
    root = syn / "rgb"
    frames = _frames(root, "SYN0000", "rgb")
    n, padded = len(frames), len(frames) + 13
    x = np.concatenate([frames, np.repeat(frames[-1:], padded - n, axis=0)])
    x = torch.from_numpy(x).permute(3, 0, 1, 2)[None].float() / 255 * 2 - 1
    rgb_model.eval()
    with torch.no_grad():
        logits = rgb_model(x)[0]
    expected = torch.sigmoid(torch.nn.functional.interpolate(logits[None], size=padded, mode="linear",
                                                             align_corners=False))[0, :, :n].numpy()
    got = charades_eval.video_frame_probs(rgb_model, root, "SYN0000", n, "rgb", None, CROP, "cpu",
                                             min_frames=padded)
    assert got.shape == (CLASSES, n)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    unpadded = charades_eval.video_frame_probs(rgb_model, root, "SYN0000", n, "rgb", None, CROP, "cpu")
    assert np.abs(got - unpadded).max() > 1e-4  # the padding is really there
    args = eval_i3d.parse_args(["-root", "r", "-split", "s", "-load_model", "m"])
    assert (args.clip_frames, args.crop, args.resize) == (64, 224, None)  # train_i3d.py's defaults
    assert eval_i3d.parse_args(["-root", "r", "-split", "s", "-load_model", "m", "--clip-frames", "16"]).clip_frames == 16


@pytest.mark.slow
def test_evaluate_one_stream(syn, rgb_model):
    split = syn / "charades.json"
    rgb_model.train()  # as the training loop hands it over
    before = {k: v.clone() for k, v in rgb_model.state_dict().items()}
    r = charades_eval.evaluate(rgb_model, split, syn / "rgb", "rgb", crop=CROP, details=True, progress=False)
    assert rgb_model.training  # left in train mode, and unchanged
    assert all(torch.equal(before[k], v) for k, v in rgb_model.state_dict().items())
    ann = read_annotations(split)
    test_vids = sorted(v for v, a in ann.items() if a.subset == "testing")
    assert r["vids"] == test_vids and r["videos"] == 3 and r["failed"] == [] and r["num_classes"] == CLASSES
    assert r["video_scores"].shape == (3, CLASSES) and r["frame_scores"].shape == (3 * 25, CLASSES)
    # The scores are the max over frames / the 25 sampled frames of video_frame_probs.
    for i, vid in enumerate(test_vids):
        n = len(_frames(syn / "rgb", vid, "rgb"))
        probs = charades_eval.video_frame_probs(rgb_model, syn / "rgb", vid, n, "rgb", None, CROP, "cpu",
                                                   min_frames=64)  # clip_frames' default, as training's
        np.testing.assert_allclose(r["video_scores"][i], probs.max(axis=1), atol=1e-6)
        frames, labels = charades_metrics.localize_points(ann[vid], n, CLASSES)
        np.testing.assert_allclose(r["frame_scores"][25 * i:25 * (i + 1)], probs[:, frames].T, atol=1e-6)
        np.testing.assert_array_equal(r["frame_labels"][25 * i:25 * (i + 1)], labels)
        assert r["video_labels"][i].tolist() == [int(any(c == k for c, _, _ in ann[vid].actions))
                                                 for k in range(CLASSES)]
    assert r["classification_map"] == pytest.approx(
        charades_metrics.mean_average_precision(r["video_scores"], r["video_labels"]))
    assert r["localization_map"] == pytest.approx(
        charades_metrics.mean_average_precision(r["frame_scores"], r["frame_labels"]))
    assert 0 < r["classification_chance"] <= 1 and 0 < r["localization_chance"] <= 1


def test_evaluate_an_oracle_scores_perfectly(syn, rgb_model, monkeypatch):
    """Per-frame probabilities that are the ground truth: classification mAP 1; localization
    near 1 (a time point is scored at the nearest frame, up to half a frame away from it)."""
    ann = read_annotations(syn / "charades.json")

    def oracle(model, root, vid, num_frames, mode, resize, crop, device, return_logits=False, pool=None,
               min_frames=1):
        t = np.arange(num_frames) * ann[vid].duration / num_frames
        out = np.zeros((CLASSES, num_frames), np.float32)
        for c, s, e in ann[vid].actions:
            out[c, (s <= t) & (t <= e)] = 1.0
        return out

    monkeypatch.setattr(charades_eval, "video_frame_probs", oracle)
    r = charades_eval.evaluate(rgb_model, syn / "charades.json", syn / "rgb", crop=CROP, progress=False)
    assert r["classification_map"] == 1.0
    assert 0.95 <= r["localization_map"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["prob", "logit"])
def test_evaluate_two_streams(syn, rgb_model, flow_model, fusion):
    r = charades_eval.evaluate(rgb_model, syn / "charades.json", syn / "rgb", "rgb", flow_model=flow_model,
                          flow_root=syn / "flow", fusion=fusion, crop=CROP, details=True, progress=False)
    assert r["videos"] == 3 and r["failed"] == []
    vid = r["vids"][0]
    n = len(_frames(syn / "rgb", vid, "rgb"))
    lr = charades_eval.video_frame_probs(rgb_model, syn / "rgb", vid, n, "rgb", None, CROP, "cpu", return_logits=True,
                                            min_frames=64)
    lf = charades_eval.video_frame_probs(flow_model, syn / "flow", vid, n, "flow", None, CROP, "cpu", return_logits=True,
                                            min_frames=64)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    fused = (sig(lr) + sig(lf)) / 2 if fusion == "prob" else sig((lr + lf) / 2)
    np.testing.assert_allclose(r["video_scores"][0], fused.max(axis=1), atol=1e-6)
    one = charades_eval.evaluate(rgb_model, syn / "charades.json", syn / "rgb", crop=CROP, details=True, progress=False)
    assert not np.allclose(one["video_scores"], r["video_scores"])  # the flow stream counts


@pytest.mark.slow
def test_evaluate_refuses_wrong_stream_and_classes(syn, rgb_model, flow_model):
    with pytest.raises(charades_eval.UserError, match="channel"):
        charades_eval.evaluate(flow_model, syn / "charades.json", syn / "rgb", "rgb", crop=CROP, progress=False)
    with pytest.raises(charades_eval.UserError, match="class 2"):
        charades_eval.evaluate(calibrated_random_i3d(num_classes=2), syn / "charades.json", syn / "rgb",
                          crop=CROP, progress=False)


@pytest.mark.slow
def test_unreadable_video_is_skipped_and_reported(syn, rgb_model, weight_files, tmp_path):
    root = tmp_path / "rgb"
    shutil.copytree(syn / "rgb", root)
    (root / "SYN0001" / "SYN0001-000003.jpg").write_bytes(b"not a jpeg")
    r = charades_eval.evaluate(rgb_model, syn / "charades.json", root, crop=CROP, progress=False)
    assert r["videos"] == 2 and [v for v, _ in r["failed"]] == ["SYN0001"]
    assert "SYN0001-000003.jpg" in r["failed"][0][1]
    p = _cli("-mode", "rgb", "-root", root, "--split", syn / "charades.json", "-load_model", weight_files["rgb"],
             "--crop", CROP, "--json", "-q")
    assert p.returncode == 1
    assert json.loads(p.stdout)["failed"][0][0] == "SYN0001"
    assert "SYN0001" in p.stderr and "Traceback" not in p.stderr


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "eval_i3d.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.slow
def test_cli_json_two_streams_and_submission(syn, rgb_model, flow_model, weight_files, tmp_path, capsys):
    p = _cli("-mode", "rgb", "-root", syn / "rgb", "-split", syn / "Charades_v1_test.csv", "-load_model",
             weight_files["rgb"], "--flow-model", weight_files["flow"], "--flow-root", syn / "flow",
             "--crop", CROP, "--json", "-q")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    expected = charades_eval.evaluate(rgb_model, syn / "Charades_v1_test.csv", syn / "rgb", flow_model=flow_model,
                                 flow_root=syn / "flow", crop=CROP, progress=False)
    assert out["videos"] == 3
    for key in ("classification_map", "localization_map"):
        assert out[key] == pytest.approx(expected[key], abs=1e-6)
    # In-process: the plain summary line, and the official submission files, whose scores are
    # evaluate()'s for the --subset and --fusion asked for (written with 6 significant digits).
    prefix = tmp_path / "sub"
    code = eval_i3d.main(["-mode", "rgb", "-root", str(syn / "rgb"), "--split", str(syn / "charades.json"),
                          "-load_model", str(weight_files["rgb"]), "--flow-model", str(weight_files["flow"]),
                          "--flow-root", str(syn / "flow"), "--fusion", "logit", "--subset", "training",
                          "--crop", str(CROP), "--submission", str(prefix), "-q"])
    assert code == 0
    assert "classification mAP" in capsys.readouterr().out
    kw = dict(flow_model=flow_model, flow_root=syn / "flow", subset="training", crop=CROP, details=True,
              progress=False)
    want = charades_eval.evaluate(rgb_model, syn / "charades.json", syn / "rgb", fusion="logit", **kw)
    prob = charades_eval.evaluate(rgb_model, syn / "charades.json", syn / "rgb", fusion="prob", **kw)
    ann = read_annotations(syn / "charades.json")
    assert want["vids"] == sorted(v for v, a in ann.items() if a.subset == "training")
    assert np.abs(want["video_scores"] - prob["video_scores"]).max() > 1e-3  # the fusion rule shows
    cls_lines = [line.split() for line in Path(f"{prefix}_classify.txt").read_text().splitlines()]
    loc_lines = [line.split() for line in Path(f"{prefix}_localize.txt").read_text().splitlines()]
    assert [line[0] for line in cls_lines] == want["vids"]
    np.testing.assert_allclose(np.array([line[1:] for line in cls_lines], float), want["video_scores"], rtol=1e-5)
    assert [line[:2] for line in loc_lines] == [[v, str(j)] for v in want["vids"] for j in range(25)]
    np.testing.assert_allclose(np.array([line[2:] for line in loc_lines], float), want["frame_scores"],
                               rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["invalid split", "root without videos", "flow weights for rgb"])
def test_cli_bad_input_is_one_line(case, syn, weight_files, tmp_path):
    split, root, weights_file = syn / "charades.json", syn / "rgb", weight_files["rgb"]
    if case == "invalid split":
        split = tmp_path / "bad.json"
        split.write_text("{not json")
    elif case == "root without videos":
        root = tmp_path / "empty"
        root.mkdir()
    else:
        weights_file = weight_files["flow"]
    p = _cli("-mode", "rgb", "-root", root, "-split", split, "-load_model", weights_file, "--crop", CROP, "-q")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in p.stderr, p.stderr
    expected = {"invalid split": "bad.json", "root without videos": "none of", "flow weights for rgb": "flow weights"}
    assert expected[case] in lines[0]


# ----------------------------------------------------------------------------------------------
# Video datasets: metrics, the eval_i3d.py protocol and outputs, recorded recipes, bad input
# ----------------------------------------------------------------------------------------------

import io as _io  # noqa: E402
import csv as _csv  # noqa: E402

import frame_io  # noqa: E402
import metrics  # noqa: E402
import synthetic_ucf101  # noqa: E402
import video_datasets  # noqa: E402
import video_eval  # noqa: E402
from sklearn.metrics import top_k_accuracy_score, balanced_accuracy_score, confusion_matrix  # noqa: E402


def test_accuracy_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 6))
    labels = rng.integers(0, 6, 50)
    for k in (1, 3, 5):
        assert metrics.top_k_accuracy(scores, labels, k) == pytest.approx(
            top_k_accuracy_score(labels, scores, k=k, labels=range(6)))
    assert metrics.mean_class_accuracy(scores, labels, 6) == pytest.approx(
        balanced_accuracy_score(labels, scores.argmax(1)))
    assert (metrics.confusion_matrix(scores, labels, 6) == confusion_matrix(labels, scores.argmax(1),
                                                                            labels=range(6))).all()


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    out = tmp_path_factory.mktemp("ucf_eval")
    lists = synthetic_ucf101.write_dataset(out, per_class=2, num_classes=3, frames=10, size=40, test_groups=1)
    return out / "videos", lists


@pytest.fixture(scope="module")
def ucf_model(tmp_path_factory):
    """A 3-class random I3D saved as train_i3d.py saves a step, with its recipe."""
    model = calibrated_random_i3d(seed=2, num_classes=3)
    path = tmp_path_factory.mktemp("ucf_model") / "m.pt"
    recipe = {"mode": "rgb", "classes": ["Still", "Pan", "Shake"], "num_classes": 3, "clip_frames": 8,
              "frame_stride": 1, "crop": 32, "resize": 40}
    torch.save(video_datasets.attach_recipe(model.state_dict(), recipe), path)
    return model, path


@pytest.mark.slow
def test_video_eval_is_the_softmax_of_time_averaged_logits(ucf, ucf_model):
    root, lists = ucf
    model, _ = ucf_model
    data = video_datasets.read_dataset([lists], root, "testing")
    r = video_eval.evaluate(model, data, resize=40, crop=32, clip_frames=8, progress=False)
    for key, probs, s in zip(r["keys"], r["probs"], data.samples):
        frames = frame_io.center_crop(video_datasets.load_clip(s.path, list(range(10)), "rgb", 40), 32)
        x = torch.from_numpy(frame_io.to_tensor_layout(frame_io.to_model_range(frames)))[None]
        with torch.no_grad():
            ref = torch.softmax(model.eval()(x).mean(2)[0], 0).numpy()
        assert np.abs(probs - ref).max() < 1e-4  # streamed = whole forward, to float rounding
    y = np.array([ls[0] for ls in r["labels"]])
    assert r["top1"] == pytest.approx(metrics.top_k_accuracy(r["probs"], y, 1)) and r["videos"] == 3
    views = video_eval.evaluate(model, data, resize=40, crop=32, clip_frames=8, views=2, crops=3, progress=False)
    assert views["probs"].shape == (3, 3) and np.allclose(views["probs"].sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_eval_cli_json_outputs_recipe_and_skip_bad(ucf, ucf_model, tmp_path, capsys, caplog):
    root, lists = ucf
    _, path = ucf_model
    bad_root = tmp_path / "videos"
    shutil.copytree(root, bad_root)
    (bad_root / "Pan" / "v_Pan_g01_c01.avi").write_bytes(b"not a video")  # unreadable
    (bad_root / "Shake" / "v_Shake_g01_c01.avi").unlink()  # missing
    argv = ["-root", str(bad_root), "--split", str(lists), "-load_model", str(path), "--json", "-q",
            "--per-class", str(tmp_path / "pc.csv"), "--predictions", str(tmp_path / "pred.csv"),
            "--confusion", str(tmp_path / "cm.png"), "--crop", "24"]
    assert eval_i3d.main(argv) == 1  # a missing and an unreadable video: listed, exit 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"top1", "top5", "mean_class_accuracy", "videos", "missing"} <= out.keys()
    assert out["videos"] == 1 and out["missing"] == 1 and len(out["failed"]) == 1
    assert "--crop 24 given: the model was trained with --crop 32" in caplog.text  # the recipe's other flags hold
    assert eval_i3d.main(argv + ["--skip-bad"]) == 0
    rows = list(_csv.reader(_io.StringIO((tmp_path / "pc.csv").read_text())))
    assert rows[0] == ["class", "name", "videos", "correct", "accuracy"] and [r[1] for r in rows[1:]] == [
        "Still", "Pan", "Shake"]
    pred = list(_csv.DictReader(_io.StringIO((tmp_path / "pred.csv").read_text())))
    assert pred[0]["video"] == "Still/v_Still_g01_c01" and pred[0]["true"] == "Still"
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_model_of_another_class_count_is_refused(ucf, tmp_path):
    root, lists = ucf
    path = tmp_path / "k.pt"
    torch.save(calibrated_random_i3d(seed=0, num_classes=5).state_dict(), path)
    r = subprocess.run([sys.executable, str(ROOT / "eval_i3d.py"), "-root", str(root), "--split", str(lists),
                        "-load_model", str(path), "--crop", "32", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip() == ("eval_i3d.py: error: the rgb model has 5 classes, the dataset 3: not a model for "
                                "this dataset")


def test_kinetics_csv_with_the_published_rgb_scratch(rgb_scratch_weights, sample_videos, tmp_path, capsys):
    """The README's check of DeepMind's 68.4 / 88.0 on a Kinetics validation CSV, run as written
    (eval_i3d.py -load_model rgb_scratch --split CSV -root ROOT) on a tiny Kinetics layout: the
    real sample videos (64 frames each, so no padding) named {youtube_id}_{start:06d}_{end:06d}.mp4
    under ROOT/SPLIT/ and ROOT/LABEL/, labels quoted as in the official CSVs, one video absent.
    The 400-class head scores them through the label map: each label is the class predict.py
    (its own frame reader and label file) ranks 1st, resp. 3rd, for that video at the weights'
    recorded input (256 / 224, taken without --resize / --crop), so top-1 is 1/2 and top-5 1."""
    import re

    import cv2
    import predict
    import weights

    root = tmp_path / "kinetics400_val"
    model = weights.load_model(rgb_scratch_weights, mode="rgb").for_inference("fp32")
    labels400 = predict.load_labels(400)
    rows, ranked = [], {}
    for video, yt, rank in ((sample_videos[1], "bunny_0000A", 0), (sample_videos[0], "bikes-00-0B", 2)):
        name = f"{yt}_000010_000020.mp4"
        frames = [cv2.resize(f, (426, 320), interpolation=cv2.INTER_AREA)
                  for f, _ in zip(frame_io.iter_frames(video), range(64))]
        synthetic_ucf101.write_video(tmp_path / name, np.stack(frames))  # 320 high: resized to 256 by the record
        logits = predict.video_logits(model, lambda: predict.rgb_clips(tmp_path / name, 256, 224), 64,
                                      torch.device("cpu"))
        probs = torch.softmax(logits.float(), 0).numpy()
        label = labels400[np.argsort(-probs, kind="stable")[rank]]
        folder = root / ("validate" if rank == 0 else label)  # the downloaders' two layouts
        folder.mkdir(parents=True)
        shutil.move(tmp_path / name, folder / name)
        rows.append([label, yt, "10", "20", "validate"])
        ranked[f"{yt}_000010_000020"] = (label, probs)
    rows.append(["passing American football (in game)", "--absent-yt", "0", "10", "validate"])
    csv_path = tmp_path / "kinetics_400_val.csv"
    with open(csv_path, "w", newline="") as f:
        _csv.writer(f, quoting=_csv.QUOTE_NONNUMERIC).writerows(
            [["label", "youtube_id", "time_start", "time_end", "split"], *rows])
    argv = ["-load_model", str(rgb_scratch_weights), "--split", str(csv_path), "-root", str(root), "--json", "-q",
            "--predictions", str(tmp_path / "pred.csv"), "--workers", "0"]
    assert eval_i3d.main(argv) == 1  # one video missing: listed, exit 1 (0 with --skip-bad)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["num_classes"], out["videos"], out["missing"]) == (400, 2, 1)
    assert out["missing_videos"][0][0].endswith("--absent-yt_000000_000010.mp4")
    assert out["top1"] == 0.5 and out["top5"] == 1.0 and out["mean_class_accuracy"] == 0.5
    for row in _csv.DictReader(_io.StringIO((tmp_path / "pred.csv").read_text())):
        label, probs = ranked[row["video"]]
        assert row["true"] == label
        top = re.findall(r"(.+?):(\d\.\d{4})(?: |$)", row["top5"])  # names hold spaces
        order = np.argsort(-probs, kind="stable")[:5]
        assert [name for name, _ in top] == [labels400[i] for i in order]
        assert np.allclose([float(p) for _, p in top], probs[order], atol=1e-4)  # printed to 4 decimals
