"""``detector video``: annotate video files and write one JSON line per frame."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detector.video import DetectFn

# The library's defaults (detector.video.VideoOptions, CODEC_SUFFIXES, and the detector's
# thresholds), repeated here so that --help does not import torch; tests check they agree.
DEFAULT_BATCH = 8
DEFAULT_QUEUE = 32
DEFAULT_CODEC = "mp4v"
CODECS = ("mp4v", "MJPG", "XVID")
DEFAULT_CONF = 0.25
DEFAULT_IOU = 0.45
DEFAULT_MAX_DET = 300

DESCRIPTION = """\
Run the detector over video files. For each input, write an annotated video with the
same frame count, frame size and frame rate, and a JSON-lines file with one record per
frame, in order:

  {"index": 0, "timestamp": 0.0, "source": "model", "detected_index": 0,
   "image_size": [h, w], "detections": [{"box": [x1, y1, x2, y2], "score": 0.91,
   "class_id": 3, "label": "3"}, ...]}

Boxes are xyxy pixels of the frame; timestamp is index / fps in seconds.

INPUTS are video files, directories (their .mp4/.avi/.mov/.mkv/... files, not
recursive) and glob patterns (quote them; ** recurses). A file that cannot be read is
reported and the others still run.

Outputs (-o): with exactly one input, -o may be the output video itself (a path ending
in a video suffix such as out.mp4); its JSON lines go to --jsonl, by default the same
path with .jsonl. Otherwise -o is a folder that receives, per input, <name><suffix>
(.mp4 for mp4v, .avi for MJPG and XVID) and <name>.jsonl. Existing outputs are replaced.

--stride K runs the model on frames 0, K, 2K, ... only. The frames in between carry the
detections of the last detected frame before them, unchanged (boxes are not moved):
they are drawn the same and their records say "source": "carried" with
"detected_index" naming the frame the boxes were found on.

Decoding, the model and drawing + encoding run in three threads joined by bounded
queues, so memory stays flat however long the video is. Ctrl-C stops cleanly: the video
and the JSON lines are closed and valid up to the last written frame.

Exit status: 0 all inputs done, 1 some inputs failed, 2 usage error, 130 interrupted.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's layout and show each option's default, when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``video`` to the ``detector`` command."""
    parser = subparsers.add_parser(
        "video",
        help="annotate videos and write one JSON line per frame",
        description=DESCRIPTION,
        formatter_class=_Formatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders, globs")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output folder; or, for one input, the output video path (see above)",
    )
    parser.add_argument(
        "--jsonl", metavar="FILE", help="JSON-lines path (one input only; default: beside -o)"
    )
    parser.add_argument(
        "--weights", default="digits", metavar="NAME", help="shipped model name or model file"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, metavar="N", help="frames per model call"
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=1,
        metavar="K",
        help="run the model on every K-th frame; the others carry its detections",
    )
    parser.add_argument("--conf", type=float, default=DEFAULT_CONF, help="score threshold")
    parser.add_argument("--iou", type=float, default=DEFAULT_IOU, help="NMS IoU threshold")
    parser.add_argument(
        "--max-det", type=int, default=DEFAULT_MAX_DET, help="most detections per frame"
    )
    parser.add_argument("--codec", default=DEFAULT_CODEC, choices=CODECS, help="output FourCC")
    parser.add_argument(
        "--queue",
        type=int,
        default=DEFAULT_QUEUE,
        metavar="N",
        help="frames buffered before and after the model (memory vs. smoothing)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="torch threads when the model runs on the CPU (0: all cores but the two "
        "that decode and encode, at least 1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def build_detect_fn(args: argparse.Namespace) -> tuple[DetectFn, str]:
    """The batch detector the videos go through, and a name for it: a local model."""
    import torch

    from detector.predict import Detector
    from detector.video import local_detect_fn, model_threads

    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    detector = Detector.load(args.weights, args.device)
    detect_fn = local_detect_fn(detector, args.conf, args.iou, args.max_det)
    where = str(detector.device)
    if detector.device.type == "cpu":
        torch.set_num_threads(args.threads or model_threads())
        where = f"cpu ({torch.get_num_threads()} threads)"
    return detect_fn, f"model {detector.name} on {where}"


def run(args: argparse.Namespace) -> int:
    """Process every input; returns the exit code (see the description)."""
    from detector.video import VideoInterrupted, VideoOptions
    from detector.video_jobs import find_videos, plan_jobs, process_videos

    options = VideoOptions(
        batch_size=args.batch,
        stride=args.stride,
        queue_frames=args.queue,
        codec=args.codec,
        progress=not args.quiet,
    )
    sources, problems = find_videos(args.inputs)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not sources:
        raise ValueError("no input videos found")
    jobs = plan_jobs(sources, args.output, args.jsonl, args.codec)
    detect_fn, backend = build_detect_fn(args)
    print(f"{len(jobs)} video(s) through {backend}", file=sys.stderr)
    failed = len(problems)
    try:
        for result in process_videos(jobs, detect_fn, options):
            if result.error is not None:
                print(f"error: {result.error}", file=sys.stderr)
                failed += 1
                continue
            print(
                f"{result.source}: {result.frames} frames ({result.detected} through the "
                f"model) in {result.seconds:.1f} s, {result.fps:.1f} frames/s -> "
                f"{result.video}, {result.jsonl}"
            )
    except VideoInterrupted as stop:
        partial = stop.result
        print(
            f"interrupted: {partial.source}: {partial.frames} frames written to "
            f"{partial.video} and {partial.jsonl}; later inputs were not processed",
            file=sys.stderr,
        )
        return 130
    return 1 if failed else 0
