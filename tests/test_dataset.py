"""charades_dataset.py, videotransforms.py, synthetic_charades.py."""
import json

import numpy as np
import pytest
import torch

import charades_dataset as cd
import frame_io
import synthetic_charades
import videotransforms as vt
from errors import FrameError, UserError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    split = synthetic_charades.write_dataset(out, videos=8, num_classes=4, frames=24, size=64, flow=True, seed=3)
    return out, split


def test_json_and_csv_give_the_same_dataset(synthetic):
    out, split = synthetic
    a = cd.read_annotations(split)
    b = cd.read_annotations([out / "Charades_v1_train.csv", out / "Charades_v1_test.csv"])
    assert a.keys() == b.keys() and len(a) == 8
    for vid in a:
        assert a[vid].subset == b[vid].subset
        assert a[vid].duration == pytest.approx(b[vid].duration, abs=0.01)
        assert [c for c, _, _ in a[vid].actions] == [c for c, _, _ in b[vid].actions]
        assert np.allclose([x[1:] for x in a[vid].actions], [x[1:] for x in b[vid].actions], atol=0.01)
    items_a = cd.make_dataset(a, "training", out / "rgb", "rgb", 4)
    items_b = cd.make_dataset(b, "training", out / "rgb", "rgb", 4)
    assert [i.vid for i in items_a] == [i.vid for i in items_b]


def test_official_csv_format(tmp_path):
    csv_path = tmp_path / "Charades_v1_test.csv"
    csv_path.write_text("id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
                        'ABC12,s1,Kitchen,6,7,Yes,"a script, with commas",food,"desc","c092 11.90 21.20;c147 0.00 12.60",30.5\n'
                        "XYZ34,s2,Hall,5,6,Yes,x,y,z,,12.0\n")
    ann = cd.read_annotations(csv_path)
    assert ann["ABC12"].subset == "testing" and ann["ABC12"].duration == 30.5
    assert ann["ABC12"].actions == [(92, 11.9, 21.2), (147, 0.0, 12.6)]
    assert ann["XYZ34"].actions == []


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"v": {"subset": "train", "duration": 3, "actions": []}}',
                                     '{"v": {"subset": "training", "duration": 3, "actions": [[1, 2]]}}',
                                     '{"v": {"subset": "training", "actions": []}}'])
def test_invalid_split_is_a_user_error(tmp_path, content):
    p = tmp_path / "charades.json"
    p.write_text(content)
    with pytest.raises(UserError, match="charades.json"):
        cd.read_annotations(p)


def test_missing_split_and_root_without_videos(tmp_path, synthetic):
    _, split = synthetic
    with pytest.raises(UserError, match="no such split file"):
        cd.read_annotations(tmp_path / "nope.json")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(UserError, match="none of the split"):
        cd.make_dataset(cd.read_annotations(split), "training", tmp_path / "empty_root", "rgb", 4)


def test_frame_labels_match_the_original_loop():
    rng = np.random.default_rng(0)
    actions = [(int(rng.integers(10)), float(s), float(s + rng.random() * 5)) for s in rng.random(6) * 8]
    n, fps = 250, 250 / 10.0
    ref = np.zeros((10, n), np.float32)
    for c, s, e in actions:  # the original's per-frame loop
        for fr in range(n):
            if s < fr / fps < e:
                ref[c, fr] = 1
    assert np.array_equal(cd.frame_labels(actions, n, fps, 10), ref)
    with pytest.raises(UserError, match="classes"):
        cd.frame_labels([(12, 0, 1)], 10, 1.0, 10)


def test_clip_padding_and_determinism(synthetic):
    out, split = synthetic
    ds = cd.Charades(split, "training", out / "rgb", "rgb", vt.Compose([vt.RandomCrop(48), vt.horizontal_flip("rgb")]),
                     clip_frames=40, num_classes=4, resize=0, seed=1)
    item = ds.data[0]
    assert item.num_frames < 40  # shorter than the clip: kept and padded
    clip, labels = ds[0]
    assert clip.shape == (3, 40, 48, 48) and clip.dtype == torch.float32
    assert labels.shape == (4, 40)
    assert -1 <= clip.min() and clip.max() <= 1
    n = item.num_frames
    assert torch.equal(clip[:, n:], clip[:, n - 1:n].expand(-1, 40 - n, -1, -1))  # last frame repeated
    assert torch.equal(labels[:, n:], labels[:, n - 1:n].expand(-1, 40 - n))
    again, _ = ds[0]
    assert torch.equal(clip, again)  # a pure function of (seed, epoch, index)
    epoch0 = [ds[i][0] for i in range(len(ds))]
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][0], epoch0[i]) for i in range(len(ds)))  # new draws each epoch
    def rebuilt(seed: int) -> cd.Charades:
        d = cd.Charades(split, "training", out / "rgb", "rgb", ds.transforms, clip_frames=40, num_classes=4,
                        resize=0, seed=seed)
        d.set_epoch(1)
        return d
    same_seed, other_seed = rebuilt(1), rebuilt(2)
    # a new dataset with the same seed draws the same clips (a pure function of seed, epoch,
    # index: what exact resume and the ranks rely on); another seed draws others
    assert all(torch.equal(same_seed[i][0], ds[i][0]) for i in range(len(ds)))
    assert any(not torch.equal(other_seed[i][0], ds[i][0]) for i in range(len(ds)))


def test_flow_clips_and_resize_rule(synthetic):
    out, split = synthetic
    ds = cd.Charades(split, "testing", out / "flow", "flow", vt.CenterCrop(224), clip_frames=8, num_classes=4)
    clip, labels = ds[0]
    assert clip.shape == (2, 8, 224, 224)  # 64-pixel frames upscaled to 224 by the original rule
    frames = frame_io.load_charades_frames(out / "flow", ds.data[0].vid, 1, 2, mode="flow", resize=0)
    assert frames.shape == (2, 64, 80, 2) and frames.dtype == np.uint8


def test_corrupt_and_missing_frames_name_the_file(synthetic, tmp_path):
    out, _ = synthetic
    import shutil
    vid = sorted(p.name for p in (out / "rgb").iterdir())[0]
    shutil.copytree(out / "rgb" / vid, tmp_path / vid)
    bad = frame_io.charades_frame_path(tmp_path, vid, 3)
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(FrameError, match=bad.name):
        frame_io.load_charades_frames(tmp_path, vid, 1, 4)
    with pytest.raises(FrameError, match="missing frame"):
        frame_io.load_charades_frames(tmp_path, vid, 1000, 1)


def test_transforms_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (5, 30, 40, 2), dtype=np.uint8)
    tensor = torch.from_numpy(clip).permute(3, 0, 1, 2)  # (C, T, H, W)
    for t in (vt.RandomCrop(16), vt.CenterCrop((16, 20)), vt.RandomHorizontalFlip(1.0), vt.RandomHorizontalFlipFlow(1.0)):
        a = t(clip, np.random.default_rng(5))
        b = t(tensor, np.random.default_rng(5))
        assert np.array_equal(a, b.permute(1, 2, 3, 0).numpy()), t
    # the original CenterCrop's rounding: offsets round((h - th) / 2)
    assert np.array_equal(vt.CenterCrop(16)(clip), clip[:, 7:23, 12:28])


def test_flow_flip_negates_x():
    rng = np.random.default_rng(1)
    flow = rng.normal(size=(3, 8, 10, 2)).astype(np.float32)
    flipped = vt.RandomHorizontalFlipFlow(1.0)(flow)
    assert np.array_equal(flipped[..., 0], -flow[:, :, ::-1, 0])
    assert np.array_equal(flipped[..., 1], flow[:, :, ::-1, 1])
    u8 = rng.integers(0, 256, (3, 8, 10, 2), dtype=np.uint8)
    assert np.array_equal(vt.RandomHorizontalFlipFlow(1.0)(u8)[..., 0], 255 - u8[:, :, ::-1, 0])
    # the RGB flip leaves values alone
    assert np.array_equal(vt.RandomHorizontalFlip(1.0)(u8), u8[:, :, ::-1])


def test_synthetic_flow_is_the_true_motion(synthetic):
    """The generator's flow frames decode to the motion between its RGB frames: every moving
    pixel's (integer) displacement carries its texture to the next frame, in the direction of
    one of the video's annotated classes (class k moves at angle 2*pi*k/K, y pointing down)."""
    from tvl1 import uint8_to_flow
    out, split = synthetic
    ann = json.loads(split.read_text())
    moving_pixels = 0
    for vid in sorted(ann):
        n = frame_io.count_charades_frames(out / "rgb", vid)
        rgb = frame_io.load_charades_frames(out / "rgb", vid, 1, n, resize=0).astype(np.float32)
        fl = frame_io.load_charades_frames(out / "flow", vid, 1, n, mode="flow", resize=0)
        directions = [np.array([np.cos(2 * np.pi * c / 4), -np.sin(2 * np.pi * c / 4)])
                      for c, _, _ in ann[vid]["actions"]]
        for i in range(n - 1):
            flow = uint8_to_flow(fl[i, ..., 0], fl[i, ..., 1])
            assert flow.shape == rgb.shape[1:3] + (2,)
            assert np.abs(flow).max() <= 4  # moving squares, at most 3 pixels a frame
            moving = np.abs(flow).max(-1) > 0.5
            if not moving.any():
                continue
            d = np.rint(flow[moving])
            err = np.abs(flow[moving] - d)  # integer motion, through 8-bit quantization and JPEG
            assert np.median(err) < 0.1 and err.max() < 0.5
            aligned = np.any(d @ np.stack(directions).T > 0, axis=1)  # JPEG ringing at edges aside
            assert aligned.mean() > 0.95, (np.unique(d, axis=0), ann[vid]["actions"])
            ys, xs = np.nonzero(moving)
            ty, tx = ys + d[:, 1].astype(int), xs + d[:, 0].astype(int)
            ok = (ty >= 0) & (ty < flow.shape[0]) & (tx >= 0) & (tx < flow.shape[1])
            moved = np.abs(rgb[i][ys[ok], xs[ok]] - rgb[i + 1][ty[ok], tx[ok]]).mean()
            stayed = np.abs(rgb[i][ys[ok], xs[ok]] - rgb[i + 1][ys[ok], xs[ok]]).mean()
            assert moved < 10 and moved < 0.3 * stayed, (vid, i, moved, stayed)  # JPEG noise only
            moving_pixels += int(moving.sum())
    assert moving_pixels > 1000


# ----------------------------------------------------------------------------------------------
# video_datasets.py: every format from small files written as the official ones (CRLF line
# ends, trailing spaces, quoted Kinetics labels), and the bad inputs, each one line naming
# the file and line.
# ----------------------------------------------------------------------------------------------

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import video_datasets as vd  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent / "data" / "datasets"


def touch_videos(root: Path, rels) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


def test_examples_keep_their_official_bytes():
    assert b"\r\n" in (EXAMPLES / "ucf101" / "trainlist01.txt").read_bytes()
    assert b"1 \n" in (EXAMPLES / "hmdb51" / "brush_hair_test_split1.txt").read_bytes()
    assert b'"passing American football (in game)"' in (EXAMPLES / "kinetics" / "validate.csv").read_bytes()


def test_ucf101_split_files(tmp_path):
    touch_videos(tmp_path, ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyLipstick/v_ApplyLipstick_g08_c01.avi",
                            "Archery/v_Archery_g08_c01.avi", "Archery/v_Archery_g01_c01.avi"])
    (tmp_path / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01").mkdir()  # a frame folder stands for the .avi
    split = [EXAMPLES / "ucf101"]
    assert vd.detect_format(split) == "ucf101"
    train = vd.read_dataset(split, tmp_path, "training")
    assert train.classes == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    assert [(s.key, s.labels) for s in train.samples] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", (0,)), ("ApplyLipstick/v_ApplyLipstick_g08_c01", (1,)),
        ("Archery/v_Archery_g08_c01", (2,))]
    assert [m.where for m in train.missing] == [f"{EXAMPLES / 'ucf101' / 'trainlist01.txt'}:2"]
    test = vd.read_dataset(split, tmp_path, "testing")  # test lists carry no label: from classInd.txt
    assert [(s.key, s.labels) for s in test.samples] == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", (0,)),
                                                         ("Archery/v_Archery_g01_c01", (2,))]
    assert Path(test.samples[0].path).is_dir() and len(test.missing) == 1


def test_hmdb51_split_files(tmp_path):
    touch_videos(tmp_path, ["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
                            "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi",
                            "catch/Catch_the_ball_catch_f_cm_np1_ba_med_0.avi",
                            "catch/Catch_the_ball_catch_f_cm_np1_ba_med_1.avi"])
    files = sorted((EXAMPLES / "hmdb51").iterdir())
    assert vd.detect_format(files) == "hmdb51"
    train = vd.read_dataset(files, tmp_path, "training")
    test = vd.read_dataset(files, tmp_path, "testing")
    assert train.classes == ["brush_hair", "catch"]
    assert [(Path(s.path).name, s.labels) for s in train.samples] == [
        ("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", (0,)), ("Catch_the_ball_catch_f_cm_np1_ba_med_1.avi", (1,))]
    assert [(Path(s.path).name, s.labels) for s in test.samples] == [
        ("April_09_brush_hair_u_nm_np1_ba_goo_1.avi", (0,)), ("Catch_the_ball_catch_f_cm_np1_ba_med_0.avi", (1,))]


def test_kinetics_csv_mapped_to_the_label_map(tmp_path):
    # the layouts the common downloaders write: root/, root/SPLIT/, root/LABEL/
    touch_videos(tmp_path, ["--GkrdYZ9Tc_000000_000010.mp4", "validate/-5vY7U2Zj2s_000012_000022.mp4"])
    split = [EXAMPLES / "kinetics" / "validate.csv"]
    assert vd.detect_format(split) == "kinetics"
    val = vd.read_dataset(split, tmp_path, "testing")
    labels = (Path(__file__).resolve().parent.parent / "data" / "label_map.txt").read_text().splitlines()
    assert val.classes == labels and val.num_classes == 400
    assert [(s.key, val.classes[s.labels[0]]) for s in val.samples] == [
        ("--GkrdYZ9Tc_000000_000010", "abseiling"), ("-5vY7U2Zj2s_000012_000022", "passing American football (in game)")]
    assert [val.classes[m.labels[0]] for m in val.missing] == ["massaging person's head"]  # counted, not fatal
    touch_videos(tmp_path, ["air drumming/07ZU_wz2uF4_000040_000050.mp4"])
    assert len(vd.read_dataset(split, tmp_path, "training").samples) == 1


def test_plain_lists_relative_to_the_list(tmp_path):
    shutil.copytree(EXAMPLES / "list", tmp_path / "list")
    touch_videos(tmp_path / "list", ["videos/walk.mp4", "videos/run.mp4", "videos/jump.mp4"])
    one = vd.read_dataset([tmp_path / "list" / "train.txt"], "/nonexistent", "training")
    assert [(s.key, s.labels) for s in one.samples] == [("videos/walk", (0,)), ("videos/run", (1,)),
                                                        ("videos/jump", (2,))]
    assert one.num_classes == 3 and not one.multilabel
    multi = vd.read_dataset([tmp_path / "list" / "multi_train.txt"], "/nonexistent", "training")
    assert multi.multilabel and multi.samples[0].labels == (0, 2)


def test_class_folders_with_a_seeded_hold_out(tmp_path):
    touch_videos(tmp_path, [f"{c}/v{i}.mp4" for c in ("b_walk", "a_run") for i in range(5)])
    (tmp_path / "a_run" / "v9").mkdir()  # a frame folder is a video too
    train = vd.read_dataset(None, tmp_path, "training", val_fraction=0.4, seed=1)
    test = vd.read_dataset(None, tmp_path, "testing", val_fraction=0.4, seed=1)
    assert train.classes == ["a_run", "b_walk"]
    assert len(test.samples) == 2 + 2 and len(train.samples) == 4 + 3
    assert not {s.key for s in train.samples} & {s.key for s in test.samples}
    assert test.samples == vd.read_dataset(None, tmp_path, "testing", val_fraction=0.4, seed=1).samples
    assert vd.read_dataset(None, tmp_path, "training").num_classes == 2


@pytest.mark.parametrize("case", ["class not in classInd", "label out of range", "label disagrees",
                                  "test list without classInd", "list mixing formats", "files of two formats",
                                  "empty class folder", "list label out of range", "nothing there"])
def test_bad_split_input_is_one_line_naming_file_and_line(case, tmp_path):
    ucf = tmp_path / "ucf"
    shutil.copytree(EXAMPLES / "ucf101", ucf)
    split, root, kw, where = [ucf], tmp_path, {}, None
    if case == "class not in classInd":
        ucf.joinpath("trainlist01.txt").write_bytes(b"ApplyEyeMakeup/a.avi 1\r\nBowling/v_Bowling_g01_c01.avi 3\r\n")
        where = f"{ucf / 'trainlist01.txt'}:2: class 'Bowling' is not in"
    elif case == "label out of range":
        ucf.joinpath("trainlist01.txt").write_bytes(b"Archery/a.avi 4\r\n")
        where = f"{ucf / 'trainlist01.txt'}:1: label '4' out of range 1..3"
    elif case == "label disagrees":
        ucf.joinpath("trainlist01.txt").write_bytes(b"Archery/a.avi 2\r\n")
        where = f"{ucf / 'trainlist01.txt'}:1: label 2 is ApplyLipstick"
    elif case == "test list without classInd":
        ucf.joinpath("classInd.txt").unlink()
        split, kw = [ucf / "testlist01.txt"], {"subset": "testing"}
        where = f"{ucf / 'testlist01.txt'}:1: UCF101 lists name classes through classInd.txt"
    elif case == "list mixing formats":
        lst = tmp_path / "train.txt"
        lst.write_text("a.mp4 0\nArchery/v_Archery_g01_c01.avi\n")
        split, where = [lst], f"{lst}:2: expected 'PATH LABEL [LABEL ...]'"
    elif case == "files of two formats":
        split = [ucf / "trainlist01.txt", EXAMPLES / "kinetics" / "validate.csv"]
        where = f"{EXAMPLES / 'kinetics' / 'validate.csv'}: a kinetics file among ucf101 ones"
    elif case == "empty class folder":
        touch_videos(tmp_path / "v", ["walk/a.mp4"])
        (tmp_path / "v" / "run").mkdir()
        split, root, where = [], tmp_path / "v", f"{tmp_path / 'v' / 'run'}: empty class folder"
    elif case == "list label out of range":
        lst = tmp_path / "train.txt"
        lst.write_text("a.mp4 0\nb.mp4 -1\n")
        split, where = [lst], f"{lst}:2: label out of range"
    elif case == "nothing there":
        where = f"{tmp_path}: none of the 4 training videos of the split is there"
    with pytest.raises(UserError) as e:
        vd.read_dataset(split, root, **{"subset": "training", **kw})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(where), msg


def test_read_video_frames_seeks_frame_accurately(tmp_path):
    import synthetic_ucf101
    frames = synthetic_ucf101.render(np.random.default_rng(0), 1, 4, 40, 48)
    path = tmp_path / "v.avi"
    synthetic_ucf101.write_video(path, frames)
    whole = frame_io.read_frames(path)
    for idx in ([0, 1, 2], [13, 13, 15, 17], [30, 39, 39], [39]):
        got = frame_io.read_video_frames(path, idx)
        assert all(np.array_equal(g, whole[i]) for g, i in zip(got, idx)), idx


def test_read_video_frames_real_video(sample_videos):
    import itertools
    path = sample_videos[0]
    whole = list(itertools.islice(frame_io.iter_frames(path), 220))
    for idx in ([0, 2, 4], [101, 102], [150, 175, 200, 219]):  # bikes.mp4: H.264 with B-frames
        got = frame_io.read_video_frames(path, idx)
        assert all(np.array_equal(g, whole[i]) for g, i in zip(got, idx)), idx


def test_video_clips_are_pure_functions_of_seed_epoch_index(tmp_path):
    import synthetic_ucf101
    lists = synthetic_ucf101.write_dataset(tmp_path, per_class=2, num_classes=2, frames=12, size=32, test_groups=1)
    data = vd.read_dataset([lists], tmp_path / "videos", "training")
    ds = vd.VideoClips(data, "rgb", vt.RandomCrop(24), clip_frames=8, frame_stride=2, resize=32, seed=4)
    a, la = ds[1]
    b, lb = ds[1]
    assert a.shape == (3, 8, 24, 24) and torch.equal(a, b) and la == lb == data.samples[1].labels[0]
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a)


def test_flow_clips_from_mirrored_dense_flow_folders(tmp_path):
    touch_videos(tmp_path / "videos", ["walk/v1.avi", "run/v2.avi"])
    rng = np.random.default_rng(0)
    for key in ("walk/v1", "run/v2"):  # dense_flow.py's layout: FLOW_ROOT/KEY/VID-000001x.jpg, y.jpg
        vid = key.split("/")[1]
        (tmp_path / "flow" / key).mkdir(parents=True)
        for i in range(1, 7):
            for axis in "xy":
                frame_io.write_image(tmp_path / "flow" / key / frame_io.charades_frame_name(vid, i, axis),
                                     rng.integers(0, 255, (20, 24), dtype=np.uint8))
    data = vd.read_dataset(None, tmp_path / "videos", "training")
    ds = vd.VideoClips(data, "flow", None, clip_frames=8, resize=0, flow_root=tmp_path / "flow")
    clip, label = ds[1]
    assert clip.shape == (2, 8, 20, 24) and label == 1  # 6 frames padded to 8 by repeating the last
    assert torch.equal(clip[:, 5], clip[:, 7])
    with pytest.raises(UserError, match="--flow-root"):
        vd.VideoClips(data, "flow")
