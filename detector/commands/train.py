"""``detector train``: train a grid or sliding-window detector on a labelled dataset."""

from __future__ import annotations

import argparse
import shlex
import sys

from detector.commands import HelpFormatter
from detector.config import (
    ASSIGN_RULES,
    HEADS,
    LANDMARK_LOSSES,
    MODEL_KINDS_TRAINED,
    MODEL_SIZES,
    AugmentConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    WindowTrainConfig,
)

DESCRIPTION = """\
Train a YOLO-style detector. Anchors are fitted by k-means on the training boxes; every
epoch is validated with COCO metrics and writes OUT/results.csv, OUT/last.safetensors
(resumable) and OUT/best.safetensors.

--kind sliding-window trains a WINDOW x WINDOW crop classifier (run convolutionally over an
image pyramid at inference) on windows cut around each labelled object and random
background windows, then on the false positives of hard-negative mining; --data may also
be a crops folder (one folder of images per class plus background/). Validation is the
same: COCO metrics on whole images. results.csv's obj and lmk columns are 0 for it (the
background class takes objectness's part and counts in cls), and images_per_s counts crops.
--batch counts images (each gives about (1 + --negatives) crops per object); the grid's
--model, --head*, --mosaic, --close-mosaic, --scale, --assign, --obj-*, --cls-gain and
--landmark-* do not apply to it (given other than at their defaults, they are an error).

Multi-GPU: torchrun --nproc-per-node N -m detector.train ...
"""


# TrainOptions' defaults (detector.train, which imports torch), repeated here so that
# --help stays fast; a test checks that they agree. Hyper-parameters come from the
# dataclasses of detector.config below, never written down here.
DEFAULT_OUT = "runs/train"
DEFAULT_DEVICE = "auto"
DEFAULT_HEAD = "decoupled"
TRAIN = TrainConfig()
WINDOW = WindowTrainConfig()
# Flags of the sliding-window kind only (their defaults are None so that giving one to a
# grid run is an error): argparse dest -> the flag.
WINDOW_FLAGS = {
    "window": "--window",
    "min_size": "--min-size",
    "window_widths": "--window-widths",
    "fc_widths": "--fc-widths",
    "gray": "--gray",
    "window_border": "--window-border",
    "negatives": "--negatives",
    "hard_negatives": "--hard-negatives",
    "hard_negative_epochs": "--hard-negative-epochs",
    "hard_negative_score": "--hard-negative-score",
    "hard_negatives_per_image": "--hard-negatives-per-image",
}
# Flags of the grid kind only: argparse dest -> the flag. A sliding-window run given one
# with a value other than its default fails (the defaults travel in the parsed arguments,
# as ``grid_defaults``).
GRID_FLAGS = {
    "model": "--model",
    "head": "--head",
    "head_depth": "--head-depth",
    "head_width": "--head-width",
    "mosaic": "--mosaic",
    "close_mosaic": "--close-mosaic",
    "scale": "--scale",
    "assign": "--assign",
    "obj_gain": "--obj-gain",
    "cls_gain": "--cls-gain",
    "obj_target": "--obj-target",
    "landmark_gain": "--landmark-gain",
    "landmark_loss": "--landmark-loss",
}
# --obj-target's choices by LossConfig.iou_objectness.
OBJ_TARGETS = {True: "iou", False: "one"}
# detector.train_blocks.MIN_WARMUP_STEPS, repeated for the same reason; a test checks it.
MIN_WARMUP_STEPS = 50
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
    p.add_argument(
        "--data",
        required=True,
        help="data.yaml (YOLO), COCO .json or VOC folder; for --kind sliding-window also a "
        "crops folder (class folders + background/; every 10th image validates)",
    )
    p.add_argument(
        "--kind",
        default=MODEL_KINDS_TRAINED[0],
        choices=MODEL_KINDS_TRAINED,
        help="grid: YOLO anchors (landmark when the data has keypoints); sliding-window: a "
        "crop classifier over an image pyramid",
    )
    p.add_argument(
        "--model", default=ModelConfig.size, choices=sorted(MODEL_SIZES), help="model size"
    )
    p.add_argument(
        "--head",
        default=DEFAULT_HEAD,
        choices=HEADS,
        help="a new grid model's output layers: decoupled = a 3x3 conv branch for the "
        "classes and one for box and objectness (learns the classes much faster; tiny: "
        "1.35 GFLOPs at 320); coupled = one 1x1 conv per stride (tiny: 0.88 GFLOPs; the "
        "shipped digits model's); cls-branch = the 3x3 branch for the classes only "
        "(tiny: 1.11 GFLOPs; learned little faster than coupled here, bench/README.md)",
    )
    p.add_argument(
        "--head-depth",
        type=int,
        default=ModelConfig.head_depth,
        metavar="N",
        help="3x3 conv blocks in each branch of a decoupled head",
    )
    p.add_argument(
        "--head-width",
        type=int,
        default=ModelConfig.head_width,
        metavar="C",
        help="channels of a decoupled head's branches (0: max(64, neck width / 2))",
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
        "--val-images",
        type=int,
        metavar="N",
        help="validate each epoch on the first N images of the validation split (in the "
        "dataset's order; YOLO and VOC folders: sorted by path) instead of all: a shorter "
        "pass, e.g. for a sliding-window model (default: all)",
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
        help="adamw (measured best on short runs) or sgd (Nesterov; wants about --lr 0.01)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=TRAIN.lr,
        help="peak learning rate after the warm-up (AdamW; SGD wants about 0.01)",
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
        help=f"weight of the box loss: grid (1 - CIoU), default {LossConfig.box_gain:g}, "
        f"objectness weighs {LossConfig.obj_gain:g}, classes {LossConfig.cls_gain:g}; "
        f"sliding-window smooth-L1, default {WINDOW.box_gain:g}, class cross-entropy 1",
    )
    p.add_argument(
        "--obj-gain",
        type=float,
        default=LossConfig.obj_gain,
        help="grid: weight of the objectness BCE term",
    )
    p.add_argument(
        "--cls-gain",
        type=float,
        default=LossConfig.cls_gain,
        help="grid: weight of the class BCE term (on positives)",
    )
    p.add_argument(
        "--obj-target",
        default=OBJ_TARGETS[LossConfig.iou_objectness],
        choices=sorted(OBJ_TARGETS.values()),
        help="grid: objectness target of a positive: iou = the IoU of its predicted box with "
        "the true one (YOLOv5), one = 1",
    )
    p.add_argument(
        "--landmark-gain",
        type=float,
        default=LossConfig.landmark_gain,
        help="grid with keypoints: weight of the landmark term",
    )
    p.add_argument(
        "--landmark-loss",
        default=LossConfig.landmark_loss,
        choices=LANDMARK_LOSSES,
        help="grid with keypoints: the landmark error per coordinate, in anchor units: l1, "
        "or smooth-l1 (beta 1; its gradient fades below one anchor unit, several pixels, "
        "and kept the first faces model's points coarse)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=TRAIN.warmup_epochs,
        help=f"epochs of linear learning-rate warm-up from 0 (at least {MIN_WARMUP_STEPS} steps)",
    )
    w = p.add_argument_group("sliding-window (--kind sliding-window only)")
    w.add_argument(
        "--window",
        type=int,
        help=f"window side W in input pixels (default {WINDOW.window}; with the default "
        "widths 12 + a multiple of 4: 24, 28, 32, 36...)",
    )
    w.add_argument(
        "--min-size",
        type=float,
        help="smallest object side to find, input pixels (the pyramid's first level); "
        "default: the 2nd percentile of the training boxes' longer sides, at least half the "
        "window; 0: the window",
    )
    w.add_argument(
        "--window-widths",
        type=_ints,
        metavar="C1,C2,…",
        help="channels of the conv stages, each valid 3x3 convs and a 2x2 pool "
        "(default: WindowConfig.stage_widths)",
    )
    w.add_argument(
        "--fc-widths",
        type=_ints,
        metavar="F1,…",
        help="widths of the fully connected layers written as convs "
        "(default: WindowConfig.fc_widths)",
    )
    w.add_argument(
        "--gray",
        action="store_const",
        const=True,
        help="the model reads its input as luminance (a fixed RGB-to-grey first step, kept "
        "in the model file): for grey training crops and colour photos alike",
    )
    w.add_argument(
        "--window-border",
        type=int,
        metavar="PX",
        help="letterbox grey around every pyramid level, in window pixels, so windows reach "
        "past the image's edge like the training crops of objects near it (default: a "
        "quarter of the window; 0: windows stay inside the image)",
    )
    w.add_argument(
        "--negatives",
        type=int,
        metavar="N",
        help=f"random background crops per object crop, and per scene of a crops folder's "
        f"background/ (default {WINDOW.negatives_per_positive})",
    )
    w.add_argument(
        "--hard-negatives",
        type=int,
        metavar="N",
        help=f"rounds of hard-negative mining, spread over the second half of the epochs "
        f"(default {WINDOW.hard_negative_rounds}; 0: none)",
    )
    w.add_argument(
        "--hard-negative-epochs",
        type=_ints,
        metavar="E1,…",
        help="mine after these epochs (1-based) instead (default: the rounds of --hard-negatives)",
    )
    w.add_argument(
        "--hard-negative-score",
        type=float,
        help=f"a false positive scores at least this (default {WINDOW.hard_negative_score:g})",
    )
    w.add_argument(
        "--hard-negatives-per-image",
        type=int,
        metavar="N",
        help="keep at most the N highest-scoring false positives of an image per round "
        f"(default {WINDOW.hard_negatives_per_image})",
    )
    p.add_argument("--strict", action="store_true", help="a bad label is fatal instead of skipped")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run, grid_defaults={dest: p.get_default(dest) for dest in GRID_FLAGS})


def _ints(text: str) -> tuple[int, ...]:
    """``"16,32"`` -> ``(16, 32)``."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def window_train_config(args: argparse.Namespace) -> WindowTrainConfig:
    """The :class:`WindowTrainConfig` of parsed arguments; ``ValueError`` when a
    sliding-window flag is given to a grid run, or a grid flag (other than at its
    default) to a sliding-window run."""
    given = [flag for dest, flag in WINDOW_FLAGS.items() if getattr(args, dest) is not None]
    if args.kind != "sliding-window":
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to --kind sliding-window only (this run: --kind "
                f"{args.kind})"
            )
        return WINDOW
    defaults = getattr(args, "grid_defaults", {})
    grid_given = [
        flag
        for dest, flag in GRID_FLAGS.items()
        if dest in defaults and getattr(args, dest) != defaults[dest]
    ]
    if grid_given:
        raise ValueError(
            f"{', '.join(grid_given)} apply to grid models only, not to --kind sliding-window"
        )
    values = {
        "window": args.window,
        "min_size": args.min_size,
        "stage_widths": args.window_widths,
        "fc_widths": args.fc_widths,
        "grayscale": args.gray,
        "border": args.window_border,
        "negatives_per_positive": args.negatives,
        "hard_negative_rounds": args.hard_negatives,
        "hard_negative_epochs": args.hard_negative_epochs,
        "hard_negative_score": args.hard_negative_score,
        "hard_negatives_per_image": args.hard_negatives_per_image,
        "box_gain": args.box_gain,
    }
    return WindowTrainConfig(**{k: v for k, v in values.items() if v is not None})


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that parsed ``detector train`` arguments describe."""
    box_gain = LossConfig.box_gain if args.box_gain is None else args.box_gain
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch,
        optimizer=args.optimizer,
        lr=args.lr,
        workers=args.workers,
        seed=args.seed,
        patience=args.patience,
        close_mosaic=args.close_mosaic,
        warmup_epochs=args.warmup_epochs,
        loss=LossConfig(
            box_gain=box_gain,
            obj_gain=args.obj_gain,
            cls_gain=args.cls_gain,
            landmark_gain=args.landmark_gain,
            landmark_loss=args.landmark_loss,
            iou_objectness=args.obj_target == OBJ_TARGETS[True],
            **ASSIGN_RULES[args.assign],
        ),
    )


def run(args: argparse.Namespace) -> int:
    from detector.inputs import require_path

    require_path(args.data, "dataset")  # before the torch import below
    if args.init is not None:
        require_path(args.init, "--init model file")

    window = window_train_config(args)  # a sliding-window flag on a grid run fails here
    config = train_config(args)

    from dataclasses import replace

    from detector.train import TrainOptions, train

    augment = replace(AugmentConfig(), mosaic=args.mosaic, fliplr=args.fliplr, scale=args.scale)
    options = TrainOptions(
        data=args.data,
        kind=args.kind,
        model=args.model,
        head=args.head,
        head_depth=args.head_depth,
        head_width=args.head_width,
        imgsz=args.imgsz,
        out=args.out,
        device=args.device,
        resume=args.resume,
        init=args.init,
        stop_after_epochs=args.stop_after,
        val_images=args.val_images,
        cache=args.cache,
        strict=args.strict,
        plots=not args.no_plots,
        progress=not args.quiet,
        config=config,
        augment=augment,
        window=window,
        command=shlex.join(
            # detector.cli.main passes what it parsed; `python -m detector.train` does not
            ["detector", *args.argv]
            if hasattr(args, "argv")
            else ["detector", "train", *sys.argv[1:]]
        ),
    )
    train(options)
    return 0
