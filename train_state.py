"""Training's library, used by train_i3d.py (and benchmark.py's training step): the Charades
losses and AMP, and the state that outlives a process: the data order (a pure function of seed
and epoch), the checkpoints (`{save_model}STEP.pt` and `last.ckpt`, written through the checked
atomic path, read with weights_only=True) and the CSV log with its plot."""
from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import io
import logging
import math
import signal
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Sampler

from atomic_io import append_bytes_checked, atomic_write_bytes
from charades_metrics import upsample_logits
from errors import UserError, stop_exception
from fast_i3d import check_precision
from runtime import dist_env, rank_process

log = logging.getLogger(__name__)

LOG_FIELDS = ["step", "epoch", "loc_loss", "cls_loss", "loss", "lr", "map", "top1"]
CKPT_VERSION = 1

# ----------------------------------------------------------------------------------------------
# Losses and AMP
# ----------------------------------------------------------------------------------------------

def charades_losses(per_time_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(localization loss, classification loss): BCE of the per-frame logits, and BCE of the
    max over time of the logits against the max over time of the labels."""
    logits = upsample_logits(per_time_logits.float(), labels.shape[2])  # linear, align_corners=False
    loc = F.binary_cross_entropy_with_logits(logits, labels)
    cls = F.binary_cross_entropy_with_logits(logits.max(dim=2)[0], labels.max(dim=2)[0])
    return loc, cls


def amp_dtype(device: torch.device) -> torch.dtype:
    """What --amp computes in: fp16 (with a GradScaler) on CUDA, bf16 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast_for(device: torch.device, amp: bool):
    """AMP's autocast on this device (amp_dtype); else nothing."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(device))


def check_amp(device: torch.device, amp: bool) -> None:
    """CPU AMP is bf16: refused in one line where the CPU lacks it."""
    if amp and device.type == "cpu":
        check_precision("bf16", device)


# ----------------------------------------------------------------------------------------------
# Data order
# ----------------------------------------------------------------------------------------------

class EpochSampler(Sampler[int]):
    """The item order of an epoch as a pure function of (seed, epoch): a permutation of the
    dataset, padded by wrapping around to a multiple of the world size (as DistributedSampler)
    and dealt out by rank; set_epoch(epoch, skip) starts `skip` items into this rank's share,
    so a resumed run skips consumed batches without loading them."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.per_rank = math.ceil(size / world_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self, epoch: int) -> list[int]:
        """This rank's whole share of the epoch."""
        idx = np.random.default_rng([self.seed, epoch]).permutation(self.size) if self.shuffle else np.arange(self.size)
        total = self.per_rank * self.world_size
        idx = np.resize(idx, total)  # wrap around: every rank gets the same number of items
        return idx[self.rank::self.world_size].tolist()

    def __iter__(self):
        return iter(self.order(self.epoch)[self.skip:])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)


def dropout_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """The torch seed for one batch's dropout: a function of its place in training only."""
    return int(np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------------------------
# Checkpoints and the CSV log
# ----------------------------------------------------------------------------------------------

def save_path(save_model: str, name: str) -> Path:
    """The original's naming: the prefix and the name glued together (prefix 'out/rgb_')."""
    return Path(f"{save_model}{name}")


def step_files(save_model: str) -> list[Path]:
    """The {save_model}STEP.pt files there are, oldest step first."""
    prefix = save_path(save_model, "x")
    pattern = glob.escape(prefix.name[:-1]) + "[0-9]" * 6 + ".pt"
    return sorted(prefix.parent.glob(pattern))


def run_config(args: argparse.Namespace, in_channels: int, world_size: int, num_classes: int) -> dict:
    """What a checkpoint must agree with to be resumed exactly."""
    return {"mode": args.mode, "num_classes": num_classes, "in_channels": in_channels,
            "batch_size": args.batch_size, "accum": args.accum, "world_size": world_size,
            "clip_frames": args.clip_frames, "frame_stride": args.frame_stride}


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, scaler, step: int, epoch: int,
                    batches: int, accum_pos: int, config: dict, seed: int, made: dict | None = None) -> None:
    state = {"recipe": made or {}, "version": CKPT_VERSION, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
             "step": step, "epoch": epoch, "batches": batches, "accum_pos": accum_pos, "config": config,
             "seed": seed, "torch_rng": torch.get_rng_state()}
    atomic_write_bytes(path, torch_bytes(state))


def torch_bytes(obj) -> memoryview:
    """torch.save into memory, so the file goes through the checked write path (a full disk is
    one clear error, never a half-written checkpoint)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer()


def first_non_finite(state: dict) -> str | None:
    """The name of the first floating tensor holding NaN or inf, or None."""
    for key, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            return key
    return None


def load_checkpoint(path: Path, config: dict) -> dict:
    """A training checkpoint, refused with one clear error when it is not one or comes from
    another configuration."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a readable training checkpoint ({e.__class__.__name__})") from e
    if not isinstance(state, dict) or state.get("version") != CKPT_VERSION or "config" not in state:
        raise UserError(f"{path}: not a train_i3d.py training checkpoint")
    diff = [f"{k} {state['config'].get(k)!r} (now {v!r})" for k, v in config.items()
            if k in state["config"] and state["config"][k] != v]  # keys a checkpoint lacks: older versions
    if diff:
        raise UserError(f"{path}: checkpoint from another configuration: {', '.join(diff)}")
    bad = first_non_finite(state["model"]) if isinstance(state.get("model"), dict) else None
    if bad is not None:
        raise UserError(f"{path}: tensor {bad} holds NaN or inf; refusing this checkpoint")
    return state


def write_log_rows(path: Path, rows: list[dict]) -> None:
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, LOG_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, f.getvalue().encode())


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_log_row(path: Path, row: dict) -> None:
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, LOG_FIELDS)
    if not path.is_file():
        w.writeheader()
    w.writerow(row)
    append_bytes_checked(path, f.getvalue().encode())  # the whole row or nothing


def plot_curves(log_csv: Path, out: Path) -> None:
    """Loss and mAP against steps, from the CSV log, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_csv)
    steps = [int(r["step"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "loc_loss", "cls_loss"):
        ax1.plot(steps, [float(r[key]) for r in rows], label=key)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    metric = "top1" if any(r.get("top1") for r in rows) else "map"
    evals = [(int(r["step"]), float(r[metric])) for r in rows if r.get(metric)]
    if evals:
        ax2.plot(*zip(*evals), marker="o")
    ax2.set_xlabel("step")
    ax2.set_ylabel("top-1 accuracy (testing)" if metric == "top1" else "Charades mAP (testing)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out, buf.getbuffer())


# ----------------------------------------------------------------------------------------------
# Processes: torchrun and stop signals
# ----------------------------------------------------------------------------------------------

def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts the process group when run under torchrun, and
    makes this rank end with torchrun's agent (its parent), however the agent ended, with its
    DataLoader workers out of the signals the agent sends the rank (runtime.rank_process)."""
    _, world_size, _ = dist_env()  # checked: WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE
    if world_size <= 1:
        return 0, 1, 0
    rank_process()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world_size, dist_env()[2]


class StopFlag:
    """Set by SIGINT/SIGTERM: training stops after the current optimizer step, checkpointed.
    `signum` is the first signal (0: none); a second one stops at once, as that signal
    (errors.Terminated for SIGTERM, KeyboardInterrupt for Ctrl-C)."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    @property
    def set(self) -> bool:
        return self.signum != 0

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second signal: stop now
            raise stop_exception(signum)
        log.info("%s: stopping after this optimizer step (checkpoint first)", signal.Signals(signum).name)
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
