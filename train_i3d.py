"""Fine-tune I3D on Charades (RGB or flow), as the original pytorch-i3d train_i3d.py, or on any
labelled video dataset (UCF101, HMDB51, Kinetics CSVs, class folders, lists: video_datasets.py).

    python train_i3d.py -mode rgb -root data/Charades_v1_rgb -save_model models/charades_rgb_ \
        --split data/charades.json
    python train_i3d.py -root UCF101 --split ucfTrainTestlist --fold 1 -save_model out/ucf_ --eval-every 500
    torchrun --nproc_per_node 4 train_i3d.py -mode flow -root data/Charades_v1_flow -save_model out/flow_
    python train_i3d.py ... --resume            # continue from {save_model}last.ckpt, exactly

The recipe is the original's by default: init from models/{mode}_imagenet.pt with the logits
replaced by --num-classes (157), SGD (momentum 0.9, weight decay 1e-7, lr 0.1), MultiStepLR at
steps [300, 1000], 4 batches accumulated per optimizer step ("steps" count optimizer steps, as
in the original), 64-frame clips, random 224 crop and flip, loss = 0.5 * per-frame BCE + 0.5 *
BCE of the max over time, each divided by the accumulation steps. Single-label datasets:
cross-entropy of the time-averaged logits; --num-classes defaults to the dataset's.

Batch size: --batch-size is per process. The original ran batch 8*5 = 40 split over 5 GPUs by
DataParallel, so one optimizer step saw 40 * 4 = 160 clips. To reproduce that: torchrun
--nproc_per_node 5 with --batch-size 8 (DDP, the same global batch), or one process with
--batch-size 8 --accum 20 (same clips per step, BatchNorm statistics over 8 clips instead of 8
per GPU, which is what DataParallel did too).

Upsampling the per-time logits to the clip's frames: the original called
F.upsample(logits, t, mode='linear'), whose align_corners has defaulted to False since PyTorch
0.4.0, so the published Charades models were trained with align_corners=False; we keep that.

Writes, each atomically (temporary name, then rename), from rank 0 only:
- {save_model}{step:06d}.pt every --save-every steps and at the end: a plain model state dict
  with the original key names (weights.load_model / extract_features.py / eval_i3d.py load it),
  its training recipe (mode, classes, clip frames, stride, crop, resize) in torch's _metadata,
- {save_model}last.ckpt at the same moments: model, optimizer, scheduler, (AMP scaler), step,
  the position in the data (epoch, batches consumed), the configuration; tensors and plain Python
  values only, loaded with torch.load(weights_only=True),
- {save_model}log.csv: one row per optimizer step (loc, cls, total loss, lr, and the mAP when
  evaluated); on resume rows past the checkpoint are dropped, so no step appears twice,
- with --plot, {save_model}curves.png.

Exact resume: a checkpoint is written only right after an optimizer step, so no gradient is in
flight (the accumulation position is 0, stored for checking). The order of the training items
is a pure function of (seed, epoch) (EpochSampler), each item a pure function of (seed, epoch,
index) (charades_dataset.Charades), the consumed batches of the epoch are skipped in the
sampler without being loaded, and dropout is seeded per batch from (seed, epoch, batch, rank).
So on CPU a resumed run ends with weights equal (torch.equal) to an uninterrupted one. SIGINT
and SIGTERM stop after the current optimizer step and write last.ckpt first.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

import videotransforms
from charades_dataset import NUM_CLASSES as CHARADES_CLASSES, Charades
from errors import UserError
from runtime import dist_env, iter_started, select_device, worker_init
from cli import (add_allow_gaps, add_data_args, add_device, add_verbosity, add_workers, nonneg_float, nonneg_int,
                 positive_float, positive_int, progress as report_progress, report_stop, run_main, start)
import video_eval
from charades_eval import evaluate
from atomic_io import atomic_write_bytes, clean_stale_temps, file_lock
from train_state import (amp_dtype, autocast_for, charades_losses, check_amp,  # noqa: F401
                         EpochSampler, StopFlag, append_log_row, dropout_seed, first_non_finite, load_checkpoint,  # noqa: F401
                         init_distributed, plot_curves, read_log, run_config, save_checkpoint, save_path, step_files, torch_bytes,
                         write_log_rows)
from frame_io import MODE_CHANNELS
from pytorch_i3d import InceptionI3d
from video_datasets import (FORMATS, LabelledVideos, VideoClips, attach_recipe, detect_format,
                            read_dataset)
from weights import load_model, resolve_weights

log = logging.getLogger(__name__)

ORIGINAL_SPLIT = "charades/charades.json"  # the original's default --split


# ----------------------------------------------------------------------------------------------
# Model, loss
# ----------------------------------------------------------------------------------------------

def build_model(init: str, mode: str, num_classes: int) -> InceptionI3d:
    """The network to fine-tune: weights from `init` (a name in models/ or a path; 'none' for a
    random init), logits replaced by num_classes outputs, in train mode."""
    if init.lower() == "none":
        model = InceptionI3d(num_classes=400, in_channels=MODE_CHANNELS[mode])
    else:
        model = load_model(resolve_weights(init), mode=mode)
    if model.num_classes != num_classes:
        model.replace_logits(num_classes)
    return model.train()


def freeze_batch_norm(model: torch.nn.Module) -> None:
    """Batch norm layers to eval mode: normalised with their running (pre-trained) statistics,
    which are not updated; their scale and shift still train. For small batches, where batch
    statistics are noisy and the running ones would lag far behind them after few steps."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def log_precision(device: torch.device, amp: bool) -> None:
    """The job's first log line, as every model job's: which precision trains, and why (checked
    first, so that a refusal stays the only line)."""
    check_amp(device, amp)
    if amp:
        dtype = str(amp_dtype(device)).replace("torch.float16", "fp16").replace("torch.bfloat16", "bf16")
        log.info("precision %s autocast, fp32 weights (--amp on %s), device %s", dtype, device.type, device)
    else:
        log.info("precision fp32 (default: no --amp), device %s", device)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def validate(model: InceptionI3d, args: argparse.Namespace, device: torch.device, data: "TrainData") -> float:
    """Charades classification mAP on its testing subset, or top-1 accuracy on the testing set of
    any other dataset, each by the evaluation's own driver on an eval copy (the model being
    trained is left as it was)."""
    if data.kind == "charades":
        result = evaluate(model, split=args.split or [ORIGINAL_SPLIT], root=args.test_root or args.root,
                          mode=args.mode, resize=args.resize, crop=args.crop, clip_frames=args.clip_frames,
                          device=device, subset="testing", progress=False)
        return float(result["classification_map"])
    result = video_eval.evaluate(model, data.test, args.mode, flow_root=args.flow_root, resize=args.resize,
                                 crop=args.crop, device=device, clip_frames=args.clip_frames,
                                 frame_stride=args.frame_stride, progress=False)
    return float(result["top1"])


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def train(args: argparse.Namespace) -> dict:
    """Fine-tune as described at the top of this file; returns {'step', 'map' (last, or None),
    'model': path of the last step's state dict, 'stopped': the signal that stopped it (absent: none)}."""
    rank, world_size, local_rank = init_distributed()
    lock = save_path(args.save_model, "lock")
    try:
        with contextlib.ExitStack() as stack:
            if rank == 0:  # one run per -save_model: a second would interleave checkpoints and logs
                try:
                    stack.enter_context(file_lock(lock, blocking=False))
                except BlockingIOError:
                    raise UserError(f"{lock}: another train_i3d.py is running with -save_model "
                                    f"{args.save_model}") from None
                clean_stale_temps(lock.parent)  # checkpoints half-written by a killed run
            return _train(args, rank, world_size, local_rank)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class TrainData:
    """What training reads: the clips, how they are labelled ('charades' per-frame multi-hot,
    'single' one class, 'multi' a multi-hot per video), the class names where the dataset has
    them, and the testing set for --eval-every (None for Charades, read by its own evaluation)."""
    dataset: torch.utils.data.Dataset
    kind: str
    num_classes: int
    classes: list[str] | None = None
    test: LabelledVideos | None = None
    format: str = "charades"


def dataset_format(args: argparse.Namespace) -> str:
    """--format, else detected from --split; no --split: the original's charades/charades.json
    when it is there, else class folders under -root."""
    if args.format:
        return args.format
    if not args.split:
        return "charades" if Path(ORIGINAL_SPLIT).is_file() else "folders"
    return detect_format([Path(p) for p in args.split])


def training_data(args: argparse.Namespace) -> TrainData:
    """The training clips of any dataset format (video_datasets), --num-classes defaulting to the
    dataset's; with --eval-every, the testing set read now, so a bad one stops before training."""
    transforms = videotransforms.Compose([videotransforms.RandomCrop(args.crop), videotransforms.horizontal_flip(args.mode)])
    fmt = dataset_format(args)
    if fmt == "charades":
        num_classes = args.num_classes or CHARADES_CLASSES
        dataset = Charades(args.split or [ORIGINAL_SPLIT], "training", args.root, args.mode, transforms,
                           clip_frames=args.clip_frames, resize=args.resize, num_classes=num_classes, seed=args.seed)
        return TrainData(dataset, "charades", num_classes)
    read = dict(split=args.split, root=args.root, fmt=fmt, fold=args.fold, val_fraction=args.val_fraction,
                seed=args.seed, num_classes=args.num_classes)
    data = read_dataset(subset="training", **read)
    if args.num_classes is not None and args.num_classes != data.num_classes:
        raise UserError(f"--num-classes {args.num_classes}, but the dataset has {data.num_classes} classes")
    test = None
    if args.eval_every:
        test = read_dataset(subset="testing", **{**read, "root": args.test_root or args.root})
    dataset = VideoClips(data, args.mode, transforms, clip_frames=args.clip_frames, frame_stride=args.frame_stride,
                         resize=args.resize, seed=args.seed, flow_root=args.flow_root)
    kind = "multi" if data.multilabel else "single"
    return TrainData(dataset, kind, data.num_classes, data.classes, test, fmt)


def clip_losses(per_time_logits: torch.Tensor, labels: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(localization loss, classification loss) of a batch. Single-label: cross-entropy of the
    time-averaged logits (the I3D paper's classifier), no localization term. Charades and other
    multi-label data: charades_losses (a per-video multi-hot holds for every frame)."""
    if kind == "single":
        cls = F.cross_entropy(per_time_logits.float().mean(dim=2), labels)
        return torch.zeros((), device=cls.device), cls
    if kind == "multi":
        labels = labels[:, :, None].expand(-1, -1, per_time_logits.shape[2] * 8)
    return charades_losses(per_time_logits, labels)


def total_loss(loc: torch.Tensor, cls: torch.Tensor, kind: str) -> torch.Tensor:
    return cls if kind == "single" else 0.5 * loc + 0.5 * cls


def recipe(args: argparse.Namespace, data: TrainData) -> dict:
    """What a model file records of its training, for eval_i3d.py / predict.py defaults."""
    return {"mode": args.mode, "format": data.format, "num_classes": data.num_classes, "classes": data.classes,
            "multilabel": data.kind != "single", "clip_frames": args.clip_frames, "frame_stride": args.frame_stride,
            "crop": args.crop, "resize": args.resize}


# ----------------------------------------------------------------------------------------------
# The training run, in steps
# ----------------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything a training run carries from step to step."""
    args: argparse.Namespace
    device: torch.device
    rank: int
    world_size: int
    data: TrainData
    model: InceptionI3d
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    memory_format: torch.memory_format
    config: dict
    step: int = 0
    epoch: int = 0
    batches: int = 0
    last_metric: float | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return save_path(self.args.save_model, "last.ckpt")

    @property
    def log_csv(self) -> Path:
        return save_path(self.args.save_model, "log.csv")


def pick_device(args: argparse.Namespace, world_size: int, local_rank: int) -> torch.device:
    device = select_device(args.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: pick the fastest kernels once
    check_amp(device, args.amp)
    return device


def resume_source(args: argparse.Namespace) -> Path | None:
    """The checkpoint to resume from, or None; refuses to overwrite a run without --resume."""
    ckpt_path = save_path(args.save_model, "last.ckpt")
    if args.resume is None:
        if ckpt_path.is_file():
            raise UserError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another -save_model")
        return None
    source = ckpt_path if args.resume == "auto" else Path(args.resume)
    if source.is_file():
        return source
    if args.resume != "auto":
        raise UserError(f"{source}: no such checkpoint to resume")
    log.info("no %s yet: starting from the beginning", source)
    return None


def make_loader(args: argparse.Namespace, dataset, rank: int, world_size: int,
                device: torch.device) -> tuple[DataLoader, EpochSampler]:
    sampler = EpochSampler(len(dataset), seed=args.seed, rank=rank, world_size=world_size)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        pin_memory=device.type == "cuda", drop_last=True,  # no 1-clip batch for batch norm
                        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched
                        worker_init_fn=worker_init)  # workers end with this process, however it ends
    if len(loader) == 0:
        raise UserError(f"{len(dataset)} training clips over {world_size} process(es) do not fill one batch of "
                        f"{args.batch_size}: lower --batch-size")
    return loader, sampler


def make_run(args: argparse.Namespace, device: torch.device, rank: int, world_size: int, data: TrainData) -> Run:
    """The model (initialised with --seed), optimizer, scheduler and scaler of a fresh run."""
    torch.manual_seed(args.seed)  # the new logits layer's init
    model = build_model(args.init, args.mode, data.num_classes).to(device)
    if args.freeze_bn:
        freeze_batch_norm(model)
    # with AMP, channels-last activations too: bf16 + channels_last_3d is ~2x fp32 per training
    # step on a CPU with native bf16 (benchmark_train_step); alone in fp32 it gains nothing
    memory_format = torch.channels_last_3d if args.amp else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    config = run_config(args, model.in_channels, world_size, data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.milestones)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    return Run(args, device, rank, world_size, data, model, model, optimizer, scheduler, scaler, memory_format, config)


def restore(run: Run, source: Path) -> None:
    """Load a training checkpoint into the run and trim the CSV log back to its step."""
    state = load_checkpoint(source, run.config)
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"{source}: checkpoint does not fit this model: {str(e).splitlines()[0]}") from e
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"] and run.scaler.is_enabled():
        run.scaler.load_state_dict(state["scaler"])
    run.step, run.epoch, run.batches = int(state["step"]), int(state["epoch"]), int(state["batches"])
    if state["accum_pos"] != 0:
        raise UserError(f"{source}: checkpoint taken inside an accumulation; cannot resume exactly")
    if state["seed"] != run.args.seed:
        log.warning("checkpoint seed %s, now --seed %s: the data order changes from here", state["seed"], run.args.seed)
    log.info("resumed %s at step %d (epoch %d, %d batches in)", source, run.step, run.epoch, run.batches)
    if run.main:  # drop log rows of steps after the checkpoint (written before a kill)
        rows = read_log(run.log_csv)
        if any(int(r["step"]) > run.step for r in rows):
            write_log_rows(run.log_csv, [r for r in rows if int(r["step"]) <= run.step])


def checkpoint(run: Run) -> None:
    """{save_model}STEP.pt (with its recipe), last.ckpt and the plot; never over good files with NaN."""
    args, step = run.args, run.step
    bad = first_non_finite(run.model.state_dict())
    if bad is not None:  # never replace good checkpoints with broken ones
        raise UserError(f"step {step}: tensor {bad} became NaN or inf (learning rate too high?); nothing "
                        f"written, the last checkpoint is kept")
    if not run.main:
        return
    made = recipe(args, run.data)
    atomic_write_bytes(save_path(args.save_model, f"{step:06d}.pt"),
                       torch_bytes(attach_recipe(run.model.state_dict(), made)))
    if args.keep_last:  # 64k steps of 50 MB files every 10 steps would fill any disk
        for old in step_files(args.save_model)[:-args.keep_last]:
            old.unlink()
    save_checkpoint(run.ckpt_path, run.model, run.optimizer, run.scheduler, run.scaler, step, run.epoch, run.batches,
                    0, run.config, args.seed, made)
    if args.plot:
        plot_curves(run.log_csv, Path(args.plot) if args.plot != "auto" else save_path(args.save_model, "curves.png"))


def forward_backward(run: Run, clips: torch.Tensor, labels: torch.Tensor, sync: bool) -> torch.Tensor:
    """One batch's forward and backward (DDP all-reduces only on the accumulation's last batch);
    returns (loc, cls, total) of this batch, each divided by the accumulation steps."""
    args = run.args
    clips = clips.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
    labels = labels.to(run.device, non_blocking=True)
    torch.manual_seed(dropout_seed(args.seed, run.epoch, run.batches, run.rank))
    with (run.net.no_sync() if run.world_size > 1 and not sync else contextlib.nullcontext()):
        with autocast_for(run.device, args.amp):
            per_time = run.net(clips)
        loc, cls = clip_losses(per_time, labels, run.data.kind)
        loss = total_loss(loc, cls, run.data.kind) / args.accum
        run.scaler.scale(loss).backward()
    return torch.tensor([loc.item(), cls.item(), loss.item() * args.accum]) / args.accum


def optimizer_step(run: Run) -> float:
    """The optimizer and scheduler step; returns the learning rate it used."""
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    run.step += 1
    return lr


def log_step(run: Run, sums: torch.Tensor, lr: float) -> None:
    """Average the step's losses over processes, evaluate when due, write the CSV row."""
    args, step = run.args, run.step
    if run.world_size > 1:
        sums = sums.to(run.device)
        dist.all_reduce(sums)
        sums = sums.cpu() / run.world_size
    loc_v, cls_v, loss_v = sums.tolist()
    row = {"step": step, "epoch": run.epoch, "loc_loss": f"{loc_v:.6f}", "cls_loss": f"{cls_v:.6f}",
           "loss": f"{loss_v:.6f}", "lr": f"{lr:.6g}", "map": "", "top1": ""}
    if args.eval_every > 0 and (step % args.eval_every == 0 or step == args.max_steps):
        if run.main:
            run.last_metric = validate(run.model, args, run.device, run.data)
            name = "map" if run.data.kind == "charades" else "top1"
            row[name] = f"{run.last_metric:.6f}"
            log.info("step %d: testing %s %.4f", step, "mAP" if name == "map" else "top-1", run.last_metric)
        if run.world_size > 1:
            dist.barrier()
    if run.main:
        log.info("step %d epoch %d: loc %.4f cls %.4f loss %.4f lr %.4g", step, run.epoch, loc_v, cls_v, loss_v, lr)
        append_log_row(run.log_csv, row)


def stopping_now(run: Run, stop: StopFlag) -> int:
    """The stop signal any process received (0: none): all stop together, or the others would
    wait; rank 0 says which signal it was."""
    signum = stop.signum
    if run.world_size > 1:
        flag = torch.tensor([float(signum)], device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
    return signum


def report_saved(run: Run) -> None:
    """What a stop says it keeps: the steps checkpointed, and how to go on from them."""
    rerun = None if run.args.resume == "auto" else "run the command with --resume to continue"
    report_progress(run.step, run.args.max_steps, "steps checkpointed", rerun=rerun)


def _train(args: argparse.Namespace, rank: int, world_size: int, local_rank: int) -> dict:
    device = pick_device(args, world_size, local_rank)
    if args.batch_size < 1 or args.accum < 1 or args.max_steps < 1 or args.clip_frames < 1:
        raise UserError("--batch-size, --accum, --max-steps and --clip-frames must be at least 1")
    source = resume_source(args)
    if rank == 0:
        save_path(args.save_model, "log.csv").parent.mkdir(parents=True, exist_ok=True)
    data = training_data(args)
    loader, sampler = make_loader(args, data.dataset, rank, world_size, device)
    run = make_run(args, device, rank, world_size, data)
    if source is not None:
        restore(run, source)
    elif run.main and run.log_csv.exists():
        run.log_csv.unlink()  # a fresh run: a stale log would mix two runs
    report_saved(run)
    if world_size > 1:
        run.net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None)
    final_model = save_path(args.save_model, f"{run.step:06d}.pt")
    if run.step >= args.max_steps:
        log.info("already at step %d of %d: nothing to do", run.step, args.max_steps)
        return {"step": run.step, "map": None, "model": final_model}
    log.info("training %s on %s: %d clips (%s, %d classes), %d per batch x %d accumulated x %d processes per step, "
             "steps %d -> %d", args.mode, device, len(data.dataset), data.format, data.num_classes, args.batch_size,
             args.accum, world_size, run.step, args.max_steps)
    accum_pos, sums = 0, torch.zeros(3, dtype=torch.float64)
    progress = tqdm(total=args.max_steps, initial=run.step, unit="step",
                    disable=not run.main or getattr(args, "quiet", False), dynamic_ncols=True)
    with StopFlag() as stop:
        while run.step < args.max_steps:
            data.dataset.set_epoch(run.epoch)
            sampler.set_epoch(run.epoch, skip=run.batches * args.batch_size)
            finished_epoch = True
            for clips, labels in iter_started(loader):  # its workers fork here, stop signals blocked
                sums += forward_backward(run, clips, labels, sync=accum_pos + 1 == args.accum)
                run.batches += 1
                accum_pos += 1
                if accum_pos < args.accum:
                    continue
                accum_pos = 0
                log_step(run, sums, optimizer_step(run))
                sums.zero_()
                progress.update(1)
                stopping = stopping_now(run, stop)
                if run.step % args.save_every == 0 or run.step >= args.max_steps or stopping:
                    checkpoint(run)
                    final_model = save_path(args.save_model, f"{run.step:06d}.pt")
                    report_saved(run)
                if stopping:  # main() says it in one line (cli.report_stop)
                    progress.close()
                    return {"step": run.step, "map": run.last_metric, "model": final_model, "stopped": stopping}
                if run.step >= args.max_steps:
                    finished_epoch = False
                    break
            if finished_epoch:
                run.epoch += 1
                run.batches = 0
    progress.close()
    log.info("done: step %d, weights %s", run.step, final_model)
    return {"step": run.step, "map": run.last_metric, "model": final_model}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-mode", "--mode", choices=("rgb", "flow"), default="rgb")
    p.add_argument("-root", "--root", type=Path, required=True,
                   help="Charades frames root (ROOT/VID/VID-000001.jpg) or the videos' root (ROOT/CLASS/video.mp4)")
    p.add_argument("-save_model", "--save-model", required=True,
                   help="output prefix: {prefix}000010.pt, {prefix}last.ckpt, {prefix}log.csv")
    p.add_argument("-split", "--split", nargs="+", default=None,
                   help="split / annotation files, their format detected (see video_datasets.py): charades.json or "
                        "Charades CSVs, UCF101 classInd.txt + trainlistNN.txt (or their folder), HMDB51 "
                        "*_test_splitN.txt, a Kinetics CSV, 'path label' lists; none: class folders under -root "
                        f"(or the original's {ORIGINAL_SPLIT} when present)")
    p.add_argument("--format", choices=FORMATS, default=None, help="force the dataset format (default: detected)")
    p.add_argument("--fold", type=positive_int, default=1, help="UCF101 / HMDB51 split number (1-3)")
    p.add_argument("--val-fraction", type=nonneg_float, default=0.0,
                   help="class folders: hold out this fraction of each class as the testing set (seeded by --seed)")
    p.add_argument("--flow-root", type=Path, default=None,
                   help="-mode flow on a video dataset: dense_flow.py folders mirroring the videos' layout")
    p.add_argument("--frame-stride", type=positive_int, default=1,
                   help="take every N-th frame for a clip (video datasets)")
    p.add_argument("--init", default=None, help="weights name in models/ or path (default: {mode}_imagenet; "
                                                "'none': random init)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="outputs of the new logits layer (default: the dataset's; Charades 157)")
    p.add_argument("--max-steps", type=positive_int, default=64000, help="optimizer steps (the original's 64e3)")
    p.add_argument("--save-every", type=positive_int, default=10, help="steps between checkpoints (the original's 10)")
    p.add_argument("--keep-last", type=nonneg_int, default=0,
                   help="keep only the newest N {save_model}STEP.pt files (0: keep all, as the original)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="clips per batch per process (original: 8*5 on 5 GPUs)")
    p.add_argument("--accum", type=positive_int, default=4, help="batches per optimizer step (the original's num_steps_per_update)")
    p.add_argument("--lr", type=positive_float, default=0.1)
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-7)
    p.add_argument("--milestones", type=nonneg_int, nargs="*", default=[300, 1000], help="MultiStepLR steps (x0.1 each)")
    add_data_args(p, crop_zero_ok=False)
    add_workers(p, 0, "DataLoader workers (the original used 36)")
    add_device(p, " (torchrun: each rank its local GPU)")
    p.add_argument("--freeze-bn", action="store_true",
                   help="keep batch norm in eval mode (running statistics; for small batches / short fine-tuning)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision, channels-last: fp16 + GradScaler on CUDA, bf16 autocast on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=nonneg_int, default=0,
                   help="steps between testing-set evaluations: Charades mAP, top-1 elsewhere (0: none; eval_i3d.py "
                        "does it afterwards)")
    p.add_argument("--test-root", type=Path, default=None, help="frames root of the testing videos (default: -root)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from {save_model}last.ckpt (started fresh when absent) or the given checkpoint")
    p.add_argument("--plot", nargs="?", const="auto", default=None,
                   help="save loss / mAP curves as PNG (default path {save_model}curves.png)")
    add_allow_gaps(p)
    add_verbosity(p)
    args = p.parse_args(argv)
    if args.init is None:
        args.init = f"{args.mode}_imagenet"
    if args.val_fraction >= 1:
        p.error("--val-fraction must be below 1")
    if args.save_every < 1:
        p.error("--save-every must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start(args)
    if dist_env()[0] != 0:
        logging.getLogger().setLevel(logging.WARNING)  # only rank 0 logs progress
    log_precision(device, args.amp)
    result = train(args)
    if result.get("stopped"):
        report_stop(result["stopped"])  # a stop that training caught: saved, exit 0 (README: Exit status)
        return 0
    return 0 if result["step"] >= args.max_steps else 1


if __name__ == "__main__":
    run_main(main)
