"""The training loop: anchors, AMP, EMA, warm-up + cosine schedule, checkpoints, resume, DDP.

``train(options)`` runs a whole training from Python; ``detector train`` fills the same
:class:`TrainOptions`. Multi-GPU or multi-node: launch with ``torchrun``; every process
trains on its shard, only rank 0 validates and writes.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from detector.anchors import (
    best_possible_recall,
    kmeans_anchors,
    letterboxed_wh,
    mean_best_iou,
    positive_wh,
    split_anchors,
)
from detector.checkpoint import Checkpoint
from detector.config import ModelConfig, TrainConfig
from detector.data.dataset import DetectionDataset, collate
from detector.data.formats import load_dataset
from detector.data.transforms import AugmentConfig, Augmenter
from detector.encoding import TargetEncoder
from detector.loss import DetectionLoss
from detector.models.yolo import YOLODetector
from detector.predict import Detector, resolve_device
from detector.progress import progress
from detector.validate import validate

NUM_ANCHORS = 9
MIN_WARMUP_STEPS = 50
RESULTS_FIELDS = (
    "epoch",
    "lr",
    "box",
    "obj",
    "cls",
    "lmk",
    "ap",
    "ap50",
    "ap75",
    "images_per_s",
    "seconds",
)


@dataclass
class TrainOptions:
    """One training run: data, model, schedule and output."""

    data: str  # data.yaml, COCO json or VOC folder
    model: str = "tiny"  # model size (see detector.config.MODEL_SIZES)
    imgsz: int = 320  # square input side in pixels
    out: str = "runs/train"  # output folder: checkpoints, results.csv, plots
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = False  # continue from out/last.safetensors
    init: str | None = None  # start from this model's weights (same classes), new schedule
    strict: bool = False  # a bad label file is fatal instead of skipped
    train_split: str = "train"
    val_split: str = "val"
    plots: bool = True  # PNG plots at the end
    progress: bool = True  # progress bars
    config: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    command: str = ""  # the command line, recorded in the checkpoint
    stop_after_epochs: int | None = None  # end this run after N epochs, resumable (time slices)
    cache: bool = False  # decode the training images once and keep them in memory

    def __post_init__(self) -> None:
        if self.stop_after_epochs is not None and self.stop_after_epochs < 1:
            raise ValueError(
                f"stop_after_epochs must be >= 1 or None, got {self.stop_after_epochs}"
            )


class ModelEMA:
    """Exponential moving average of the weights; the decay ramps up over the first
    updates (``decay · (1 − exp(−updates / ramp))``) so early weights fade quickly."""

    RAMP = 2000

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = updates

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.RAMP))
        source = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[name].detach(), alpha=1 - d)
            else:
                value.copy_(source[name])


def learning_rate(step: int, total_steps: int, warmup_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up from 0 to ``cfg.lr``, then cosine down to ``cfg.lr · final_lr_ratio``."""
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    floor = cfg.lr * cfg.final_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def dataset_hash(samples) -> str:
    """SHA-256 over every sample's file name and labels: identifies the training data."""
    h = hashlib.sha256()
    for s in samples:
        h.update(Path(s.image_path).name.encode())
        h.update(np.ascontiguousarray(s.boxes, np.float32).tobytes())
        h.update(np.ascontiguousarray(s.classes, np.int64).tobytes())
    return h.hexdigest()[:16]


def fit_anchors(info, imgsz: int, seed: int, log) -> tuple:
    """k-means anchors on the letterboxed training boxes; prints best-possible recall."""
    wh, _ = positive_wh(letterboxed_wh(info, imgsz))
    if len(wh) < NUM_ANCHORS:
        raise ValueError(
            f"need at least {NUM_ANCHORS} training boxes to fit anchors, got {len(wh)}"
        )
    anchors = kmeans_anchors(wh, NUM_ANCHORS, seed=seed)
    log(
        f"anchors: k-means on {len(wh)} boxes, mean IoU {mean_best_iou(wh, anchors):.3f}, "
        f"best-possible recall {best_possible_recall(wh, anchors):.4f}"
    )
    return split_anchors(anchors)


def start_results(path: Path, epochs_done: int | None) -> None:
    """Write the header of ``results.csv``. On resume, ``epochs_done`` is the number of epochs
    in the checkpoint: their rows are kept, later ones (written by a run killed before its
    checkpoint) are dropped, so every epoch has exactly one row."""
    rows: list[list[str]] = []
    if epochs_done is not None and path.is_file():
        with path.open(newline="") as f:
            rows = [row for row in list(csv.reader(f))[1:] if row and int(row[0]) <= epochs_done]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RESULTS_FIELDS)
        writer.writerows(rows)
    os.replace(tmp, path)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; no weight decay on biases and norm weights."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'sgd' or 'adamw'")


def _distributed() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def train(options: TrainOptions) -> Path:
    """Train, validating every epoch; returns the path of the best checkpoint."""
    rank, local_rank, world = _distributed()
    main_process = rank == 0

    def log(msg: str) -> None:
        if main_process:
            print(msg, flush=True)

    device = resolve_device(options.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    cfg = options.config
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Leave a core to each data worker: oversubscribed OpenMP threads wait on each
        # other at every barrier (measured here: 2 threads on a busy 2-core machine ran a
        # step 5x slower than 1 thread).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - cfg.workers))
    out = Path(options.out)
    last_path, best_path = out / "last.safetensors", out / "best.safetensors"

    train_info = load_dataset(options.data, options.train_split, strict=options.strict)
    val_info = load_dataset(options.data, options.val_split, strict=options.strict)
    for split, info in ((options.train_split, train_info), (options.val_split, val_info)):
        log(
            f"{split}: {len(info.samples)} images, {sum(len(s.classes) for s in info.samples)} boxes, "
            f"{len(info.skipped)} skipped"
        )
        for message in info.skipped[:5]:
            log(f"  skipped: {message}")
    num_landmarks = train_info.kpt_shape[0] if train_info.kpt_shape else 0

    resume_state = None
    if options.resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
        resume_state = Checkpoint.load(last_path)
        model_config = resume_state.config
        log(f"resuming from {last_path} after epoch {resume_state.metadata['epoch'] + 1}")
    elif options.init:
        init_state = Checkpoint.load(options.init)
        model_config = init_state.config
        if list(model_config.names) != list(train_info.names):
            raise ValueError(
                f"--init {options.init}: its classes {list(model_config.names)} differ from the "
                f"dataset's {train_info.names}"
            )
        log(f"initialised from {options.init} (size {model_config.size}, its anchors)")
    else:
        model_config = ModelConfig(
            num_classes=len(train_info.names),
            size=options.model,
            input_size=options.imgsz,
            anchors=fit_anchors(train_info, options.imgsz, cfg.seed, log),
            num_landmarks=num_landmarks,
            class_names=tuple(train_info.names),
            flip_idx=tuple(train_info.flip_idx or ()),
        )

    torch.manual_seed(cfg.seed)
    # Channels-last convolutions: measured here 1.25x the training steps/s of NCHW on
    # the CPU (tiny, 320, batch 8); on CUDA they are what bf16 tensor cores want.
    model = YOLODetector(model_config).to(device, memory_format=torch.channels_last)
    if options.init and resume_state is None:
        model.load_state_dict(init_state.inference_state)
    ema = ModelEMA(model, cfg.ema_decay)
    optimizer = make_optimizer(model, cfg)
    start_epoch, best_fitness, stale = 0, -1.0, 0
    if resume_state is not None:
        model.load_state_dict(resume_state.model_state)
        ema.module.load_state_dict(resume_state.ema_state)
        optimizer.load_state_dict(resume_state.optimizer_state)
        meta = resume_state.metadata
        start_epoch, best_fitness, stale = (
            meta["epoch"] + 1,
            meta["best_fitness"],
            meta["stale_epochs"],
        )
        ema.updates = meta["ema_updates"]
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    encoder = TargetEncoder.from_config(model_config, cfg.loss)
    augmenter = Augmenter(options.augment, model_config.input_size, model_config.flip_idx or None)
    dataset = DetectionDataset(
        train_info, encoder, augmenter, augment=True, seed=cfg.seed, cache=options.cache
    )
    if options.cache:
        log(f"cached {len(dataset)} decoded images: {dataset.cache_bytes() / 2**20:.0f} MiB")
    criterion = DetectionLoss(model_config, cfg.loss).to(device)
    use_amp = cfg.amp and device.type == "cuda"
    steps_per_epoch = math.ceil(len(dataset) / (cfg.batch_size * world))
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = max(MIN_WARMUP_STEPS, round(cfg.warmup_epochs * steps_per_epoch))
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.csv"
    if main_process:
        start_results(results_path, None if resume_state is None else start_epoch)
    metadata = {
        "command": options.command,
        "dataset": str(options.data),
        "dataset_hash": dataset_hash(train_info.samples),
        "train_options": {
            k: v for k, v in asdict(options).items() if k not in ("config", "augment")
        },
        "train_config": asdict(cfg),
        "augment": asdict(options.augment),
    }
    for epoch in range(start_epoch, cfg.epochs):
        dataset.set_epoch(epoch)
        if cfg.close_mosaic and epoch >= cfg.epochs - cfg.close_mosaic:
            # The last epochs see whole images, as validation and inference do.
            dataset.augmenter = replace(augmenter, config=replace(augmenter.config, mosaic=0.0))
            if epoch == cfg.epochs - cfg.close_mosaic:
                log(f"mosaic off for the last {cfg.close_mosaic} epochs")
        if world > 1:
            sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(
                dataset, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            )
        loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            drop_last=False,
        )
        model.train()
        sums = {"box": 0.0, "obj": 0.0, "cls": 0.0, "lmk": 0.0}
        seen, started = 0, time.perf_counter()
        bar = progress(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            enabled=main_process and options.progress,
        )
        lr = cfg.lr
        for i, (images, targets, _) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            lr = learning_rate(step, total_steps, warmup_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = images.to(device, non_blocking=True).float().div_(255)
            images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                outputs = train_model(images)
            loss, items = criterion([o.float() for o in outputs], targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            optimizer.step()
            ema.update(model)
            seen += len(images)
            for k, v in items.as_dict().items():
                sums[k] += v * len(images)
            rate = seen * world / (time.perf_counter() - started)
            bar.set_postfix(
                {k: f"{v / seen:.4f}" for k, v in sums.items() if k != "lmk" or num_landmarks}
                | {"img/s": f"{rate:.1f}"}
            )
        bar.close()
        seconds = time.perf_counter() - started

        stop = torch.zeros(1, device=device)
        if main_process:
            detector = Detector(ema.module, model_config, device)
            val = validate(
                detector,
                val_info,
                batch_size=cfg.batch_size,
                workers=cfg.workers,
                progress=options.progress,
            )
            r = val.result
            fitness = 0.1 * _nz(r.ap50) + 0.9 * _nz(r.ap)
            improved = fitness > best_fitness
            best_fitness, stale = (fitness, 0) if improved else (best_fitness, stale + 1)
            row = [
                epoch + 1,
                f"{lr:.6f}",
                *(f"{sums[k] / seen:.5f}" for k in ("box", "obj", "cls", "lmk")),
                f"{_nz(r.ap):.5f}",
                f"{_nz(r.ap50):.5f}",
                f"{_nz(r.ap75):.5f}",
                f"{seen * world / seconds:.1f}",
                f"{seconds:.1f}",
            ]
            with results_path.open("a", newline="") as f:
                csv.writer(f).writerow(row)
            log(
                f"epoch {epoch + 1}: AP {_nz(r.ap):.4f}  AP50 {_nz(r.ap50):.4f}  AP75 {_nz(r.ap75):.4f}"
                + ("  (best)" if improved else "")
            )
            checkpoint = Checkpoint(
                model_config,
                "grid",
                {k: v.detach().cpu() for k, v in model.state_dict().items()},
                {k: v.detach().cpu() for k, v in ema.module.state_dict().items()},
                optimizer.state_dict(),
                metadata
                | {
                    "epoch": epoch,
                    "best_fitness": best_fitness,
                    "stale_epochs": stale,
                    "ema_updates": ema.updates,
                    "metrics": r.to_dict(),
                },
            )
            checkpoint.save(last_path)
            if improved:
                checkpoint.for_inference().save(best_path)
            if cfg.patience and stale >= cfg.patience:
                log(f"early stop: no improvement for {stale} epochs")
                stop += 1
        if world > 1:
            dist.broadcast(stop, 0)
        if stop.item():
            break
        if options.stop_after_epochs and epoch + 1 - start_epoch >= options.stop_after_epochs:
            log(f"stopping after {options.stop_after_epochs} epochs of this run (resumable)")
            break

    if main_process and options.plots and best_path.exists():
        from detector.plots import training_plots

        for path in training_plots(out, best_path, val_info, device):
            log(f"plot: {path}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    log(f"done: best {best_path} (fitness {best_fitness:.4f}), last {last_path}")
    return best_path


def _nz(value: float) -> float:
    """nan (undefined metric) as 0 for arithmetic."""
    return 0.0 if value != value else float(value)


if __name__ == "__main__":  # python -m detector.train is the same as `detector train`
    from detector.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
