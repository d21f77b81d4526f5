"""``detector video``: annotate video files and write one JSON line per frame."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from detector.commands import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    HelpFormatter,
    add_backend_option,
    add_detect_options,
    detect_options,
)
from detector.commands.client import add_connection_arguments, connection_options
from detector.settings import DEFAULT_OPTIONS, DetectOptions

if TYPE_CHECKING:
    import numpy as np

    from detector.settings import Detections
    from detector.video import DetectFn, DrawFn, VideoOptions
    from detector.video_jobs import VideoJob
    from server.client import DetectorClient
    from server.convert import ModelInfo

# The library's defaults (detector.video.VideoOptions, CODEC_SUFFIXES), repeated here so
# that --help does not import OpenCV; tests check they agree.
DEFAULT_BATCH = 8
DEFAULT_QUEUE = 32
DEFAULT_CODEC = "mp4v"
CODECS = ("mp4v", "MJPG", "XVID")
DEFAULT_TIMEOUT_S = 30.0  # with --server: seconds one batch's StreamDetect call may take
CONNECT_TIMEOUT_S = 5.0  # with --server: seconds to wait for the server to accept a connection
MAX_PORT = 65535

DESCRIPTION = """\
Run the detector over video files. For each input, write an annotated video with the
same frame count, frame size and frame rate, and a JSON-lines file with one record per
frame, in order:

  {"index": 0, "timestamp": 0.0, "source": "model", "detected_index": 0,
   "image_size": [h, w], "detections": [{"box": [x1, y1, x2, y2], "score": 0.91,
   "class_id": 3, "label": "3"}, ...]}

Boxes are xyxy pixels of the frame; timestamp is index / fps in seconds. With a
landmark model each detection also has "landmarks": [[x, y], ...] (its K points, frame
pixels), drawn on the video joined by the model's skeleton.

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

--server HOST:PORT sends the frames to a detector server ('detector serve') instead of
loading a model here: each batch of --batch frames goes through one StreamDetect call
(a stream per batch, answers in frame order), with --conf, --iou and --max-det, to the
served model --model (default: the server's default). --weights, --device and --threads
are then ignored. A server that does not answer within a few seconds, or that does not
serve --model, stops the run before any input; a call that fails later (the server went
away, --timeout passed) fails that input, reported, and the next one runs.

Decoding, the model and drawing + encoding run in three threads joined by bounded
queues, so memory stays flat however long the video is. Ctrl-C stops cleanly: the video
and the JSON lines are closed and valid up to the last written frame.

Exit status: 0 all inputs done, 1 some inputs failed or the server could not be used,
2 usage error, 130 interrupted.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``video`` to the ``detector`` command."""
    parser = subparsers.add_parser(
        "video",
        help="annotate videos and write one JSON line per frame",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
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
        "--weights",
        default="digits",
        metavar="NAME",
        help="shipped model name or model file (ignored with --server)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (ignored with --server)"
    )
    add_backend_option(parser)
    parser.add_argument(
        "--server",
        type=server_address,
        metavar="HOST:PORT",
        help="detect on this detector server through StreamDetect, one call per batch, "
        "instead of loading a model here (see above)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="with --server: the served model to use (default: the server's default)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="with --server: seconds each batch's call may take",
    )
    add_connection_arguments(parser)  # with --server: TLS and token
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
    add_detect_options(parser, DEFAULT_OPTIONS, per="frame")
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
        "that decode and encode, at least 1; ignored with --server)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def server_address(text: str) -> str:
    """``HOST:PORT`` (an IPv6 host in brackets), checked; for argparse ``type=``."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


@contextlib.contextmanager
def open_detect_fn(args: argparse.Namespace) -> Iterator[tuple[DetectFn, str, DrawFn]]:
    """The batch detector the videos go through, a name for it, and how frames are drawn
    (with the model's landmark skeleton): a local model, or the model of ``--server``
    (whose connection is closed on exit).

    Raises:
        ValueError: bad options.
        DetectError: the server cannot be reached or does not serve ``--model``.
    """
    from detector.video import skeleton_draw_fn

    if args.server is None:
        if args.model is not None:
            raise ValueError("--model names a served model and needs --server; use --weights")
        detect_fn, name, skeleton = build_detect_fn(args)
        yield detect_fn, name, skeleton_draw_fn(skeleton)
        return
    from server.client import DetectorClient

    if not args.timeout > 0:
        raise ValueError(f"--timeout must be > 0, got {args.timeout}")
    model = args.model or ""
    connection = connection_options(args)
    with DetectorClient(args.server, timeout=args.timeout, **connection) as client:
        detect_fn = remote_detect_fn(client, model, detect_options(args), timeout=args.timeout)
        info = served_model_info(client, model)
        draw_fn = skeleton_draw_fn(info.skeleton)
        yield detect_fn, f"model {info.name} on server {args.server}", draw_fn


def build_detect_fn(
    args: argparse.Namespace,
) -> tuple[DetectFn, str, tuple[tuple[int, int], ...]]:
    """The batch detector the videos go through, a name for it, and the model's landmark
    skeleton: a local model."""
    import torch

    from detector.predict import Detector
    from detector.video import local_detect_fn, model_threads

    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    detector = Detector.load(args.weights, args.device, args.backend)
    detect_fn = local_detect_fn(detector, detect_options(args))
    where = str(detector.device)
    if detector.device.type == "cpu":
        torch.set_num_threads(args.threads or model_threads())
        where = f"cpu ({torch.get_num_threads()} threads)"
    return detect_fn, f"model {detector.name} on {where}", detector.config.skeleton


def served_model(client: DetectorClient, model: str = "") -> str:
    """Wait up to ``CONNECT_TIMEOUT_S`` for the server; the name of ``model`` there
    (``""``: its default).

    Raises:
        DetectError: no server answers, or it does not serve ``model``.
    """
    return served_model_info(client, model).name


def served_model_info(client: DetectorClient, model: str = "") -> ModelInfo:
    """As :func:`served_model`, but what ``ListModels`` says of the model (its name,
    classes, landmark names and skeleton...)."""
    from detector.video import DetectError
    from server.client import RemoteError

    try:
        client.wait_ready(CONNECT_TIMEOUT_S)
        models = client.list_models()
    except RemoteError as err:
        raise DetectError(f"server {client.address}: {err}") from err
    names = [m.name for m in models]
    name = model or next((m.name for m in models if m.is_default), "")
    if name not in names:
        missing = f"no model {model!r}" if model else "no default model"
        raise DetectError(f"server {client.address} has {missing}; it serves {names}")
    return models[names.index(name)]


def remote_detect_fn(
    client: DetectorClient,
    model: str = "",
    options: DetectOptions = DEFAULT_OPTIONS,
    timeout: float | None = DEFAULT_TIMEOUT_S,
) -> DetectFn:
    """A :data:`~detector.video.DetectFn` that sends each batch of frames through one
    ``StreamDetect`` call of ``client`` (``timeout`` seconds at most) to ``model``
    (``""``: the server's default). A failed call raises
    :class:`~detector.video.DetectError`.
    """
    from detector.video import DetectError
    from server.client import RemoteError

    def detect(frames: list[np.ndarray]) -> list[Detections]:
        stream = client.stream_detect(
            iter(frames),
            model=model,
            score_threshold=options.score_threshold,
            iou_threshold=options.iou_threshold,
            max_detections=options.max_detections,
            classes=options.classes,
            merge_iou=options.merge_iou,
            timeout=timeout,
        )
        try:
            return list(stream)
        except RemoteError as err:
            raise DetectError(f"server {client.address}: {err}") from err

    return detect


def run(args: argparse.Namespace) -> int:
    """Process every input; returns the exit code (see the description)."""
    from detector.inputs import find_videos
    from detector.weights import resolve_model_path

    # Checks that need no model come first: a typo costs no torch import.
    sources, problems = find_videos(args.inputs)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not sources:
        raise ValueError("no input videos found")
    if args.server is None:
        resolve_model_path(args.weights)

    from detector.video import DetectError, VideoOptions
    from detector.video_jobs import plan_jobs

    options = VideoOptions(
        batch_size=args.batch,
        stride=args.stride,
        queue_frames=args.queue,
        codec=args.codec,
        progress=not args.quiet,
    )
    jobs = plan_jobs(sources, args.output, args.jsonl, args.codec)
    try:
        with open_detect_fn(args) as (detect_fn, backend, draw_fn):
            print(f"{len(jobs)} video(s) through {backend}", file=sys.stderr)
            return run_jobs(jobs, detect_fn, options, failed=len(problems), draw_fn=draw_fn)
    except DetectError as err:  # the detector could not be set up: no input ran
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE


def run_jobs(
    jobs: list[VideoJob],
    detect_fn: DetectFn,
    options: VideoOptions,
    failed: int = 0,
    draw_fn: DrawFn | None = None,
) -> int:
    """Process the jobs, reporting each; returns the exit code. ``failed``: inputs that
    already failed; ``draw_fn``: how frames are drawn (default: boxes and points)."""
    from detector.video import VideoInterrupted, skeleton_draw_fn
    from detector.video_jobs import process_videos

    try:
        for result in process_videos(jobs, detect_fn, options, draw_fn or skeleton_draw_fn()):
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
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if failed else EXIT_OK
