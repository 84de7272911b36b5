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
