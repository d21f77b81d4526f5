"""``detector predict``: detect objects in image files; annotated images and JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

from detector.commands import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    HelpFormatter,
    add_backend_option,
    add_detect_options,
    detect_options,
)
from detector.settings import DEFAULT_OPTIONS, DetectOptions

if TYPE_CHECKING:
    import numpy as np

    from detector.predict import Detector
    from detector.settings import Detections

DEFAULT_BATCH = 8
DEFAULT_SAVE_DIR = "runs/predict"
STDOUT = "-"  # --json value meaning standard output
PROGRESS_MIN_IMAGES = 5  # a progress bar only for more images than this
FALLBACK_SUFFIX = ".png"  # annotated copy of an input whose suffix OpenCV cannot write

DESCRIPTION = """\
Detect objects in images. Writes one JSON line per image, in input order:

  {"image": "photos/a.jpg", "width": 640, "height": 480,
   "detections": [{"box": [x1, y1, x2, y2], "score": 0.91, "class_id": 3,
                   "label": "3"}, ...], "saved": "runs/predict/a.jpg"}

Boxes are xyxy pixels of the image; "landmarks": [[x, y], ...] is added per detection
when the model has landmarks; "saved" names the annotated copy (absent with --no-save).
The JSON lines go to standard output unless --json FILE is given, so that they can be
piped; progress and errors go to standard error.

IMAGES are image files, directories (their .jpg/.png/... files, not recursive) and glob
patterns (quote them; ** recurses). Annotated copies (boxes, labels, scores, landmarks
joined by the model's skeleton) are written to --save-dir under the input's file name;
existing files are replaced, and a second input with a name already used gets a numbered
name (a_2.jpg).

A file that cannot be read or decoded is reported on standard error and skipped.

Exit status: 0 every image was processed; 1 some input was missing, unreadable or not
an image (the others were processed) or none could be read; 2 usage error: a bad option,
a missing model, or no input image found at all (reported before the model loads);
130 interrupted.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict`` to the ``detector`` command."""
    parser = subparsers.add_parser(
        "predict",
        help="detect objects in images: annotated copies and JSON lines",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders, globs")
    parser.add_argument(
        "--weights", default="digits", metavar="NAME", help="shipped model name or model file"
    )
    parser.add_argument(
        "--save-dir", default=DEFAULT_SAVE_DIR, metavar="DIR", help="folder for annotated images"
    )
    parser.add_argument("--no-save", action="store_true", help="write no annotated images")
    parser.add_argument(
        "--json",
        default=STDOUT,
        metavar="FILE",
        help="JSON-lines output file ('-': standard output)",
    )
    add_detect_options(parser, DEFAULT_OPTIONS, per="image")
    parser.add_argument(
        "--classes",
        nargs="+",
        metavar="CLASS",
        help="keep only these classes (names or ids; put IMAGES first); default: all",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_backend_option(parser)
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, metavar="N", help="images per model call"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    parser.set_defaults(func=run)


def find_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Expand files, directories and glob patterns into image files.

    A named file is taken whatever its suffix; a directory gives its files with a suffix
    in ``IMAGE_SUFFIXES`` (sorted, not recursive); a pattern gives the files it matches
    (``**`` recurses). Duplicates are dropped, first occurrence kept.

    Returns:
        The files, and one message per input that gave none.
    """
    from detector.inputs import IMAGE_SUFFIXES, expand_inputs

    return expand_inputs(inputs, IMAGE_SUFFIXES, "image")


def read_image(path: Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    Grayscale is repeated to 3 channels, alpha dropped, 16-bit scaled to 8-bit.

    Raises:
        ValueError: the file cannot be read or is not a decodable image (says why).
    """
    import cv2
    import numpy as np

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if data.size == 0:
        raise ValueError(f"{path}: empty file")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ValueError(f"{path}: not a decodable image ({exc.err})") from exc
    if image is None:
        raise ValueError(f"{path}: not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image(path: Path, image: np.ndarray) -> None:
    """Write ``(H, W, 3)`` uint8 RGB to ``path`` in the format its suffix names."""
    import cv2

    ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode a {path.suffix} image")
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded.tofile(path)


def output_paths(sources: Sequence[Path], save_dir: Path) -> list[Path]:
    """One annotated-image path in ``save_dir`` per source, under the source's name.

    A name already given to an earlier source, or one that would overwrite the source
    itself, gets ``_2``, ``_3``, … before its suffix; a suffix OpenCV cannot write
    becomes ``FALLBACK_SUFFIX``.
    """
    from detector.inputs import IMAGE_SUFFIXES

    taken: set[str] = set()
    sources_resolved = {p.resolve() for p in sources}
    paths = []
    for source in sources:
        suffix = source.suffix if source.suffix.lower() in IMAGE_SUFFIXES else FALLBACK_SUFFIX
        candidate = save_dir / f"{source.stem}{suffix}"
        number = 1
        while candidate.name.lower() in taken or candidate.resolve() in sources_resolved:
            number += 1
            candidate = save_dir / f"{source.stem}_{number}{suffix}"
        taken.add(candidate.name.lower())
        paths.append(candidate)
    return paths


def image_record(source: Path, detections: Detections, saved: Path | None) -> dict:
    """The JSON line of one image (see the command's description)."""
    height, width = detections.image_size
    record = {
        "image": str(source),
        "width": width,
        "height": height,
        "detections": detections.to_dict()["detections"],
    }
    if saved is not None:
        record["saved"] = str(saved)
    return record


@contextmanager
def _open_json(target: str) -> Iterator[IO[str]]:
    if target == STDOUT:
        yield sys.stdout
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as stream:
        yield stream


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run(args: argparse.Namespace) -> int:
    """Detect in every image; returns the exit code (see the description)."""
    from detector.weights import resolve_model_path

    # Checks that need no model come first: a typo costs no torch import.
    options = detect_options(args)
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    sources, problems = find_images(args.images)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not sources:
        print("error: no images to process", file=sys.stderr)
        return EXIT_USAGE
    weights = resolve_model_path(args.weights)

    from detector.predict import Detector
    from detector.progress import progress
    from detector.settings import class_ids

    detector = Detector.load(weights, args.device, args.backend)
    class_ids(options.classes, detector.names)  # an unknown class fails before any work
    save_dir = None if args.no_save else Path(args.save_dir)
    targets = output_paths(sources, save_dir) if save_dir is not None else [None] * len(sources)
    show_progress = not args.quiet and len(sources) > PROGRESS_MIN_IMAGES
    processed = detections = 0
    with (
        _open_json(args.json) as stream,
        progress(total=len(sources), desc="predict", unit="image", enabled=show_progress) as bar,
    ):
        for batch in _batches(list(zip(sources, targets, strict=True)), args.batch):
            done = _predict_batch(detector, options, batch, stream)
            processed += len(done)
            detections += sum(len(d) for d in done)
            bar.update(len(batch))
    if not args.quiet:
        where = f"; annotated images in {save_dir}" if save_dir is not None else ""
        print(
            f"{processed} of {len(sources)} image(s), {detections} detection(s) "
            f"with {detector.name} on {detector.device}{where}",
            file=sys.stderr,
        )
    return EXIT_OK if processed == len(sources) and not problems else EXIT_FAILURE


def _predict_batch(
    detector: Detector,
    options: DetectOptions,
    batch: Sequence[tuple[Path, Path | None]],
    stream: IO[str],
) -> list[Detections]:
    """Read, detect, draw and write one batch; returns the detections of the images read."""
    from detector.draw import draw_detections
    from detector.progress import write_message

    items, images = [], []
    for source, target in batch:
        try:
            images.append(read_image(source))
        except ValueError as exc:
            write_message(f"error: {exc}")
            continue
        items.append((source, target))
    if not images:
        return []
    results = detector.detect(images, options)
    for (source, target), image, det in zip(items, images, results, strict=True):
        if target is not None:
            try:
                drawn = draw_detections(image, det, skeleton=detector.config.skeleton)
                write_image(target, drawn)
            except (OSError, ValueError) as exc:
                write_message(f"error: {target}: cannot write the annotated image: {exc}")
                target = None
        stream.write(json.dumps(image_record(source, det, target)) + "\n")
        stream.flush()
    return results
