"""``detector train``: train a grid detector on a labelled dataset."""

from __future__ import annotations

import argparse
import shlex
import sys

from detector.commands import HelpFormatter
from detector.config import ASSIGN_RULES, MODEL_SIZES, LossConfig, TrainConfig

DESCRIPTION = """\
Train a YOLO-style detector. Anchors are fitted by k-means on the training boxes; every
epoch is validated with COCO metrics and writes OUT/results.csv, OUT/last.safetensors
(resumable) and OUT/best.safetensors.

Multi-GPU: torchrun --nproc-per-node N -m detector.train ...
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a detector on a labelled dataset",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", required=True, help="data.yaml (YOLO), COCO .json or VOC folder")
    p.add_argument("--model", default="tiny", choices=sorted(MODEL_SIZES), help="model size")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--imgsz", type=int, default=320, help="square input side, multiple of 32")
    p.add_argument("--batch", type=int, default=16, help="images per batch (per process)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", default="runs/train", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    p.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from this model file's weights and anchors (fine-tuning; same classes); the schedule starts anew",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="end this run after N epochs, resumable with --resume (training in time slices)",
    )
    p.add_argument(
        "--optimizer",
        default="sgd",
        choices=["sgd", "adamw"],
        help="adamw converges faster on short runs",
    )
    p.add_argument(
        "--lr", type=float, default=0.01, help="peak learning rate (SGD 0.01, AdamW about 0.001)"
    )
    p.add_argument("--workers", type=int, default=2, help="data loading processes")
    p.add_argument(
        "--cache",
        action="store_true",
        help="decode the training images once and keep them in memory (faster epochs; H*W*3 bytes per image)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--patience",
        type=int,
        default=20,
        help="early stop after N epochs without improvement (0: never)",
    )
    p.add_argument("--mosaic", type=float, default=1.0, help="probability of a 4-image mosaic")
    p.add_argument(
        "--close-mosaic",
        type=int,
        default=0,
        metavar="N",
        help="train the last N epochs without mosaic, on whole images as at inference",
    )
    p.add_argument(
        "--fliplr",
        type=float,
        default=0.5,
        help="horizontal flip probability (0 for text or digits)",
    )
    p.add_argument("--scale", type=float, default=0.5, help="random zoom range +-")
    p.add_argument(
        "--assign",
        default="multi",
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
        help="weight of the box (1 - CIoU) loss; objectness weighs 1, classes 0.5",
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

    from detector.data.transforms import AugmentConfig
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
