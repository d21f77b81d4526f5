"""The building blocks of :mod:`detector.train`: the options of a run, the EMA of the
weights, the learning-rate schedule, the optimizer, k-means anchors for a new model, the
dataset fingerprint and the ``results.csv`` header. Each is small and stands alone;
:mod:`detector.train` puts them together into the steps of a run."""

from __future__ import annotations

import copy
import csv
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from detector.anchors import (
    best_possible_recall,
    kmeans_anchors,
    letterboxed_wh,
    mean_best_iou,
    positive_wh,
    split_anchors,
)
from detector.config import MODEL_KINDS_TRAINED, TrainConfig, WindowTrainConfig
from detector.data.transforms import AugmentConfig

NUM_ANCHORS = 9
LAST, BEST, RESULTS = "last.safetensors", "best.safetensors", "results.csv"  # in options.out
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
    # a landmark model's validation (detector.keypoint_metrics); empty for other models
    "kpt_ap",
    "kpt_ap50",
    "nme",
)


@dataclass
class TrainOptions:
    """One training run: data, model, schedule and output."""

    data: str  # data.yaml, COCO json, VOC folder; sliding-window also a crops folder
    kind: str = "grid"  # "grid" (landmark with keypoints) or "sliding-window"
    model: str = "tiny"  # model size (see detector.config.MODEL_SIZES)
    # A new grid model's output layers (see ModelConfig.head): decoupled learned the
    # classes about 5x faster per epoch than coupled (bench/README.md, "Recipe ablation").
    head: str = "decoupled"
    head_depth: int = 1  # 3×3 conv blocks per branch of a decoupled head
    head_width: int = 0  # channels of a decoupled head's branches (0: the default)
    imgsz: int = 320  # square input side in pixels
    out: str = "runs/train"  # output folder: checkpoints, results.csv, plots
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = False  # continue from out/last.safetensors
    init: str | None = None  # start from this model's weights (same classes), new schedule
    strict: bool = False  # a bad label file is fatal instead of skipped
    train_split: str = "train"
    val_split: str = "val"
    # Validate on the first N images of the validation split, in the order the dataset
    # lists them (a YOLO or VOC folder: sorted by path): a shorter pass each epoch (a
    # sliding-window pyramid costs ~0.1 s an image here); None: all.
    val_images: int | None = None
    plots: bool = True  # PNG plots at the end
    progress: bool = True  # progress bars
    config: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    command: str = ""  # the command line, recorded in the checkpoint
    stop_after_epochs: int | None = None  # end this run after N epochs, resumable (time slices)
    cache: bool = False  # decode the training images once and keep them in memory
    window: WindowTrainConfig = field(default_factory=WindowTrainConfig)  # sliding-window only

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS_TRAINED:
            raise ValueError(
                f"unknown kind {self.kind!r} to train; expected one of {MODEL_KINDS_TRAINED}"
            )
        if self.val_images is not None and self.val_images < 1:
            raise ValueError(f"val_images must be >= 1 or None, got {self.val_images}")
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
