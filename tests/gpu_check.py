"""`make gpu-check`: every CUDA path against the CPU result, then benchmark.py on the GPU.

    python tests/gpu_check.py [--skip-benchmark]

Checks, each printed as one line (PASS/FAIL, the measured difference and its tolerance):
- the model: plain InceptionI3d on CUDA, and for_inference in fp32, bf16 (where supported) and
  fp16, against the plain model on the CPU (fp32 to 1e-4 relative; bf16/fp16 by cosine and top-1);
- the streaming engine: stream_features of a long video in chunks on CUDA against the CPU;
- a training step (forward, Charades losses, backward, SGD) in fp32 and with fp16 AMP +
  GradScaler, against the same step on the CPU;
- DDP on one device (NCCL, world size 1) against the plain step;
- TV-L1: the batched CUDA solver against the CPU one (end-point error between them);
then `benchmark.py` on the device. Without CUDA it prints one line and exits 0.
Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytorch_i3d  # noqa: E402
import streaming  # noqa: E402
import synthetic_charades  # noqa: E402
import train_i3d  # noqa: E402
import runtime  # noqa: E402
import tvl1  # noqa: E402

RESULTS: list[tuple[str, bool, str]] = []


def report(name: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double().cpu().flatten(), b.double().cpu().flatten(), dim=0))


def check_model(cuda: torch.device) -> None:
    model = synthetic_charades.calibrated_random_i3d(num_classes=400).eval()
    x = torch.rand(2, 3, 32, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        ref = model(x)
        ref_feat = model.extract_features(x)
        got = model.to(cuda)(x.to(cuda))
    model.cpu()
    report("model plain fp32 (cuda vs cpu)", rel(got, ref) < 1e-4, f"rel diff {rel(got, ref):.2e} (tol 1e-4)")
    for precision in ("fp32", "bf16", "fp16"):
        try:
            fast = model.for_inference(precision, device=cuda)
        except pytorch_i3d.PrecisionError as e:
            report(f"model for_inference {precision}", True, f"skipped: {e}")
            continue
        out, feat = fast(x), fast.extract_features(x)
        if precision == "fp32":
            d = max(rel(out, ref), rel(feat, ref_feat))
            report("model for_inference fp32", d < 1e-4, f"rel diff {d:.2e} (tol 1e-4)")
        else:
            c = min(cosine(out, ref), cosine(feat, ref_feat))
            top = torch.equal(out.mean(2).argmax(1).cpu(), ref.mean(2).argmax(1))
            report(f"model for_inference {precision}", c > 0.999 and top, f"cosine {c:.6f} (tol 0.999), top-1 same: {top}")


def check_streaming(cuda: torch.device) -> None:
    model = synthetic_charades.calibrated_random_i3d(num_classes=400).eval()
    frames = np.random.default_rng(1).integers(0, 256, (301, 112, 112, 3), dtype=np.uint8)
    ref = streaming.stream_features(model.for_inference("fp32", device="cpu"), list(frames), "cpu", total=len(frames))
    got = streaming.stream_features(model.for_inference("fp32", device=cuda), list(frames), cuda, total=len(frames))
    d = rel(got, ref)
    report("streaming engine fp32, 301 frames (cuda vs cpu)", d < 1e-4, f"rel diff {d:.2e} (tol 1e-4)")


def _train_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, amp: bool = False) -> torch.Tensor:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    device = x.device
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    with train_i3d.autocast_for(device, amp):
        loc, cls = train_i3d.charades_losses(model(x), labels)
        loss = 0.5 * loc + 0.5 * cls
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach().float().cpu()


def check_training(cuda: torch.device) -> None:
    torch.manual_seed(0)
    base = synthetic_charades.calibrated_random_i3d(num_classes=8)
    base.train()
    for m in base.modules():  # dropout off: the same step on both devices
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = torch.rand(2, 3, 16, 112, 112, generator=torch.Generator().manual_seed(2)) * 2 - 1
    labels = (torch.rand(2, 8, 16, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    cpu_model = _copy(base)
    cpu_loss = _train_step(cpu_model, x, labels)
    ref = torch.cat([p.detach().flatten() for p in cpu_model.parameters()])
    for amp in (False, True):
        m = _copy(base).to(cuda)
        loss = _train_step(m, x.to(cuda), labels.to(cuda), amp=amp)
        got = torch.cat([p.detach().flatten().cpu() for p in m.parameters()])
        d, dl = rel(got, ref), abs(float(loss) - float(cpu_loss))
        tol = 2e-2 if amp else 1e-3
        report(f"training step {'fp16 AMP' if amp else 'fp32'} (cuda vs cpu)", d < tol and dl < tol,
               f"weights rel diff {d:.2e}, loss diff {dl:.2e} (tol {tol:g})")
    # DDP on one device (NCCL, world size 1) gives the plain step's weights.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    torch.distributed.init_process_group("nccl", rank=0, world_size=1)
    try:
        m = _copy(base).to(cuda)
        ddp = torch.nn.parallel.DistributedDataParallel(m, device_ids=[cuda.index or 0])
        _train_step(ddp, x.to(cuda), labels.to(cuda))
        got = torch.cat([p.detach().flatten().cpu() for p in m.parameters()])
        d = rel(got, ref)
        report("DDP one device, NCCL (vs cpu step)", d < 1e-3, f"weights rel diff {d:.2e} (tol 1e-3)")
    finally:
        torch.distributed.destroy_process_group()


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy
    return copy.deepcopy(model)


def check_tvl1(cuda: torch.device) -> None:
    pairs = [synthetic_charades.synthetic_pair(256, 340, kind, seed=i)
             for i, kind in enumerate(("translation", "rotation", "patch"))]
    i0 = torch.from_numpy(np.stack([p[0] for p in pairs])).float()[:, None]
    i1 = torch.from_numpy(np.stack([p[1] for p in pairs])).float()[:, None]
    ref = tvl1.tvl1_torch(i0, i1).permute(0, 2, 3, 1).numpy()
    got = tvl1.tvl1_torch(i0.to(cuda), i1.to(cuda)).permute(0, 2, 3, 1).cpu().numpy()
    epe = max(tvl1.end_point_error(g, r) for g, r in zip(got, ref))
    report("TV-L1 batched (cuda vs cpu)", epe < 0.01, f"EPE between them {epe:.4f} px (tol 0.01)")
    frames = np.stack([pairs[0][0], pairs[0][1], pairs[1][1], pairs[2][0], pairs[2][1]])
    r = tvl1_batched_vs_cpu(frames, device=cuda, batch=4)
    report("TV-L1 batched video path (cuda vs cpu pair by pair)", r["max_epe_vs_cpu"] < 0.01,
           f"EPE max {r['max_epe_vs_cpu']:.4f} px (tol 0.01), {r['pairs_per_s']:.1f} pairs/s at 340x256")


def tvl1_batched_vs_cpu(frames: np.ndarray, device: str | torch.device = "cuda", batch: int = 16,
                        compile_step: bool | None = None, repeat: int = 2) -> dict:
    """The batched TV-L1 on `device` against the CPU's pair-by-pair solver on the consecutive
    pairs of a (T, H, W) uint8 grayscale stack: {'pairs', 'epe_vs_cpu' (mean end-point
    distance, px), 'max_epe_vs_cpu', 'pairs_per_s' (device, after a warm-up), 'device'}. Works
    on any device (on CPU it runs the whole-batch path, per_pair=False)."""
    dev = runtime.select_device(device) if isinstance(device, str) else device
    if compile_step is None:
        compile_step = tvl1.compile_available(dev)
    frames = np.asarray(frames)
    cpu = torch.device("cpu")
    ref = tvl1.compute_flow(frames, device=cpu, compile_step=compile_step if dev.type == "cpu" else tvl1.compile_available(cpu))
    t = torch.from_numpy(np.ascontiguousarray(frames)).float()[:, None].to(dev)

    def run() -> np.ndarray:
        out = []
        for k in range(0, len(frames) - 1, batch):
            stop = min(k + batch, len(frames) - 1)
            out.append(tvl1.tvl1_torch(t[k:stop], t[k + 1:stop + 1], compile_step=compile_step, per_pair=False))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return torch.cat(out).permute(0, 2, 3, 1).cpu().numpy()

    run()  # warm-up / compile
    start = time.perf_counter()
    for _ in range(max(1, repeat)):
        flow = run()
    dt = (time.perf_counter() - start) / max(1, repeat)
    per_pair = [tvl1.end_point_error(flow[k], ref[k]) for k in range(len(ref))]
    return {"pairs": len(ref), "device": str(dev), "epe_vs_cpu": float(np.mean(per_pair)),
            "max_epe_vs_cpu": float(np.max(per_pair)), "pairs_per_s": len(ref) / dt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-benchmark", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing to check (run it on a machine with a GPU)")
        return 0
    cuda = torch.device("cuda", torch.cuda.current_device())
    print(f"gpu-check on {torch.cuda.get_device_name(cuda)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    for check in (check_model, check_streaming, check_training, check_tvl1):
        try:
            check(cuda)
        except Exception as e:  # one broken path must not hide the others
            report(check.__name__, False, f"{e.__class__.__name__}: {e}")
    if not args.skip_benchmark:
        r = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--device", "cuda", "--repeat", "3"], cwd=ROOT)
        report("benchmark.py --device cuda", r.returncode == 0, f"exit status {r.returncode}")
    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"gpu-check: {len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
