"""``detector anchors``: fit k-means anchors to a dataset's boxes and report their fit."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from detector.config import DEFAULT_STRIDES

if TYPE_CHECKING:
    from detector.anchors import AnchorReport

# The library's defaults (detector.anchors), repeated here so that --help does not import
# torch; tests check that they agree.
DEFAULT_ITERATIONS = 300
DEFAULT_RECALL_IOU = 0.25

DESCRIPTION = """\
Fit K anchor shapes to the training boxes with k-means (distance 1 - IoU of the
shapes centred together) and print them in pixels of the letterboxed IMGSZ x IMGSZ
model input (each box scaled by IMGSZ / max(image width, height)), smallest first,
grouped per output stride when K is a multiple of the number of strides.

Also printed: the mean over boxes of the best anchor IoU, and the best-possible
recall: the fraction of boxes whose best anchor IoU is at least --recall-iou.
Zero-size boxes are left out and counted.

DATA is a YOLO data.yaml (or its folder), a COCO .json, or a Pascal VOC folder.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``anchors`` to the ``detector`` command."""
    parser = subparsers.add_parser(
        "anchors",
        help="fit k-means anchors to a dataset and report best-possible recall",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, type=Path, metavar="DATA", help="dataset path")
    parser.add_argument("-k", type=int, default=9, help="number of anchors (default: 9)")
    parser.add_argument(
        "--imgsz", type=int, default=320, help="side of the square model input (default: 320)"
    )
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")
    parser.add_argument("--split", default="train", help="split to fit on (default: train)")
    parser.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        help=f"most k-means rounds (default: {DEFAULT_ITERATIONS})",
    )
    parser.add_argument(
        "--recall-iou",
        type=float,
        default=DEFAULT_RECALL_IOU,
        help=f"IoU a box needs with its best anchor to count as covered "
        f"(default: {DEFAULT_RECALL_IOU})",
    )
    parser.set_defaults(func=run)


def format_report(
    report: AnchorReport, input_size: int, strides: tuple[int, ...] = DEFAULT_STRIDES
) -> str:
    """The text ``detector anchors`` prints for an :class:`~detector.anchors.AnchorReport`."""
    from detector.anchors import split_anchors

    anchors = [(round(w, 1), round(h, 1)) for w, h in report.anchors.tolist()]
    lines = [
        f"boxes: {report.num_boxes} used, {report.num_dropped} zero-size left out",
        f"anchors (w, h) in pixels of a {input_size}x{input_size} input, smallest first:",
    ]
    if len(anchors) % len(strides) == 0:
        grouped = split_anchors(report.anchors, len(strides))
        grouped = tuple(tuple((round(w, 1), round(h, 1)) for w, h in g) for g in grouped)
        lines += [f"  stride {s}: {list(group)}" for s, group in zip(strides, grouped, strict=True)]
        lines.append(f"ModelConfig.anchors = {grouped}")
    else:
        lines.append(f"  {anchors}")
    lines += [
        f"mean best IoU: {report.mean_iou:.4f}",
        f"best-possible recall (IoU >= {report.recall_iou}): {report.best_possible_recall:.4f}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from detector.inputs import require_path

    if args.imgsz <= 0:
        raise ValueError(f"--imgsz must be positive, got {args.imgsz}")
    require_path(args.data, "dataset")  # before the torch import below

    from detector.anchors import anchors_report, letterboxed_wh
    from detector.data.formats import load_dataset

    info = load_dataset(args.data, args.split)
    print(
        f"dataset: {args.data} split {args.split}: {len(info.samples)} images, "
        f"{len(info.skipped)} skipped"
    )
    wh = letterboxed_wh(info, args.imgsz)
    report = anchors_report(wh, args.k, args.seed, args.iterations, args.recall_iou)
    print(format_report(report, args.imgsz))
    return 0
