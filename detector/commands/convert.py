"""``detector convert``: rewrite a YOLO / COCO / VOC dataset as YOLO or COCO."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

MAX_SKIP_MESSAGES = 10  # skip messages printed per split; the rest are counted


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a YOLO, COCO or Pascal VOC dataset to YOLO or COCO",
        description="Read a dataset (a YOLO data.yaml, a COCO .json, or a Pascal VOC folder "
        "with Annotations/) and write it as a YOLO dataset (images/<split>/, labels/<split>/, "
        "data.yaml) or as COCO json files (<split>.json referencing the images in place). "
        "Bad labels skip their image and are reported; --strict stops at the first one.",
    )
    parser.add_argument("--data", required=True, type=Path, help="input dataset path")
    parser.add_argument("--to", required=True, choices=("yolo", "coco"), help="output format")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--split",
        nargs="+",
        default=None,
        help="splits to convert (default: all present); for a COCO json, the one split it "
        "holds (default: guessed from its name)",
    )
    parser.add_argument(
        "--names", nargs="+", default=None, help="class names, in class-id order (override)"
    )
    parser.add_argument(
        "--images-dir", type=Path, default=None, help="COCO input: folder file_name is relative to"
    )
    parser.add_argument(
        "--link-images",
        action="store_true",
        help="YOLO output: symlink the images instead of copying them",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on the first bad label instead of skipping"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detector.inputs import require_path

    require_path(args.data, "dataset")  # before the torch import below

    from detector.data.formats import load_splits, write_coco, write_yolo

    splits = load_splits(args.data, args.split, args.strict, args.names, args.images_dir)
    if not any(info.samples for info in splits.values()):
        _print_skipped(splits, sys.stderr)
        print(f"error: no image of {args.data} could be read; nothing written", file=sys.stderr)
        return 1
    if args.to == "yolo":
        written = [write_yolo(splits, args.out, copy_images=not args.link_images)]
    else:
        written = [write_coco(info, args.out / f"{name}.json") for name, info in splits.items()]
    print(f"{'split':<10} {'images':>8} {'boxes':>8} {'skipped':>8}")
    for name, info in splits.items():
        boxes = sum(len(s.boxes) for s in info.samples)
        print(f"{name:<10} {len(info.samples):>8} {boxes:>8} {len(info.skipped):>8}")
    _print_skipped(splits, sys.stdout)
    classes = next(iter(splits.values())).names
    print(f"classes: {len(classes)} ({', '.join(classes)})")
    for path in written:
        print(f"wrote {path}")
    return 0


def _print_skipped(splits: dict, stream: TextIO) -> None:
    """The first skip messages of each split, then how many more there were."""
    for name, info in splits.items():
        for message in info.skipped[:MAX_SKIP_MESSAGES]:
            print(f"skipped ({name}): {message}", file=stream)
        if len(info.skipped) > MAX_SKIP_MESSAGES:
            more = len(info.skipped) - MAX_SKIP_MESSAGES
            print(f"skipped ({name}): ... and {more} more", file=stream)
