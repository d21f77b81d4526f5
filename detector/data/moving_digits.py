"""Synthetic video: handwritten digits gliding over a still background, with exact boxes.

Each clip draws a fixed set of digits (glyphs of a :class:`DigitSource`) on one static
background. Every digit moves at a constant velocity and bounces off the frame edges, so
it always lies wholly inside the frame. Digits may pass over one another; a digit's box is
the tight box of its own ink (see :func:`detector.data.synthetic.draw_digit`), whether or
not a later digit covers part of it.

Used by the video tests and the video benchmark; frames come one at a time from a
generator, so a clip of any length takes the memory of one frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detector.data.synthetic import DigitSource, draw_digit, render_background

COLOUR_CANDIDATES = 16  # random ink colours tried per digit; the farthest from the background wins
BOX_DECIMALS = 2  # pixels in the ground-truth JSON lines


@dataclass(frozen=True)
class MovingDigitsConfig:
    """How a clip is composed. Sizes and speeds are fractions of the frame's shorter side."""

    num_digits: int = 3  # digits in every frame
    min_size: float = 0.2  # glyph cell height, uniform in [min_size, max_size]
    max_size: float = 0.35
    aspect: float = 1.0  # cell width / cell height (as the training scenes, on average)
    min_speed: float = 0.005  # per-frame displacement, uniform in [min_speed, max_speed]
    max_speed: float = 0.02

    def __post_init__(self) -> None:
        if self.num_digits < 0:
            raise ValueError(f"num_digits must be >= 0, got {self.num_digits}")
        if not 0 < self.min_size <= self.max_size <= 1:
            raise ValueError(
                f"need 0 < min_size <= max_size <= 1, got {self.min_size}, {self.max_size}"
            )
        if not 0 < self.aspect * self.max_size <= 1:
            raise ValueError(f"aspect * max_size must be in (0, 1], got {self.aspect}")
        if not 0 <= self.min_speed <= self.max_speed:
            raise ValueError(
                f"need 0 <= min_speed <= max_speed, got {self.min_speed}, {self.max_speed}"
            )


def moving_digits(
    source: DigitSource,
    num_frames: int,
    size: tuple[int, int],
    seed: int = 0,
    config: MovingDigitsConfig = MovingDigitsConfig(),
    background: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield the frames of a clip of moving digits, one at a time.

    Args:
        source: the glyphs to draw from.
        num_frames: frames to yield.
        size: ``(height, width)`` in pixels.
        seed: the same seed gives the same clip.
        config: digit count, sizes and speeds.
        background: ``(height, width, 3)`` uint8 RGB still background; a random smooth
            noise or gradient one when ``None``.

    Yields:
        frame ``(height, width, 3)`` uint8 RGB, boxes ``(N, 4)`` float32 xyxy pixels and
        classes ``(N,)`` int64, the same N digits in the same order in every frame.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be (height, width) >= 1, got {size}")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if len(source) == 0 and config.num_digits > 0:
        raise ValueError("source has no glyphs")
    rng = np.random.default_rng(seed)
    if background is None:
        background = render_background(rng, size)
    elif background.shape != (height, width, 3) or background.dtype != np.uint8:
        raise ValueError(
            f"background must be ({height}, {width}, 3) uint8, got {background.shape} "
            f"{background.dtype}"
        )
    short = min(height, width)
    n = config.num_digits
    indices = rng.integers(len(source), size=n)
    cell_h = np.maximum(1, np.round(rng.uniform(config.min_size, config.max_size, n) * short))
    cell_w = np.maximum(1, np.round(cell_h * config.aspect))
    cells = np.stack([cell_w, cell_h], axis=1)  # (N, 2) w, h
    room = np.maximum(np.array([width, height], np.float64) - cells, 0)  # (N, 2) top-left range
    position = rng.uniform(0, 1, (n, 2)) * room  # (N, 2) x, y of the top-left corner
    speed = rng.uniform(config.min_speed, config.max_speed, n) * short
    angle = rng.uniform(0, 2 * np.pi, n)
    velocity = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]  # (N, 2)
    mean = background.reshape(-1, 3).astype(np.float32).mean(axis=0)
    candidates = rng.uniform(0, 255, (n, COLOUR_CANDIDATES, 3)).astype(np.float32)
    farthest = np.linalg.norm(candidates - mean, axis=2).argmax(axis=1)
    colours = candidates[np.arange(n), farthest]  # (N, 3)
    classes = source.labels[indices].astype(np.int64)
    for _ in range(num_frames):
        frame = background
        boxes = np.zeros((n, 4), np.float32)
        for i in range(n):
            x, y = np.round(position[i])
            cell = (x, y, x + cells[i, 0], y + cells[i, 1])
            frame, box = draw_digit(frame, source.glyphs[indices[i]], cell, colours[i])
            boxes[i] = box if box is not None else cell
        yield (frame if n else background.copy()), boxes, classes
        position, velocity = _bounce(position + velocity, velocity, room)


def _bounce(
    position: np.ndarray, velocity: np.ndarray, room: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Reflect ``(N, 2)`` positions that left ``[0, room]`` back inside, flipping their velocity."""
    low, high = position < 0, position > room
    position = np.where(low, -position, np.where(high, 2 * room - position, position))
    velocity = np.where(low | high, -velocity, velocity)
    return np.clip(position, 0, room), velocity


@dataclass(frozen=True)
class ClipSummary:
    """What :func:`write_moving_digits_video` wrote."""

    video: Path
    labels: Path | None  # ground-truth JSON lines, when asked for
    frames: int
    size: tuple[int, int]  # (height, width)
    fps: float
    classes: list[int]  # the digits of the clip, in box order
    seconds: float


def write_moving_digits_video(
    path: str | Path,
    num_frames: int,
    size: tuple[int, int],
    fps: float,
    seed: int = 0,
    config: MovingDigitsConfig = MovingDigitsConfig(),
    codec: str = "mp4v",
    split: str = "val",
    labels_path: str | Path | None = None,
    progress: bool = True,
) -> ClipSummary:
    """Encode a clip of :func:`moving_digits` to a video file (``detector synth video``).

    Args:
        path: the video to write (folders are created; an existing file is replaced).
        num_frames, size, seed, config: as :func:`moving_digits`; size is ``(height, width)``.
        fps: frames per second stored in the file.
        codec: OpenCV FourCC, e.g. ``"mp4v"`` (.mp4) or ``"MJPG"`` (.avi).
        split: glyphs of this split of the digits (``"val"``: never used for training).
        labels_path: when given, one JSON line per frame there: ``{"index", "boxes"
            [[x1, y1, x2, y2], ...] (pixels), "classes"}``.
        progress: a progress display over frames.

    Raises:
        ValueError: a bad count, size or fps, or OpenCV cannot write ``codec`` to ``path``.
    """
    from detector.data.synthetic import DigitSource
    from detector.progress import progress as show_progress

    path = Path(path)
    height, width = size
    if num_frames < 1:
        raise ValueError(f"need at least 1 frame, got {num_frames}")
    if height < 1 or width < 1:
        raise ValueError(f"size must be (height, width) >= 1, got {size}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    source = DigitSource.load(split)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise ValueError(f"{path}: OpenCV cannot write codec {codec!r} to this file type")
    labels = None
    if labels_path is not None:
        labels_path = Path(labels_path)
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        labels = labels_path.open("w", encoding="utf-8")
    start = time.perf_counter()
    classes: list[int] = []
    try:
        frames = moving_digits(source, num_frames, size, seed, config)
        bar = show_progress(
            frames, total=num_frames, desc=str(path), unit="frame", enabled=progress
        )
        for index, (frame, boxes, frame_classes) in enumerate(bar):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            classes = frame_classes.tolist()
            if labels is not None:
                record = {
                    "index": index,
                    "boxes": np.round(boxes, BOX_DECIMALS).tolist(),
                    "classes": classes,
                }
                labels.write(json.dumps(record) + "\n")
    finally:
        writer.release()
        if labels is not None:
            labels.close()
    return ClipSummary(
        path, labels_path, num_frames, size, fps, classes, time.perf_counter() - start
    )
