"""Video files as a job list: find the inputs, name the outputs, decode, run one by one.

Inputs are files, directories (their video files, by suffix, sorted, not recursive) and
glob patterns. Outputs (see :func:`plan_jobs`): with one input, ``out`` may name the
output video itself; otherwise ``out`` is a folder that receives ``<input stem><suffix>``
(the suffix of the codec, e.g. ``.mp4`` for ``mp4v``) and ``<input stem>.jsonl`` per
input. The streaming pipeline itself is :func:`detector.video.process_frames`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detector.draw import draw_detections
from detector.inputs import VIDEO_SUFFIXES, find_videos  # noqa: F401  (find_videos: re-exported)
from detector.video import (
    CODEC_SUFFIXES,
    DetectError,
    DetectFn,
    DrawFn,
    FrameCallback,
    VideoOptions,
    VideoResult,
    process_frames,
)

JSONL_SUFFIX = ".jsonl"
FALLBACK_FPS = 25.0  # frame rate assumed when a container does not state one
UNKNOWN_COUNT = -1


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself."""

    width: int  # pixels, of the first decoded frame
    height: int
    fps: float  # frames per second; FALLBACK_FPS when the container has none
    frame_count: int  # the container's count, or UNKNOWN_COUNT (decoding decides)


@dataclass(frozen=True)
class VideoJob:
    """One input video and where its outputs go."""

    source: Path
    video: Path  # annotated video
    jsonl: Path  # one JSON line per frame


def plan_jobs(
    sources: Sequence[Path], out: str | Path, jsonl: str | Path | None = None, codec: str = "mp4v"
) -> list[VideoJob]:
    """Name the outputs of each input.

    With exactly one input and an ``out`` ending in a video suffix, ``out`` is the output
    video and the JSON lines go to ``jsonl`` (default: ``out`` with ``.jsonl``). Otherwise
    ``out`` is a folder (created when needed) holding ``<stem><codec suffix>`` and
    ``<stem>.jsonl`` per input; ``jsonl`` may then be given only for a single input.

    Raises:
        ValueError: no inputs, two inputs with the same stem, ``jsonl`` with several
            inputs, ``out`` an existing file where a folder is needed, or an output that
            would overwrite an input.
    """
    if codec not in CODEC_SUFFIXES:
        raise ValueError(f"codec must be one of {list(CODEC_SUFFIXES)}, got {codec!r}")
    if not sources:
        raise ValueError("no input videos to process")
    out = Path(out)
    if len(sources) == 1 and out.suffix.lower() in VIDEO_SUFFIXES:
        jobs = [VideoJob(sources[0], out, Path(jsonl) if jsonl else out.with_suffix(JSONL_SUFFIX))]
    else:
        if jsonl is not None and len(sources) > 1:
            raise ValueError(
                f"--jsonl names one file, but there are {len(sources)} inputs; "
                "their JSON lines go next to each output video in the -o folder"
            )
        if out.is_file():
            raise ValueError(
                f"-o {out} is an existing file; with {len(sources)} input(s) it must be a "
                f"folder (or, for one input, a video path ending in one of {VIDEO_SUFFIXES})"
            )
        stems: dict[str, Path] = {}
        for source in sources:
            if source.stem in stems:
                raise ValueError(
                    f"{stems[source.stem]} and {source} would both write {out / source.stem}.*; "
                    "process them in separate runs or rename one"
                )
            stems[source.stem] = source
        jobs = [
            VideoJob(
                s,
                out / f"{s.stem}{CODEC_SUFFIXES[codec]}",
                Path(jsonl) if jsonl else out / f"{s.stem}{JSONL_SUFFIX}",
            )
            for s in sources
        ]
    inputs = {s.resolve() for s in sources}
    for job in jobs:
        for target in (job.video, job.jsonl):
            if target.resolve() in inputs:
                raise ValueError(f"output {target} would overwrite an input video")
        if job.video.resolve() == job.jsonl.resolve():
            raise ValueError(f"the video and the JSON lines would both be written to {job.video}")
    return jobs


def probe_video(path: str | Path) -> VideoInfo:
    """Open a video and decode its first frame.

    Raises:
        FileNotFoundError: no such file.
        ValueError: OpenCV cannot open it or decode a first frame.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file {str(path)!r}")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"{path}: not a video OpenCV can open (corrupt or unknown format)")
        ok, frame = capture.read()
        if not ok or frame is None:
            raise ValueError(f"{path}: no frame could be decoded (corrupt or empty video)")
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    fps = float(fps) if np.isfinite(fps) and fps > 0 else FALLBACK_FPS
    return VideoInfo(frame.shape[1], frame.shape[0], fps, count if count > 0 else UNKNOWN_COUNT)


def read_video(path: str | Path) -> Iterator[np.ndarray]:
    """Decode a video lazily: ``(H, W, 3)`` uint8 RGB frames, until the first that fails."""
    capture = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def process_video(
    job: VideoJob,
    detect_fn: DetectFn,
    options: VideoOptions | None = None,
    on_frame: FrameCallback | None = None,
    draw_fn: DrawFn = draw_detections,
) -> VideoResult:
    """Annotate one video file and write its JSON lines (see :mod:`detector.video`);
    ``draw_fn`` draws each frame's detections (e.g. :func:`detector.video.skeleton_draw_fn`).

    Raises:
        FileNotFoundError, ValueError: the input cannot be read, or an output not written.
        DetectError: ``detect_fn`` could not answer.
        VideoInterrupted: on Ctrl-C, after closing valid outputs.
    """
    info = probe_video(job.source)
    return process_frames(
        read_video(job.source),
        (info.height, info.width),
        info.fps,
        detect_fn,
        job.video,
        job.jsonl,
        options or VideoOptions(),
        name=str(job.source),
        total=info.frame_count if info.frame_count > 0 else None,
        on_frame=on_frame,
        draw_fn=draw_fn,
    )


def process_videos(
    jobs: Sequence[VideoJob],
    detect_fn: DetectFn,
    options: VideoOptions | None = None,
    draw_fn: DrawFn = draw_detections,
) -> Iterator[VideoResult]:
    """Process videos one after another (each as :func:`process_video`), yielding a result
    as each finishes.

    A file that cannot be read (missing, corrupt, undecodable) or written, or a
    ``detect_fn`` that raises :class:`~detector.video.DetectError`, yields a result with
    ``error`` set, and the next one runs (the outputs hold the frames written before the
    failure). :class:`~detector.video.VideoInterrupted` ends the job list.
    """
    for job in jobs:
        start = time.perf_counter()
        try:
            result = process_video(job, detect_fn, options, draw_fn=draw_fn)
        except DetectError as exc:
            result = _failed(job, start, f"{job.source}: {exc}")
        except (FileNotFoundError, ValueError, OSError) as exc:
            result = _failed(job, start, str(exc))
        yield result


def _failed(job: VideoJob, start: float, error: str) -> VideoResult:
    """The result of a job that stopped with ``error``; ``start`` is its perf_counter."""
    return VideoResult(str(job.source), None, None, 0, 0, time.perf_counter() - start, error)
