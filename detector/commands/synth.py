"""``detector synth``: generate synthetic datasets."""

from __future__ import annotations

import argparse
import sys

DIGITS_HELP = """\
Write a YOLO-format detection dataset of real handwritten digits (scikit-learn's
load_digits) composited on noise, gradients and photo textures:

  DIR/images/{train,val}/NNNNNN.png   square IMGSZ x IMGSZ RGB images
  DIR/labels/{train,val}/NNNNNN.txt   one 'class cx cy w h' line per digit, normalised
  DIR/data.yaml                       Ultralytics-style: path, train, val, nc, names

Boxes are the tight box of each digit's visible ink. Validation images use digit
samples never used for training. The same --seed gives byte-identical files.
PNG is the default because it stores exactly the pixels the boxes were measured on;
--format jpg (quality 95) is about 4x smaller on disk.
Needs the optional extra: pip install 'yolo-detector[synth]'.
"""

FACES_HELP = """\
Write an Ultralytics pose dataset of procedurally drawn faces (OpenCV: head, skin tones,
eyes, brows, nose, mouth, hair, sometimes glasses or an occluding hand or object), 1-6 per
image, 24-200 px, rotated up to +-30 degrees, squashed as if turned, on scikit-image
textures, photos, noise and gradients; some cut by the border, some overlapping:

  DIR/images/{train,val}/NNNNNN.png   square IMGSZ x IMGSZ RGB images
  DIR/labels/{train,val}/NNNNNN.txt   'class cx cy w h' + 5 x 'x y v' per face, normalised
  DIR/data.yaml                       names, kpt_shape [5, 3], flip_idx, kpt_names

Landmarks: left eye, right eye, nose tip, left mouth corner, right mouth corner, where
left/right are the VIEWER's (the image-left eye of an upright frontal face is 'left_eye').
Visibility 2, or 0 ('0 0 0') for points outside the image or covered by an occluder or
another face. The same --seed gives byte-identical files; train and val images come from
disjoint random streams. Convert with: detector convert --to coco.
Needs the optional extra: pip install 'yolo-detector[synth]'.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` and its generators to the ``detector`` command."""
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic dataset (handwritten digits, faces)",
        description="Generate a synthetic labelled dataset.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    digits = kinds.add_parser(
        "digits",
        help="handwritten digits on varied backgrounds, YOLO format",
        description=DIGITS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    digits.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    digits.add_argument("--train", type=int, required=True, metavar="N", help="training images")
    digits.add_argument("--val", type=int, required=True, metavar="M", help="validation images")
    digits.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    digits.add_argument(
        "--imgsz", type=int, default=320, help="image side in pixels (default: 320)"
    )
    digits.add_argument(
        "--min-objects", type=int, default=1, help="fewest digits per image (default: 1)"
    )
    digits.add_argument(
        "--max-objects", type=int, default=6, help="most digits per image (default: 6)"
    )
    digits.add_argument(
        "--format",
        choices=("png", "jpg"),
        default="png",
        help="image file format (default: png, lossless)",
    )
    digits.add_argument(
        "--overwrite", action="store_true", help="replace existing images and labels in DIR"
    )
    digits.add_argument("--quiet", action="store_true", help="no progress bar")
    digits.set_defaults(func=run_digits)

    faces = kinds.add_parser(
        "faces",
        help="drawn faces with 5 landmarks, YOLO pose format",
        description=FACES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    faces.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    faces.add_argument("--train", type=int, required=True, metavar="N", help="training images")
    faces.add_argument("--val", type=int, required=True, metavar="M", help="validation images")
    faces.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    faces.add_argument("--imgsz", type=int, default=320, help="image side in pixels (default: 320)")
    faces.add_argument(
        "--min-faces", type=int, default=1, help="fewest faces per image (default: 1)"
    )
    faces.add_argument("--max-faces", type=int, default=6, help="most faces per image (default: 6)")
    faces.add_argument(
        "--format", choices=("png", "jpg"), default="png", help="image file format (default: png)"
    )
    faces.add_argument(
        "--overwrite", action="store_true", help="replace existing images and labels in DIR"
    )
    faces.add_argument("--quiet", action="store_true", help="no progress bar")
    faces.set_defaults(func=run_faces)


def run_digits(args: argparse.Namespace) -> int:
    """Generate the digits dataset and print a summary; returns the exit code."""
    from detector.data.synthetic import DIGIT_NAMES, SceneConfig, generate_yolo_dataset

    config = SceneConfig(min_objects=args.min_objects, max_objects=args.max_objects)
    try:
        summary = generate_yolo_dataset(
            args.out,
            n_train=args.train,
            n_val=args.val,
            seed=args.seed,
            imgsz=args.imgsz,
            config=config,
            image_format=args.format,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lo, mid, hi = summary.box_sides
    per_class = " ".join(f"{n}:{c}" for n, c in zip(DIGIT_NAMES, summary.class_counts, strict=True))
    print(f"wrote {summary.data_yaml} in {summary.seconds:.1f} s")
    for split, n_images in summary.images.items():
        print(f"  {split}: {n_images} images, {summary.objects[split]} digits")
    print(f"  digits per class: {per_class}")
    print(f"  box side sqrt(w*h): min {lo:.0f} px, median {mid:.0f} px, max {hi:.0f} px")
    return 0


def run_faces(args: argparse.Namespace) -> int:
    """Generate the faces dataset and print a summary; returns the exit code."""
    from detector.data.faces import FaceConfig, generate_faces_dataset

    try:
        config = FaceConfig(min_faces=args.min_faces, max_faces=args.max_faces)
        summary = generate_faces_dataset(
            args.out,
            n_train=args.train,
            n_val=args.val,
            seed=args.seed,
            imgsz=args.imgsz,
            config=config,
            image_format=args.format,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lo, mid, hi = summary.face_sides
    print(f"wrote {summary.data_yaml} in {summary.seconds:.1f} s")
    for split, n_images in summary.images.items():
        print(f"  {split}: {n_images} images, {summary.faces[split]} faces")
    print(f"  visible landmarks: {100 * summary.visible_points:.1f} %")
    print(f"  face box height: min {lo:.0f} px, median {mid:.0f} px, max {hi:.0f} px")
    return 0
