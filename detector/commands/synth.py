"""``detector synth``: generate synthetic datasets."""

from __future__ import annotations

import argparse
import sys

from detector.commands import EXIT_USAGE, HelpFormatter

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
  DIR/data.yaml                       names, kpt_shape [5, 3], flip_idx, kpt_names, skeleton

Landmarks: left eye, right eye, nose tip, left mouth corner, right mouth corner, where
left/right are the VIEWER's (the image-left eye of an upright frontal face is 'left_eye').
Visibility 2, or 0 ('0 0 0') for points outside the image or covered by an occluder or
another face. The same --seed gives byte-identical files; train and val images come from
disjoint random streams. Convert with: detector convert --to coco.
Needs the optional extra: pip install 'yolo-detector[synth]'.
"""

LFW_HELP = """\
Write a crops folder of real faces for 'detector train --kind sliding-window':
scikit-image's lfw_subset (100 face and 100 non-face 25x25 grey crops from Labeled
Faces in the Wild), the faces jittered (shift, scale, rotation, flip, brightness,
contrast), plus face-free scikit-image photos and textures as whole scenes:

  DIR/face/cCC_fFFF.png          COPIES jittered copies of each face (copy 0: the original)
  DIR/background/lfw_NNN.png     the non-face crops
  DIR/background/scene_NAME.png  face-free photos; training cuts negative windows from them

Never written: astronaut and camera (real faces: the shipped model's test photos) and the
held-out face-free photos coffee, rocket, chelsea (= cat), gravel and text. Every 10th
file of each folder validates; the face files are named copy-major, so every copy of one
face in ten validates. The same --seed gives byte-identical files.
Needs the optional extra: pip install 'yolo-detector[synth]'.
"""
# detector.data.lfw_faces.COPIES, repeated so that --help stays light; a test checks it.
LFW_COPIES = 10

VIDEO_HELP = """\
Write a test clip of handwritten digits (scikit-learn's load_digits, validation glyphs
by default) gliding over a still random background, each at a constant speed, bouncing
off the edges: the input 'detector video' can be tried on without a video of your own.

OUT's suffix and --codec must suit each other: .mp4 with mp4v, .avi with MJPG or XVID.
--labels FILE also writes the exact boxes, one JSON line per frame:
  {"index": 0, "boxes": [[x1, y1, x2, y2], ...], "classes": [3, 7, 1]}
(pixels; the same digits in the same order in every frame). The same --seed gives the
same frames. Needs the optional extra: pip install 'yolo-detector[synth]'.
"""
# Defaults of the clip. VIDEO_DIGITS repeats MovingDigitsConfig.num_digits (its module
# imports torch; --help must not): a test checks that they agree.
VIDEO_DIGITS = 3
VIDEO_FRAMES = 120
VIDEO_WIDTH = 320
VIDEO_HEIGHT = 240
VIDEO_FPS = 25.0
VIDEO_CODECS = ("mp4v", "MJPG", "XVID")
VIDEO_SPLITS = ("val", "train")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` and its generators to the ``detector`` command."""
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic dataset (handwritten digits, faces, lfw face crops) or a test video",
        description="Generate a synthetic labelled dataset.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    digits = kinds.add_parser(
        "digits",
        help="handwritten digits on varied backgrounds, YOLO format",
        description=DIGITS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _dataset_arguments(digits)
    digits.add_argument(
        "--min-objects", type=int, default=1, help="fewest digits per image (default: 1)"
    )
    digits.add_argument(
        "--max-objects", type=int, default=6, help="most digits per image (default: 6)"
    )
    _output_arguments(digits)
    digits.set_defaults(func=run_digits)

    faces = kinds.add_parser(
        "faces",
        help="drawn faces with 5 landmarks, YOLO pose format",
        description=FACES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _dataset_arguments(faces)
    faces.add_argument(
        "--min-faces", type=int, default=1, help="fewest faces per image (default: 1)"
    )
    faces.add_argument("--max-faces", type=int, default=6, help="most faces per image (default: 6)")
    _output_arguments(faces)
    faces.set_defaults(func=run_faces)
    lfw = kinds.add_parser(
        "lfw-faces",
        help="real face crops (scikit-image's lfw_subset) and face-free scenes, a crops folder",
        description=LFW_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lfw.add_argument("--out", required=True, metavar="DIR", help="crops folder to write")
    lfw.add_argument("--seed", type=int, default=0, help="augmentation seed (default: 0)")
    lfw.add_argument(
        "--copies",
        type=int,
        default=LFW_COPIES,
        metavar="N",
        help=f"jittered copies of each face (default: {LFW_COPIES})",
    )
    lfw.add_argument("--overwrite", action="store_true", help="replace the crops in DIR")
    lfw.set_defaults(func=run_lfw_faces)
    video = kinds.add_parser(
        "video",
        help="a clip of handwritten digits moving over a background, to try 'detector video'",
        description=VIDEO_HELP,
        formatter_class=HelpFormatter,
    )
    video.add_argument("--out", required=True, metavar="PATH", help="video file to write")
    video.add_argument("--frames", type=int, default=VIDEO_FRAMES, metavar="N", help="frames")
    video.add_argument("--seed", type=int, default=0, help="clip seed")
    video.add_argument("--width", type=int, default=VIDEO_WIDTH, help="frame width in pixels")
    video.add_argument("--height", type=int, default=VIDEO_HEIGHT, help="frame height in pixels")
    video.add_argument("--fps", type=float, default=VIDEO_FPS, help="frames per second")
    video.add_argument("--digits", type=int, default=VIDEO_DIGITS, help="digits in the clip")
    video.add_argument("--codec", default=VIDEO_CODECS[0], choices=VIDEO_CODECS, help="FourCC")
    video.add_argument(
        "--split", default=VIDEO_SPLITS[0], choices=VIDEO_SPLITS, help="digit glyphs of this split"
    )
    video.add_argument("--labels", metavar="FILE", help="also write the boxes as JSON lines")
    video.add_argument("--quiet", action="store_true", help="no progress")
    video.set_defaults(func=run_video)


def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a synthetic dataset goes, how many images, its seed and image size."""
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--train", type=int, required=True, metavar="N", help="training images")
    parser.add_argument("--val", type=int, required=True, metavar="M", help="validation images")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument(
        "--imgsz", type=int, default=320, help="image side in pixels (default: 320)"
    )


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    """How a synthetic dataset's files are written."""
    parser.add_argument(
        "--format",
        choices=("png", "jpg"),
        default="png",
        help="image file format (default: png, lossless)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing images and labels in DIR"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _dataset_settings(args: argparse.Namespace) -> dict:
    """The generator arguments of :func:`_dataset_arguments` and :func:`_output_arguments`."""
    return {
        "n_train": args.train,
        "n_val": args.val,
        "seed": args.seed,
        "imgsz": args.imgsz,
        "image_format": args.format,
        "overwrite": args.overwrite,
        "progress": not args.quiet,
    }


def run_digits(args: argparse.Namespace) -> int:
    """Generate the digits dataset and print a summary; returns the exit code."""
    from detector.data.synthetic import DIGIT_NAMES, SceneConfig, generate_yolo_dataset

    config = SceneConfig(min_objects=args.min_objects, max_objects=args.max_objects)
    try:
        summary = generate_yolo_dataset(args.out, config=config, **_dataset_settings(args))
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
        summary = generate_faces_dataset(args.out, config=config, **_dataset_settings(args))
    except (ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    lo, mid, hi = summary.face_sides
    print(f"wrote {summary.data_yaml} in {summary.seconds:.1f} s")
    for split, n_images in summary.images.items():
        print(f"  {split}: {n_images} images, {summary.faces[split]} faces")
    print(f"  visible landmarks: {100 * summary.visible_points:.1f} %")
    print(f"  face box height: min {lo:.0f} px, median {mid:.0f} px, max {hi:.0f} px")


def run_lfw_faces(args: argparse.Namespace) -> int:
    """Write the lfw-faces crops folder and say what was written; returns the exit code."""
    from detector.data.lfw_faces import generate_lfw_faces

    try:
        summary = generate_lfw_faces(
            args.out, seed=args.seed, copies=args.copies, overwrite=args.overwrite
        )
    except (ImportError, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"wrote {summary.root}: {summary.faces} face crops, {summary.crops} non-face crops "
        f"and {summary.scenes} face-free scenes in {summary.seconds:.1f} s"
    )
    return 0


def run_video(args: argparse.Namespace) -> int:
    """Write the moving-digits clip and say what was written; returns the exit code."""
    from detector.data.moving_digits import MovingDigitsConfig, write_moving_digits_video

    config = MovingDigitsConfig(num_digits=args.digits)
    try:
        clip = write_moving_digits_video(
            args.out,
            args.frames,
            (args.height, args.width),
            args.fps,
            seed=args.seed,
            config=config,
            codec=args.codec,
            split=args.split,
            labels_path=args.labels,
            progress=not args.quiet,
        )
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    height, width = clip.size
    digits = " ".join(str(c) for c in clip.classes) or "none"
    print(
        f"wrote {clip.video}: {clip.frames} frames, {width}x{height}, {clip.fps:g} fps, "
        f"digits {digits}, in {clip.seconds:.1f} s"
    )
    if clip.labels is not None:
        print(f"wrote {clip.labels}: the boxes of each frame (JSON lines)")
    return 0
