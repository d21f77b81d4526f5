"""``detector train``: train a grid detector on a labelled dataset."""

from __future__ import annotations

import argparse
import shlex
import sys

from detector.commands import HelpFormatter
from detector.config import (
    ASSIGN_RULES,
    MODEL_SIZES,
    AugmentConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
)

DESCRIPTION = """\
Train a YOLO-style detector. Anchors are fitted by k-means on the training boxes; every
epoch is validated with COCO metrics and writes OUT/results.csv, OUT/last.safetensors
(resumable) and OUT/best.safetensors.

Multi-GPU: torchrun --nproc-per-node N -m detector.train ...
"""


# TrainOptions' defaults (detector.train, which imports torch), repeated here so that
# --help stays fast; a test checks that they agree. Hyper-parameters come from the
# dataclasses of detector.config below, never written down here.
DEFAULT_OUT = "runs/train"
DEFAULT_DEVICE = "auto"
TRAIN = TrainConfig()
# The --assign rule whose LossConfig fields are LossConfig's defaults.
DEFAULT_ASSIGN = next(
    name
    for name, rule in ASSIGN_RULES.items()
    if all(getattr(LossConfig, key) == value for key, value in rule.items())
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a detector on a labelled dataset",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", required=True, help="data.yaml (YOLO), COCO .json or VOC folder")
    p.add_argument(
        "--model", default=ModelConfig.size, choices=sorted(MODEL_SIZES), help="model size"
    )
    p.add_argument("--epochs", type=int, default=TRAIN.epochs, help="epochs to train")
    p.add_argument(
        "--imgsz",
        type=int,
        default=ModelConfig.input_size,
        help="square input side, multiple of 32",
    )
    p.add_argument(
        "--batch", type=int, default=TRAIN.batch_size, help="images per batch (per process)"
    )
    p.add_argument("--device", default=DEFAULT_DEVICE, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    p.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from this model file's weights and anchors (fine-tuning; same classes); "
        "the schedule starts anew (default: random weights, k-means anchors)",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="end this run after N epochs, resumable with --resume (training in time slices; "
        "default: run to --epochs)",
    )
    p.add_argument(
        "--optimizer",
        default=TRAIN.optimizer,
        choices=["sgd", "adamw"],
        help="adamw converges faster on short runs",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=TRAIN.lr,
        help="peak learning rate (SGD 0.01, AdamW about 0.001)",
    )
    p.add_argument("--workers", type=int, default=TRAIN.workers, help="data loading processes")
    p.add_argument(
        "--cache",
        action="store_true",
        help="decode the training images once and keep them in memory (faster epochs; H*W*3 bytes per image)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=TRAIN.seed,
        help="seed of the k-means anchors, the initial weights, the sampling order and the "
        "augmentations",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=TRAIN.patience,
        help="early stop after N epochs without improvement (0: never)",
    )
    p.add_argument(
        "--mosaic",
        type=float,
        default=AugmentConfig.mosaic,
        help="probability of a 4-image mosaic",
    )
    p.add_argument(
        "--close-mosaic",
        type=int,
        default=TRAIN.close_mosaic,
        metavar="N",
        help="train the last N epochs without mosaic, on whole images as at inference",
    )
    p.add_argument(
        "--fliplr",
        type=float,
        default=AugmentConfig.fliplr,
        help="horizontal flip probability (0 for text or digits)",
    )
    p.add_argument("--scale", type=float, default=AugmentConfig.scale, help="random zoom range +-")
    p.add_argument(
        "--assign",
        default=DEFAULT_ASSIGN,
        choices=sorted(ASSIGN_RULES),
        help="positives per object: best = its best anchor in its cell only (Darknet); "
        f"multi = also every anchor with shape IoU > {ASSIGN_RULES['multi']['positive_iou']}, "
        "each in the centre's cell and its two nearest neighbour cells (YOLOv5-like; about "
        "10 per object)",
    )
    p.add_argument(
        "--box-gain",
        type=float,
        default=LossConfig.box_gain,
        help=f"weight of the box (1 - CIoU) loss; objectness weighs {LossConfig.obj_gain:g}, "
        f"classes {LossConfig.cls_gain:g}",
    )
    p.add_argument("--strict", action="store_true", help="a bad label is fatal instead of skipped")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that parsed ``detector train`` arguments describe."""
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch,
        optimizer=args.optimizer,
        lr=args.lr,
        workers=args.workers,
        seed=args.seed,
        patience=args.patience,
        close_mosaic=args.close_mosaic,
        loss=LossConfig(box_gain=args.box_gain, **ASSIGN_RULES[args.assign]),
    )


def run(args: argparse.Namespace) -> int:
    from detector.inputs import require_path

    require_path(args.data, "dataset")  # before the torch import below
    if args.init is not None:
        require_path(args.init, "--init model file")

    from dataclasses import replace

    from detector.train import TrainOptions, train

    config = train_config(args)
    augment = replace(AugmentConfig(), mosaic=args.mosaic, fliplr=args.fliplr, scale=args.scale)
    options = TrainOptions(
        data=args.data,
        model=args.model,
        imgsz=args.imgsz,
        out=args.out,
        device=args.device,
        resume=args.resume,
        init=args.init,
        stop_after_epochs=args.stop_after,
        cache=args.cache,
        strict=args.strict,
        plots=not args.no_plots,
        progress=not args.quiet,
        config=config,
        augment=augment,
        command=shlex.join(
            # detector.cli.main passes what it parsed; `python -m detector.train` does not
            ["detector", *args.argv]
            if hasattr(args, "argv")
            else ["detector", "train", *sys.argv[1:]]
        ),
    )
    train(options)
    return 0
