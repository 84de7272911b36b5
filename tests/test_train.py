"""train_i3d.py: data order, loss, exact resume after SIGKILL, torchrun with 2 processes,
bad inputs, benchmark rows, and that fine-tuning the real Kinetics weights learns."""
import csv
import json
import shutil
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import synthetic_charades
import train_i3d
import weights
from pytorch_i3d import InceptionI3d
import charades_eval
import charades_metrics
import benchmark

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny synthetic Charades (rgb and flow) for the fast training runs."""
    out = tmp_path_factory.mktemp("train_syn")
    split = synthetic_charades.write_dataset(out, videos=8, num_classes=4, frames=16, size=48, flow=True, seed=5)
    return out, split


def tiny_args(tiny, save_model, *extra):
    out, split = tiny
    return ["-mode", "rgb", "-root", str(out / "rgb"), "--split", str(split), "-save_model", str(save_model),
            "--init", "none", "--num-classes", "4", "--batch-size", "2", "--accum", "2", "--clip-frames", "8",
            "--crop", "32", "--resize", "40", "--lr", "0.05", "--milestones", "3", "--seed", "3", *extra]


def run_script(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two cores shared: leave room
    return subprocess.run([PY, str(ROOT / "train_i3d.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300, **kw)


def signal_when_file_appears(args, path: Path, sig: int) -> subprocess.Popen:
    """Start train_i3d.py in a subprocess and send it `sig` as soon as `path` exists."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([PY, str(ROOT / "train_i3d.py"), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before {path.name} appeared"
    proc.send_signal(sig)
    return proc


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------

def test_sampler_order_is_a_function_of_seed_and_epoch():
    s = train_i3d.EpochSampler(10, seed=1)
    s.set_epoch(0)
    a = list(s)
    s.set_epoch(1)
    b = list(s)
    assert sorted(a) == list(range(10)) and a != b
    s.set_epoch(0, skip=4)
    assert list(s) == a[4:] and len(s) == 6
    # two ranks: equal shares (padded by wrapping), together covering every item
    r0, r1 = (train_i3d.EpochSampler(9, seed=1, rank=r, world_size=2) for r in (0, 1))
    assert len(r0) == len(r1) == 5
    assert set(r0) | set(r1) == set(range(9))
    assert train_i3d.dropout_seed(0, 1, 2, 0) == train_i3d.dropout_seed(0, 1, 2, 0) != train_i3d.dropout_seed(0, 1, 3, 0)


def test_losses_are_the_original_recipe():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=gen)
    labels = (torch.rand(2, 5, 16, generator=gen) < 0.3).float()
    loc, cls = train_i3d.charades_losses(logits, labels)
    up = F.interpolate(logits, 16, mode="linear", align_corners=False)
    # BCE by hand
    bce = lambda x, y: (-(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x)))).mean()
    assert torch.allclose(loc, bce(up, labels), atol=1e-6)
    assert torch.allclose(cls, bce(up.max(2)[0], labels.max(2)[0]), atol=1e-6)
    # the same upsampling as the evaluation
    assert torch.equal(charades_metrics.upsample_logits(logits, 16), up)


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory):
    """An uninterrupted run: 6 optimizer steps of 2 batches each (2 epochs of 3 batches... and a bit)."""
    d = tmp_path_factory.mktemp("full")
    r = run_script(tiny_args(tiny, d / "m_", "--max-steps", "6", "--save-every", "2"))
    assert r.returncode == 0, r.stderr[-2000:]
    return d


@pytest.mark.slow
def test_uninterrupted_run_writes_checkpoints_and_log(full_run):
    d = full_run
    for step in (2, 4, 6):
        assert (d / f"m_{step:06d}.pt").is_file()
    model = weights.load_model(d / "m_000006.pt", mode="rgb")  # the original key names
    assert model.num_classes == 4
    rows = read_csv(d / "m_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05] * 3 + [0.005] * 3)  # MultiStepLR at 3
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    state = torch.load(d / "m_last.ckpt", weights_only=True)
    assert state["step"] == 6 and state["accum_pos"] == 0
    # 8 videos, 30% testing: 6 training clips, 3 batches of 2 per epoch, 2 batches per step
    assert state["epoch"] * 3 + state["batches"] == 12


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_weights(tiny, full_run, tmp_path):
    args = tiny_args(tiny, tmp_path / "m_", "--max-steps", "6", "--save-every", "2")
    ckpt = tmp_path / "m_last.ckpt"
    proc = signal_when_file_appears(args, ckpt, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert killed_at < 6 and not (tmp_path / "m_000006.pt").exists()
    r = run_script([*args, "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(full_run / "m_000006.pt", weights_only=True)
    b = torch.load(tmp_path / "m_000006.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [int(r["step"]) for r in read_csv(tmp_path / "m_log.csv")] == [1, 2, 3, 4, 5, 6]  # no duplicates
    # rerunning a finished run recomputes nothing
    before = (tmp_path / "m_000006.pt").stat().st_mtime_ns
    r = run_script([*args, "--resume"])
    assert r.returncode == 0 and "nothing to do" in r.stderr
    assert (tmp_path / "m_000006.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_sigterm_stops_after_a_step_with_a_checkpoint(tiny, full_run, tmp_path):
    args = tiny_args(tiny, tmp_path / "m_", "--max-steps", "6", "--save-every", "100")
    proc = signal_when_file_appears(args, tmp_path / "m_log.csv", signal.SIGTERM)
    assert proc.wait(timeout=240) == 0
    state = torch.load(tmp_path / "m_last.ckpt", weights_only=True)
    assert 1 <= state["step"] < 6 and (tmp_path / f"m_{state['step']:06d}.pt").is_file()
    r = run_script([*args, "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(tmp_path / "m_last.ckpt", weights_only=True)["step"] == 6
    a = torch.load(full_run / "m_000006.pt", weights_only=True)
    b = torch.load(tmp_path / "m_000006.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


# Runs train_i3d.py as __main__; with RANK_PARAMS set, every rank saves its parameters after
# each optimizer step to RANK_PARAMS/rankR.pt, so a test can see what each rank holds.
_RANK_PARAMS_RUNNER = """
import os, runpy, sys, torch
out, real_step = os.environ.get("RANK_PARAMS"), torch.optim.SGD.step
def step(self, *a, **k):
    result = real_step(self, *a, **k)
    params = [p.detach().clone() for group in self.param_groups for p in group["params"]]
    torch.save(params, os.path.join(out, "rank%s.pt" % os.environ["RANK"]))
    return result
if out:
    torch.optim.SGD.step = step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def torchrun(args, nproc: int = 2, rank_params: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", RANK_PARAMS=str(rank_params or ""))
    return subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                           "--no-python", PY, "-c", _RANK_PARAMS_RUNNER, str(ROOT / "train_i3d.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_torchrun_two_processes_and_exact_resume(tiny, tmp_path):
    """2 processes: rank 0 alone writes; a run stopped after step 2 and resumed under torchrun
    to step 3 ends with the weights of an uninterrupted 3-step run (torch.equal, as the README
    says of resume); both ranks hold equal parameters (their gradients are synchronised)."""
    args = tiny_args(tiny, tmp_path / "d_", "--save-every", "1", "--accum", "1")
    r = torchrun([*args, "--max-steps", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    for step in (1, 2):
        assert (tmp_path / f"d_{step:06d}.pt").is_file()
    state = torch.load(tmp_path / "d_last.ckpt", weights_only=True)
    assert state["config"]["world_size"] == 2 and state["step"] == 2
    assert [int(r["step"]) for r in read_csv(tmp_path / "d_log.csv")] == [1, 2]  # rank 0 alone writes
    weights.load_model(tmp_path / "d_000002.pt", mode="rgb")
    r = torchrun([*args, "--max-steps", "3", "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    whole = tiny_args(tiny, tmp_path / "u_", "--save-every", "1", "--accum", "1", "--max-steps", "3")
    r = torchrun(whole, rank_params=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(tmp_path / "d_000003.pt", weights_only=True)
    b = torch.load(tmp_path / "u_000003.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The ranks trained on different clips, yet hold the same parameters after every step: their
    # gradients were averaged (DDP), and what rank 0 saved is what both computed.
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(ranks[0]) == len(a) - sum(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in a)
    assert all(torch.equal(p, q) for p, q in zip(*ranks))
    assert [int(r["step"]) for r in read_csv(tmp_path / "d_log.csv")] == [1, 2, 3]


# ----------------------------------------------------------------------------------------------
# Bad input: one line on stderr, non-zero exit, no traceback

def assert_one_line_error(r, *words):
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if "error" in l.lower()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.slow
def test_invalid_split_file(tiny, tmp_path):
    bad = tmp_path / "charades.json"
    bad.write_text("{not json")
    args = tiny_args(tiny, tmp_path / "m_", "--max-steps", "1")
    args[args.index("--split") + 1] = str(bad)
    assert_one_line_error(run_script(args), "charades.json")


@pytest.mark.slow
def test_root_without_the_videos(tiny, tmp_path):
    args = tiny_args(tiny, tmp_path / "m_", "--max-steps", "1")
    (tmp_path / "empty").mkdir()
    args[args.index("-root") + 1] = str(tmp_path / "empty")
    assert_one_line_error(run_script(args), "empty")


@pytest.mark.slow
def test_flow_weights_for_rgb_mode(tiny, tmp_path):
    flow = tmp_path / "flow.pt"
    torch.save(InceptionI3d(num_classes=4, in_channels=2).state_dict(), flow)
    args = tiny_args(tiny, tmp_path / "m_", "--max-steps", "1")
    args[args.index("--init") + 1] = str(flow)
    assert_one_line_error(run_script(args), "flow weights")


@pytest.mark.slow
def test_resume_with_another_configuration(tiny, full_run, tmp_path):
    args = tiny_args(tiny, tmp_path / "m_", "--max-steps", "8", "--accum", "3",
                     "--resume", str(full_run / "m_last.ckpt"))
    assert_one_line_error(run_script(args), "another configuration", "accum")
    # and a fresh run refuses to overwrite an existing run
    assert_one_line_error(run_script(tiny_args(tiny, full_run / "m_", "--max-steps", "8")), "--resume")


@pytest.mark.slow
def test_flow_mode_trains(tiny, tmp_path):
    out, _ = tiny
    args = tiny_args(tiny, tmp_path / "f_", "--max-steps", "1", "--accum", "1")
    args[args.index("-mode") + 1] = "flow"
    args[args.index("-root") + 1] = str(out / "flow")
    result = train_i3d.train(train_i3d.parse_args(args))
    assert result["step"] == 1
    assert weights.load_model(tmp_path / "f_000001.pt", mode="flow").in_channels == 2


@pytest.mark.slow
def test_keep_last_removes_older_step_files(tiny, tmp_path):
    args = tiny_args(tiny, tmp_path / "k_", "--max-steps", "3", "--accum", "1", "--save-every", "1", "--keep-last", "2")
    (tmp_path / "k_other000001.pt").write_bytes(b"not ours")  # another prefix: left alone
    train_i3d.train(train_i3d.parse_args(args))
    assert sorted(p.name for p in tmp_path.glob("k_*.pt")) == ["k_000002.pt", "k_000003.pt", "k_other000001.pt"]


@pytest.mark.slow
def test_benchmark_rows():
    class A:
        device, train_frames, size, repeat, train_batch = "cpu", 8, 64, 1, 1
    rows = benchmark.benchmark_train_step(A())
    assert rows[0]["row"].startswith("fp32 eager (plain)")
    for r in rows:
        assert r["section"] == "train" and r["unit"] == "clips/s" and r["value"] > 0
        assert r["baseline_row"] == rows[0]["row"] and r["baseline_value"] == rows[0]["value"]
        assert "(1, 3, 8, 64, 64)" in r["row"]
        # every path trains the same network: its first-step loss is the fp32 one (bf16 to 1e-2)
        loss, ref = (float(v) for v in re.fullmatch(r"first-step loss (\S+) \(fp32 (\S+)\)", r["note"]).groups())
        assert 0.1 < ref < 10 and abs(loss - ref) <= (1e-2 if "bf16" in r["row"] or "AMP" in r["row"] else 1e-4)


# ----------------------------------------------------------------------------------------------
# It learns: the real Kinetics weights fine-tuned on synthetic motion classes, on CPU.
# A small batch on a tiny dataset: batch norm frozen (running statistics), and an lr for batch 4
# (the original's 0.1 is for 160 clips per step); 30 steps = 120 clips, about 4 epochs.
LEARN_LR, LEARN_STEPS = 0.006, 30

def test_fine_tuning_real_weights_lifts_map_far_above_chance(rgb_scratch_weights, tmp_path):
    """python synthetic_charades.py syn --videos 40 --classes 4 --frames 16 --size 112
    python train_i3d.py -root syn/rgb --split syn/charades.json -save_model run/m_ --init rgb_scratch \\
        --num-classes 4 --clip-frames 16 --crop 112 --resize 112 --batch-size 4 --accum 1 \\
        --lr LR --freeze-bn --max-steps STEPS --eval-every STEPS"""
    split = synthetic_charades.write_dataset(tmp_path / "syn", videos=40, num_classes=4, frames=16, size=112, seed=0)
    root = tmp_path / "syn" / "rgb"
    torch.manual_seed(0)  # as train() does with --seed 0: the very model training starts from
    before_model = train_i3d.build_model(str(rgb_scratch_weights), "rgb", 4)
    before = charades_eval.evaluate(before_model, split, root, "rgb", resize=112, crop=112, clip_frames=16,
                                       progress=False)
    args = train_i3d.parse_args([
        "-root", str(root), "--split", str(split), "-save_model", str(tmp_path / "run" / "m_"),
        "--init", str(rgb_scratch_weights), "--num-classes", "4", "--clip-frames", "16", "--crop", "112",
        "--resize", "112", "--batch-size", "4", "--accum", "1", "--lr", str(LEARN_LR), "--freeze-bn",
        "--max-steps", str(LEARN_STEPS), "--eval-every", str(LEARN_STEPS)])
    result = train_i3d.train(args)
    after = charades_eval.evaluate(weights.load_model(result["model"], mode="rgb"), split, root, "rgb", resize=112,
                                      crop=112, clip_frames=16, progress=False)  # the flags it was trained with
    chance = after["classification_chance"]
    print(f"mAP before {before['classification_map']:.3f}, after {after['classification_map']:.3f}, "
          f"chance {chance:.3f}, {after['videos']} testing videos")
    assert after["classification_map"] == pytest.approx(result["map"], abs=1e-6)  # training's own validation
    assert after["classification_map"] > chance + 0.2
    assert after["classification_map"] > before["classification_map"] + 0.05


def test_amp_on_a_cpu_without_bf16_is_refused_before_writing(tiny, tmp_path, monkeypatch):
    import fast_i3d
    monkeypatch.setattr(fast_i3d, "cpu_supports_bf16", lambda: False)
    with pytest.raises(fast_i3d.PrecisionError, match=r"^bf16 is not supported by this CPU"):
        train_i3d.main(tiny_args(tiny, tmp_path / "m_", "--max-steps", "1", "--amp", "--device", "cpu"))
    assert [p.name for p in tmp_path.iterdir()] in ([], ["m_lock"])  # refused before anything was written


def test_first_log_line_says_which_precision_trains(tiny, tmp_path, caplog):
    """Training's first log line names its precision and why, as every model job's does."""
    with caplog.at_level("INFO"):
        assert train_i3d.main(tiny_args(tiny, tmp_path / "m_", "--max-steps", "1", "--device", "cpu")) == 0
    assert caplog.records[0].getMessage() == "precision fp32 (default: no --amp), device cpu"
    caplog.clear()
    with caplog.at_level("INFO"):
        train_i3d.log_precision(torch.device("cuda"), amp=True)
    assert caplog.records[0].getMessage() == "precision fp16 autocast, fp32 weights (--amp on cuda), device cuda"


@pytest.mark.slow
@pytest.mark.bf16
def test_amp_on_a_bf16_cpu_trains_close_to_fp32(tiny, tmp_path, monkeypatch):
    """--amp on a CPU with bf16: every training forward runs under bf16 autocast, and it trains:
    the loss falls as in fp32 and stays near it (8.5 % apart measured on this randomly
    initialised model; 15 % allowed)."""
    entered = []
    real_autocast = torch.autocast

    def recording_autocast(*args, **kw):
        entered.append(kw.get("dtype"))
        return real_autocast(*args, **kw)
    monkeypatch.setattr(torch, "autocast", recording_autocast)
    losses = {}
    for name, extra in (("fp32", []), ("amp", ["--amp"])):
        entered.clear()
        assert train_i3d.main(tiny_args(tiny, tmp_path / name / "m_", "--max-steps", "2", "--device", "cpu",
                                        *extra)) == 0
        losses[name] = np.array([float(r["loss"]) for r in read_csv(tmp_path / name / "m_log.csv")])
    assert len(entered) == 4 and set(entered) == {torch.bfloat16}  # 2 steps x 2 accumulated batches
    assert len(losses["amp"]) == 2 and np.all(np.isfinite(losses["amp"]))
    assert losses["amp"][1] < losses["amp"][0] and losses["fp32"][1] < losses["fp32"][0], losses
    np.testing.assert_allclose(losses["amp"], losses["fp32"], rtol=0.15, err_msg=str(losses))


@pytest.mark.slow
def test_plot_writes_the_curves_of_the_log(tiny, tmp_path):
    """--plot: {save_model}curves.png, the loss curves of log.csv (the same image plot_curves
    draws from that log), with the three loss lines drawn in colour."""
    import cv2

    assert train_i3d.main(tiny_args(tiny, tmp_path / "m_", "--max-steps", "3", "--save-every", "3", "--plot")) == 0
    png = tmp_path / "m_curves.png"
    train_i3d.plot_curves(tmp_path / "m_log.csv", tmp_path / "again.png")
    assert png.read_bytes() == (tmp_path / "again.png").read_bytes()
    img = cv2.imread(str(png)).astype(int)
    assert img.shape == (400, 1100, 3)
    left = img[:, :550]
    coloured = (left.max(axis=2) - left.min(axis=2)) > 60  # the lines; axes and text are gray
    assert coloured.sum() > 300


@pytest.mark.parametrize("size,batch", [(12, 2), (9, 2), (7, 3)])
def test_two_ranks_see_the_clips_of_one_process_with_accum_2(size, batch):
    """torchrun with 2 processes and --accum 1 against 1 process with --accum 2, same
    --batch-size: every optimizer step trains on the same clips (the README's "same clips per
    step"; which clips share a BatchNorm batch and the dropout masks differ, so the weights are
    close, not equal). Epochs too: the same clips, wrapped the same way."""
    one = train_i3d.EpochSampler(size, seed=4)
    ranks = [train_i3d.EpochSampler(size, seed=4, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        single = np.resize(list(one), len(ranks[0]) * 2)  # padded by wrapping, as the ranks are
        shares = [list(r) for r in ranks]
        for step in range(len(shares[0]) // batch):
            two_ranks = sorted(x for share in shares for x in share[step * batch:(step + 1) * batch])
            assert two_ranks == sorted(single[2 * step * batch:2 * (step + 1) * batch].tolist()), (epoch, step)


# ----------------------------------------------------------------------------------------------
# Video datasets: a synthetic UCF101 (video files, official split files), fine-tuned and scored.
# ----------------------------------------------------------------------------------------------

import synthetic_ucf101  # noqa: E402
import video_datasets  # noqa: E402

UCF_ARGS = ["--clip-frames", "16", "--crop", "96", "--resize", "96", "--batch-size", "4", "--accum", "1",
            "--freeze-bn", "--workers", "1"]


@pytest.fixture(scope="module")
def tiny_ucf(tmp_path_factory):
    out = tmp_path_factory.mktemp("ucf")
    lists = synthetic_ucf101.write_dataset(out, per_class=4, num_classes=3, frames=12, size=40, test_groups=1)
    return out / "videos", lists


@pytest.mark.slow
def test_video_dataset_trains_with_cross_entropy_and_records_its_recipe(tiny_ucf, tmp_path):
    root, lists = tiny_ucf
    r = run_script(["-root", str(root), "--split", str(lists), "-save_model", str(tmp_path / "m_"), "--init", "none",
                    "--clip-frames", "8", "--crop", "32", "--resize", "36", "--batch-size", "3", "--accum", "1",
                    "--max-steps", "2", "--save-every", "2", "--eval-every", "2", "--frame-stride", "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_csv(tmp_path / "m_log.csv")
    assert [r_["loc_loss"] for r_ in rows] == ["0.000000"] * 2 and rows[-1]["top1"] and not rows[-1]["map"]
    recipe = video_datasets.read_recipe(tmp_path / "m_000002.pt")
    assert recipe == video_datasets.read_recipe(tmp_path / "m_last.ckpt")
    assert recipe["classes"] == ["Still", "Pan", "Shake"] and recipe["clip_frames"] == 8
    assert (recipe["crop"], recipe["resize"], recipe["mode"], recipe["multilabel"]) == (32, 36, "rgb", False)
    model = weights.load_model(tmp_path / "m_000002.pt", mode="rgb")  # still a plain state dict
    assert model.num_classes == 3


def test_single_label_loss_is_cross_entropy_of_time_averaged_logits():
    logits = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 4])
    loc, cls = train_i3d.clip_losses(logits, labels, "single")
    assert float(loc) == 0 and torch.allclose(cls, F.cross_entropy(logits.mean(2), labels))
    multi = torch.tensor([[0, 1, 0, 0, 1], [1, 0, 0, 0, 0]], dtype=torch.float32)
    loc, cls = train_i3d.clip_losses(logits, multi, "multi")
    ref = train_i3d.charades_losses(logits, multi[:, :, None].expand(-1, -1, 24))  # T' = 3: 24 frames
    assert torch.allclose(loc, ref[0]) and torch.allclose(cls, ref[1])


@pytest.mark.slow
def test_bad_split_line_stops_training_in_one_line(tiny_ucf, tmp_path):
    root, lists = tiny_ucf
    bad = tmp_path / "lists"
    shutil.copytree(lists, bad)
    (bad / "trainlist01.txt").write_bytes(b"Shake/v_Shake_g02_c01.avi 3\r\nJump/v_Jump_g01_c01.avi 1\r\n")
    r = run_script(["-root", str(root), "--split", str(bad), "-save_model", str(tmp_path / "m_"), "--init", "none"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (f"train_i3d.py: error: {bad / 'trainlist01.txt'}:2: class 'Jump' "
                                                 f"is not in {bad / 'classInd.txt'}")


UCF_LR, UCF_STEPS = 0.003, 50


@pytest.mark.slow
def test_fine_tuning_rgb_scratch_on_a_synthetic_ucf101(rgb_scratch_weights, tmp_path, capsys):
    """The README's proof, through the two command lines:
    python tests/synthetic_ucf101.py ucf
    python train_i3d.py -root ucf/videos --split ucf/ucfTrainTestlist -save_model run/m_ --init rgb_scratch \\
        --clip-frames 16 --crop 96 --resize 96 --batch-size 4 --accum 1 --freeze-bn --workers 1 --lr 0.003 \\
        --max-steps 50 --save-every 50
    python eval_i3d.py -root ucf/videos --split ucf/ucfTrainTestlist -load_model run/m_000050.pt --json

    Evaluation by the default protocol: each of the 12 test videos whole through the streaming
    engine (16 frames: as long as the clips it was trained on), the flags from the model file."""
    import eval_i3d
    lists = synthetic_ucf101.write_dataset(tmp_path / "ucf")  # 4 classes x 10 videos, 16 frames at 112x149
    root = tmp_path / "ucf" / "videos"
    t0 = time.perf_counter()
    assert train_i3d.main(["-root", str(root), "--split", str(lists), "-save_model", str(tmp_path / "run" / "m_"),
                           "--init", str(rgb_scratch_weights), *UCF_ARGS, "--lr", str(UCF_LR),
                           "--max-steps", str(UCF_STEPS), "--save-every", str(UCF_STEPS), "-q"]) == 0
    trained = time.perf_counter() - t0
    assert eval_i3d.main(["-root", str(root), "--split", str(lists), "-load_model",
                          str(tmp_path / "run" / f"m_{UCF_STEPS:06d}.pt"), "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["videos"] == 12 and result["missing"] == 0 and result["failed"] == []
    print(f"trained {UCF_STEPS} steps in {trained:.0f} s, evaluated in {time.perf_counter() - t0 - trained:.0f} s; "
          f"top-1 {result['top1']:.3f} top-5 {result['top5']:.3f} mean class accuracy "
          f"{result['mean_class_accuracy']:.3f}")
    assert result["top1"] >= 0.9


@pytest.mark.slow
def test_exact_resume_on_mp4_videos_with_workers(tmp_path):
    """A class-folder dataset of .mp4 files read by 2 DataLoader workers: 5 steps in one go
    against 3 steps (the process ends at --max-steps, mid-epoch), then --resume to 5 (across
    the epoch's end): the final weights, batch-norm statistics and optimizer state (momentum
    buffers) are torch.equal. Random crops and flips, clip starts and the data order all come
    from (seed, epoch, index), whichever worker decodes the clip."""
    videos = tmp_path / "videos"
    rng = np.random.default_rng(7)
    for c, name in enumerate(synthetic_ucf101.CLASS_NAMES[:3]):
        for g in range(3):
            frames = synthetic_ucf101.render(rng, c, 3, 14, 36)
            synthetic_ucf101.write_video(videos / name / f"{name}_{g}.mp4", frames)
    # 9 clips, batches of 2 (drop_last): 4 batches an epoch; step 3 stops inside epoch 0
    common = ["-root", str(videos), "--init", "none", "--clip-frames", "8", "--frame-stride", "1", "--crop", "32",
              "--resize", "36", "--batch-size", "2", "--accum", "1", "--lr", "0.05", "--milestones", "4",
              "--workers", "2", "--seed", "5", "--save-every", "100"]
    r = run_script([*common, "-save_model", str(tmp_path / "whole_"), "--max-steps", "5"])
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_script([*common, "-save_model", str(tmp_path / "part_"), "--max-steps", "3"])
    assert r.returncode == 0, r.stderr[-2000:]
    stopped = torch.load(tmp_path / "part_last.ckpt", weights_only=True)
    assert (stopped["step"], stopped["epoch"], stopped["batches"]) == (3, 0, 3)
    r = run_script([*common, "-save_model", str(tmp_path / "part_"), "--max-steps", "5", "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(tmp_path / "whole_last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "part_last.ckpt", weights_only=True)
    assert (a["step"], a["epoch"], a["batches"]) == (b["step"], b["epoch"], b["batches"]) == (5, 1, 1)
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert len(sa) == len(sb) == len(a["optimizer"]["param_groups"][0]["params"]) > 0
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    assert a["scheduler"] == b["scheduler"]
    assert [float(r_["loss"]) for r_ in read_csv(tmp_path / "whole_log.csv")] == [
        float(r_["loss"]) for r_ in read_csv(tmp_path / "part_log.csv")]


@pytest.mark.slow
def test_flow_and_two_stream_on_a_video_dataset(random_i3d_file, tmp_path):
    """The README's two-stream recipe end to end on a tiny synthetic UCF101: dense_flow.py over
    each class folder's videos -> flow folders mirroring the layout -> train_i3d.py -mode flow
    --flow-root (and -mode rgb) -> eval_i3d.py --flow-model --flow-root prints top-1; its fused
    probabilities are the mean of the two streams' probabilities, each evaluated on its own."""
    import eval_i3d  # noqa: F401  (run as a script below; imported to fail early if broken)
    import video_eval

    out = tmp_path / "ucf"
    lists = synthetic_ucf101.write_dataset(out, per_class=2, num_classes=2, frames=10, size=40, test_groups=1)
    videos, flow = out / "videos", out / "flow"
    for cls in sorted(p for p in videos.iterdir() if p.is_dir()):
        r = subprocess.run([PY, str(ROOT / "dense_flow.py"), *sorted(str(v) for v in cls.glob("*.avi")),
                            "-o", str(flow / cls.name), "--resize", "0", "--workers", "1", "--no-compile", "-q"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.relative_to(flow).as_posix() for p in flow.glob("*/*/*-000010x.jpg")) == [
        "Pan/v_Pan_g01_c01/v_Pan_g01_c01-000010x.jpg", "Pan/v_Pan_g02_c01/v_Pan_g02_c01-000010x.jpg",
        "Still/v_Still_g01_c01/v_Still_g01_c01-000010x.jpg", "Still/v_Still_g02_c01/v_Still_g02_c01-000010x.jpg"]
    common = ["-root", str(videos), "--split", str(lists), "--clip-frames", "8", "--crop", "32", "--resize", "40",
              "--batch-size", "2", "--accum", "1", "--lr", "0.00001", "--freeze-bn", "--max-steps", "2",
              "--save-every", "2"]
    # models that answer their input (calibrated random I3Ds), trained at an lr small enough to keep
    # them so (at 1e-3 two steps already saturate the softmax: every video [1, 0])
    for mode, channels in (("rgb", 3), ("flow", 2)):
        init = random_i3d_file(num_classes=2, in_channels=channels, seed=channels)
        r = run_script(["-mode", mode, "--flow-root", str(flow), "--init", str(init),
                        "-save_model", str(tmp_path / f"{mode}_"), *common])
        assert r.returncode == 0, r.stderr[-2000:]
    rgb, flow_model = tmp_path / "rgb_000002.pt", tmp_path / "flow_000002.pt"
    assert video_datasets.read_recipe(flow_model)["mode"] == "flow"
    r = subprocess.run([PY, str(ROOT / "eval_i3d.py"), "-root", str(videos), "--split", str(lists), "-load_model",
                        str(rgb), "--flow-model", str(flow_model), "--flow-root", str(flow), "--json", "-q",
                        "--predictions", str(tmp_path / "pred.csv")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    fused = json.loads(r.stdout.strip().splitlines()[-1])
    assert fused["videos"] == 2 and fused["missing"] == 0 and fused["failed"] == []
    data = video_datasets.read_dataset([lists], videos, "testing")
    kw = dict(resize=40, crop=32, clip_frames=8, progress=False)  # the recipe the eval took from the files
    alone = {mode: video_eval.evaluate(path, data, mode, flow_root=flow, **kw)
             for mode, path in (("rgb", rgb), ("flow", flow_model))}
    mean = (alone["rgb"]["probs"] + alone["flow"]["probs"]) / 2
    assert not np.allclose(alone["rgb"]["probs"], alone["flow"]["probs"], atol=1e-3)  # two different streams
    rows = read_csv(tmp_path / "pred.csv")
    assert [r_["video"] for r_ in rows] == alone["rgb"]["keys"]
    classes = ["Still", "Pan"]
    for row, want in zip(rows, mean):
        got = dict(t.split(":") for t in row["top5"].split(" "))
        assert np.allclose([float(got[c]) for c in classes], want, atol=1e-4)  # printed to 4 decimals
    y = np.array([ls[0] for ls in alone["rgb"]["labels"]])
    assert fused["top1"] == pytest.approx(float(np.mean(mean.argmax(1) == y)))
