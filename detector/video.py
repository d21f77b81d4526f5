"""Video through the detector: decode → batch → detect → draw → encode, pipelined.

Three threads share the work of one video (:func:`process_frames`):

* a **reader** pulls decoded frames (from :func:`detector.video_jobs.read_video` or any
  iterable of RGB frames) into a bounded queue;
* the calling thread takes frames in batches and runs ``detect_fn`` on them (a local
  :class:`~detector.predict.Detector` by default, or anything else with the same
  signature, such as a remote service);
* a **writer** draws the detections, encodes the frame (RGB → BGR) and appends one JSON
  line per frame.

Both queues are bounded, so the memory held is a fixed number of frames however long
the video is.

Outputs: an annotated video with the input's frame count, size and frame rate, and a
JSON-lines file with one record per frame, in frame order::

    {"index": 0, "timestamp": 0.0, "source": "model", "detected_index": 0,
     "image_size": [h, w], "detections": [{"box": [x1, y1, x2, y2], "score": ...,
     "class_id": ..., "label": ...}, ...]}

``timestamp`` is ``index / fps`` in seconds (the container's nominal frame rate). With a
landmark model each detection also has ``"landmarks": [[x, y], ...]`` (K points, frame
pixels; see :meth:`~detector.settings.Detections.to_dict`), drawn joined by the model's
skeleton when the ``draw_fn`` is :func:`skeleton_draw_fn`'s.

**Stride.** With ``stride = K`` the detector runs on frames ``0, K, 2K, ...`` only
(``"source": "model"``). Every other frame *carries* the detections of the most recent
detected frame before it, unchanged: the same boxes are drawn on it and written to its
record with ``"source": "carried"`` and ``"detected_index"`` naming the frame they were
found on. Boxes are not moved to follow the objects.

**Interrupts.** A ``KeyboardInterrupt`` (Ctrl-C) stops the reader, lets the writer finish
every frame whose detections are known, closes the video (so it plays) and the JSON
lines (so every line parses), then raises :class:`VideoInterrupted`, a
``KeyboardInterrupt`` that carries the :class:`VideoResult` of what was written.

Finding input files, naming outputs and running a job list: :mod:`detector.video_jobs`.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import cv2
import numpy as np

from detector.draw import draw_detections
from detector.progress import ProgressBar, progress
from detector.settings import DEFAULT_OPTIONS, Detections, DetectOptions

if TYPE_CHECKING:
    from detector.predict import Detector

DetectFn = Callable[[list[np.ndarray]], list[Detections]]  # (H, W, 3) RGB frames → detections
DrawFn = Callable[[np.ndarray, Detections], np.ndarray]  # frame, detections → new frame
FrameCallback = Callable[[int], None]  # called with each frame index once it is written

CODEC_SUFFIXES: dict[str, str] = {"mp4v": ".mp4", "MJPG": ".avi", "XVID": ".avi"}
POLL_SECONDS = 0.1  # how often a thread blocked on a queue checks whether to stop
PIPELINE_THREADS = 2  # the reader and the writer, besides the thread running the model
TIMESTAMP_DECIMALS = 6


@dataclass(frozen=True)
class VideoOptions:
    """How videos are processed (thresholds belong to ``detect_fn``)."""

    batch_size: int = 8  # frames per detect_fn call
    stride: int = 1  # run the detector on every stride-th frame; the others carry (see above)
    queue_frames: int = 32  # decoded frames buffered ahead of the model, and behind it
    max_pending_frames: int = 64  # frames held while a batch fills (caps batch_size x stride)
    codec: str = "mp4v"  # FourCC of the output video, a key of CODEC_SUFFIXES
    progress: bool = True  # a progress bar per video, in frames/s (detector.progress)

    def __post_init__(self) -> None:
        for name in ("batch_size", "stride", "queue_frames", "max_pending_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.codec not in CODEC_SUFFIXES:
            raise ValueError(f"codec must be one of {list(CODEC_SUFFIXES)}, got {self.codec!r}")


@dataclass(frozen=True)
class VideoResult:
    """What processing one video produced."""

    source: str  # the input, as named to the user
    video: Path | None
    jsonl: Path | None
    frames: int  # frames written to both outputs
    detected: int  # frames the detector ran on
    seconds: float  # wall-clock time
    error: str | None = None  # why the input was skipped, if it was

    @property
    def fps(self) -> float:
        """Frames written per second of wall-clock time."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class DetectError(RuntimeError):
    """A ``detect_fn`` could not answer (a remote detector failed, say): the video being
    processed fails, and a job list goes on with the next one."""


class VideoInterrupted(KeyboardInterrupt):
    """Ctrl-C during a video; ``result`` describes the valid outputs written so far."""

    def __init__(self, result: VideoResult):
        super().__init__(f"interrupted after {result.frames} frames of {result.source}")
        self.result = result


def skeleton_draw_fn(skeleton: Sequence[tuple[int, int]] = ()) -> DrawFn:
    """:func:`~detector.draw.draw_detections` joining landmarks by ``skeleton`` (pairs of
    landmark indices, e.g. a model's ``ModelConfig.skeleton``); plain without one."""
    if not skeleton:
        return draw_detections
    return functools.partial(draw_detections, skeleton=tuple(skeleton))


def local_detect_fn(detector: Detector, options: DetectOptions = DEFAULT_OPTIONS) -> DetectFn:
    """A :data:`DetectFn` running ``detector`` in this process, one batch per call."""

    def detect(frames: list[np.ndarray]) -> list[Detections]:
        return detector.detect(frames, options)

    return detect


def model_threads(cpus: int | None = None) -> int:
    """CPU threads to give a model running on the CPU: all cores but one each for the
    reader and the writer, at least one. ``cpus`` defaults to the cores this process may
    use. (On a small CPU, a torch thread pool that competes with the pipeline's threads
    spins and stalls; see bench/README.md.)"""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) - PIPELINE_THREADS)


def process_frames(
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    fps: float,
    detect_fn: DetectFn,
    video_path: str | Path,
    jsonl_path: str | Path,
    options: VideoOptions = VideoOptions(),
    name: str = "frames",
    total: int | None = None,
    on_frame: FrameCallback | None = None,
    draw_fn: DrawFn = draw_detections,
) -> VideoResult:
    """Detect, draw and encode a stream of frames (see the module docstring).

    Args:
        frames: ``(height, width, 3)`` uint8 RGB frames, consumed once in a reader
            thread (a generator is fine; it is closed when processing stops).
        size: ``(height, width)`` of every frame and of the output video.
        fps: frame rate of the output video and of the timestamps.
        detect_fn: detections for a list of frames, one per frame, in frame pixels.
        video_path, jsonl_path: the outputs, replaced if they exist.
        name: the input as shown in the progress bar and in messages.
        total: frames expected, for the progress bar; ``None`` when unknown.
        on_frame: called from the writer thread with each index once written.
        draw_fn: draws one frame's detections on a copy of it.

    Raises:
        ValueError: a frame of another size or type, an unwritable codec, or a
            ``detect_fn`` that returned the wrong number of results.
        DetectError: ``detect_fn`` could not answer.
        VideoInterrupted: on Ctrl-C, after closing valid outputs.
    """
    height, width = size
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    video_path, jsonl_path = Path(video_path), Path(jsonl_path)
    for path in (video_path, jsonl_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*options.codec)
    encoder = cv2.VideoWriter(str(video_path), fourcc, fps, (width, height))
    if not encoder.isOpened():
        raise ValueError(
            f"{video_path}: OpenCV cannot write codec {options.codec!r} to this file type "
            f"(codecs: {', '.join(f'{c} in {s}' for c, s in CODEC_SUFFIXES.items())})"
        )
    start = time.perf_counter()
    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(maxsize=options.queue_frames)
    ready: queue.Queue = queue.Queue(maxsize=options.queue_frames)
    bar = progress(total=total, desc=name, unit="frame", enabled=options.progress)
    detected, interrupted, carry = 0, False, _Carry()
    try:
        with jsonl_path.open("w", encoding="utf-8", buffering=1) as jsonl:  # line by line
            writer = _Writer(ready, encoder, jsonl, draw_fn, size, fps, name, bar, on_frame)
            reader = threading.Thread(target=_read, args=(frames, decoded, stop), daemon=True)
            writer.thread.start()
            reader.start()
            try:
                for chunk in _chunks(decoded, options, reader, writer):
                    detected += _detect_chunk(
                        chunk, detect_fn, options.stride, ready, writer, name, carry
                    )
            except KeyboardInterrupt:
                interrupted = True
            finally:
                stop.set()
                _finish(ready, writer)
                reader.join()
    finally:
        encoder.release()
        bar.close()
    if writer.error is not None:
        raise writer.error
    result = VideoResult(
        name, video_path, jsonl_path, writer.written, detected, time.perf_counter() - start
    )
    if interrupted:
        raise VideoInterrupted(result)
    return result


_END = object()  # end of a queue's stream


@dataclass(frozen=True)
class _Failure:
    """An exception raised in the reader, passed on to the calling thread."""

    error: BaseException


@dataclass(frozen=True)
class _Annotated:
    """One frame ready for the writer."""

    index: int
    frame: np.ndarray  # (H, W, 3) uint8 RGB
    detections: Detections
    detected_index: int  # the frame the detections were found on


class _Writer:
    """The writer thread: draws, encodes and records frames in the order they arrive."""

    def __init__(
        self,
        items: queue.Queue,
        encoder: cv2.VideoWriter,
        jsonl: TextIO,
        draw_fn: DrawFn,
        size: tuple[int, int],
        fps: float,
        name: str,
        bar: ProgressBar,
        on_frame: FrameCallback | None,
    ):
        self.items, self.encoder, self.jsonl, self.draw_fn = items, encoder, jsonl, draw_fn
        self.size, self.fps, self.name, self.bar, self.on_frame = size, fps, name, bar, on_frame
        self.written = 0  # frames in both outputs
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def check_alive(self) -> None:
        """Raise the writer's error (or a ``RuntimeError``) if its thread has ended."""
        if not self.thread.is_alive():
            raise self.error or RuntimeError("the video writer thread stopped")

    def _run(self) -> None:
        last: tuple[Detections | None, dict[str, Any]] = (None, {})
        try:
            while (item := self.items.get()) is not _END:
                if item.detections is not last[0]:  # carried frames reuse the record
                    last = (item.detections, item.detections.to_dict())
                self._check(item)
                image = self.draw_fn(item.frame, item.detections)
                self.encoder.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                source = "model" if item.index == item.detected_index else "carried"
                record = {
                    "index": item.index,
                    "timestamp": round(item.index / self.fps, TIMESTAMP_DECIMALS),
                    "source": source,
                    "detected_index": item.detected_index,
                    **last[1],
                }
                self.jsonl.write(json.dumps(record) + "\n")
                self.written += 1
                self.bar.update(1)
                if self.on_frame is not None:
                    self.on_frame(item.index)
        except BaseException as exc:  # handed to the calling thread
            self.error = exc
        finally:
            self.jsonl.flush()

    def _check(self, item: _Annotated) -> None:
        frame = item.frame
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3:
            raise ValueError(f"{self.name}: frame {item.index} is not an (H, W, 3) uint8 array")
        if frame.shape != (*self.size, 3):
            raise ValueError(
                f"{self.name}: frame {item.index} is {frame.shape[1]}x{frame.shape[0]}, "
                f"the video is {self.size[1]}x{self.size[0]}"
            )


def _read(frames: Iterable[np.ndarray], out: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: move frames into ``out`` until they end or ``stop`` is set."""
    iterator = iter(frames)
    try:
        for frame in iterator:
            if not _offer(out, frame, stop):
                return
        _offer(out, _END, stop)
    except Exception as exc:  # handed to the calling thread
        _offer(out, _Failure(exc), stop)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _offer(out: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; ``True`` when it was put."""
    while not stop.is_set():
        try:
            out.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _put(out: queue.Queue, item: object, writer: _Writer) -> None:
    """Put ``item`` for the writer; raise its error if it stopped."""
    while True:
        writer.check_alive()
        try:
            out.put(item, timeout=POLL_SECONDS)
            return
        except queue.Full:
            continue


def _finish(ready: queue.Queue, writer: _Writer) -> None:
    """Let the writer drain what is queued, then wait for it to end."""
    while writer.thread.is_alive():
        try:
            ready.put(_END, timeout=POLL_SECONDS)
            break
        except queue.Full:
            continue
    writer.thread.join()


def _chunks(
    decoded: queue.Queue, options: VideoOptions, reader: threading.Thread, writer: _Writer
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Group ``(index, frame)`` pairs into chunks of at most ``batch_size`` detector frames.

    A chunk ends after the last carried frame of its ``batch_size``-th detector frame, or
    when it holds ``max(batch_size, max_pending_frames)`` frames.
    """
    stride = options.stride
    cap = max(options.batch_size, options.max_pending_frames)
    chunk: list[tuple[int, np.ndarray]] = []
    model_frames, index = 0, 0
    while True:
        try:
            item = decoded.get(timeout=POLL_SECONDS)
        except queue.Empty:
            writer.check_alive()
            if not reader.is_alive() and decoded.empty():
                raise RuntimeError("the video reader thread stopped without an end") from None
            continue
        if item is _END:
            break
        if isinstance(item, _Failure):
            raise item.error
        chunk.append((index, item))
        model_frames += index % stride == 0
        index += 1
        batch_done = model_frames == options.batch_size and index % stride == 0
        if batch_done or len(chunk) >= cap:
            yield chunk
            chunk, model_frames = [], 0
    if chunk:
        yield chunk


@dataclass
class _Carry:
    """The detections carried to frames the detector skips: the last detected frame's."""

    detections: Detections | None = None
    index: int = -1  # the frame they were found on


def _detect_chunk(
    chunk: list[tuple[int, np.ndarray]],
    detect_fn: DetectFn,
    stride: int,
    ready: queue.Queue,
    writer: _Writer,
    name: str,
    carry: _Carry,
) -> int:
    """Run ``detect_fn`` on the chunk's detector frames, queue all its frames; returns the
    number of frames detected."""
    targets = [frame for index, frame in chunk if index % stride == 0]
    found = detect_fn(targets) if targets else []
    if len(found) != len(targets):
        raise ValueError(
            f"{name}: the detector returned {len(found)} results for {len(targets)} frames"
        )
    results = iter(found)
    for index, frame in chunk:
        if index % stride == 0:
            carry.detections, carry.index = next(results), index
        assert carry.detections is not None, "frame 0 is always detected"
        _put(ready, _Annotated(index, frame, carry.detections, carry.index), writer)
    return len(targets)
