"""Sliding-window geometry: image pyramid, window boxes, raw output → candidate boxes.

A :class:`~detector.models.window.WindowClassifier` finds objects about as large as its
window W. To find objects of side ``s`` the image is resized by ``W / s``; the pyramid's
levels step ``s`` geometrically from ``min_size`` up to the image's short side. Each
level's raw output becomes candidates (boxes in ORIGINAL image pixels, scores, class
ids); thresholds, per-class NMS and the rest are shared with the other model kinds.

Boxes are xyxy in pixels; a pixel ``(x, y)`` covers ``[x, x + 1) × [y, y + 1)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detector.boxes import Letterbox, boxes_to_original
from detector.config import LETTERBOX_PAD_VALUE
from detector.models.window import (
    BACKGROUND,
    WindowClassifier,
    WindowConfig,
    decode_window_boxes,
)
from detector.postprocess import Candidates

# Object sizes of neighbouring levels differ by this factor: 4 levels per octave, so an
# object is at most 2^(1/4) ≈ 1.19 times larger than the nearest smaller level's window
# (the box regression covers the rest).
DEFAULT_SCALE_STEP = 2 ** (1 / 4)
_SIZE_TOLERANCE = 1e-9  # relative: min_size * step**k may overshoot an exact bound by rounding


@dataclass(frozen=True)
class PyramidLevel:
    """One level of the image pyramid.

    ``scale`` is the nominal factor ``window / object size``; the image is resized to
    ``size = (round(h * scale), round(w * scale))``, so the exact per-axis factors are
    ``size / original_size`` (see :meth:`letterbox`), and those map boxes back.
    """

    scale: float  # nominal resize factor, W / object side
    original_size: tuple[int, int]  # (height, width) of the original image
    size: tuple[int, int]  # (height, width) of the resized image, both >= the window

    def letterbox(self) -> Letterbox:
        """The exact map original → level pixels (no padding), for ``detector.boxes``."""
        (h, w), (lh, lw) = self.original_size, self.size
        return Letterbox(lw / w, lh / h, 0.0, 0.0, self.original_size, self.size)


def pyramid_levels(
    image_size: tuple[int, int],
    window: int,
    min_size: float,
    step: float = DEFAULT_SCALE_STEP,
) -> list[PyramidLevel]:
    """The pyramid levels that fit objects from ``min_size`` up to the image's short side.

    Level ``k`` is for objects of side ``s_k = min_size * step**k`` (scale ``window /
    s_k``), for every ``s_k`` up to the image's short side; beyond it the resized image
    would be smaller than the window. So every object side ``s`` in ``[min_size, short
    side]`` has a level with ``s_k <= s < s_k * step``. A ``min_size`` larger than the short
    side gives no level.

    Args:
        image_size: ``(height, width)`` of the original image in pixels.
        window: W, the classifier's window side in pixels.
        min_size: the smallest object side to find, in original pixels, > 0.
        step: ratio between neighbouring levels' object sizes, > 1.

    Returns:
        Levels from the largest scale (smallest objects) to the smallest.
    """
    h, w = image_size
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got (h, w) = {image_size}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not min_size > 0:
        raise ValueError(f"min_size must be > 0 pixels, got {min_size}")
    if not step > 1:
        raise ValueError(f"step must be > 1, got {step}")
    largest = min(h, w) * (1 + _SIZE_TOLERANCE)
    levels = []
    for k in itertools.count():  # ends: step > 1, so the side grows past the short side
        side = min_size * step**k
        if side > largest:
            break
        scale = window / side
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if min(size) >= window:
            levels.append(PyramidLevel(scale, (h, w), size))
    return levels


def resize_to_level(images: torch.Tensor, level: PyramidLevel) -> torch.Tensor:
    """Resize a batch to a pyramid level: bilinear, antialiased when shrinking.

    Args:
        images: ``(B, 3, H, W)`` float with ``(H, W) == level.original_size``.

    Returns:
        ``(B, 3, h, w)`` with ``(h, w) == level.size``; ``images`` itself when equal.
    """
    if tuple(images.shape[-2:]) != level.original_size:
        raise ValueError(
            f"images are {tuple(images.shape[-2:])}, the level is for {level.original_size}"
        )
    if level.size == level.original_size:
        return images
    return F.interpolate(
        images, size=level.size, mode="bilinear", align_corners=False, antialias=True
    )


def pad_level(images: torch.Tensor, border: int) -> torch.Tensor:
    """A resized level with ``border`` pixels of letterbox grey on every side (the grey the
    training crops have where a window leaves the image); ``images`` itself when 0."""
    if border == 0:
        return images
    return F.pad(images, (border,) * 4, value=LETTERBOX_PAD_VALUE / 255.0)


def level_input(images: torch.Tensor, level: PyramidLevel, border: int) -> torch.Tensor:
    """What the classifier runs on at ``level``: resized, then padded by ``border``."""
    return pad_level(resize_to_level(images, level), border)


def window_boxes(
    config: WindowConfig,
    output_size: tuple[int, int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The window of every output position, in the network input's pixels.

    Position ``(i, j)`` is ``(x0, y0, x0 + W, y0 + W)`` with ``x0 = j * stride - border``
    and ``y0 = i * stride - border`` (``config.border``: the level was padded by it).

    Args:
        output_size: ``(H', W')``, e.g. ``config.output_size(input_size)``.

    Returns:
        ``(H' * W', 4)`` xyxy, row-major (``i * W' + j``), like ``raw.flatten(2)``.
    """
    rows, cols = output_size
    ys = torch.arange(rows, device=device, dtype=dtype) * config.stride  # (H',)
    xs = torch.arange(cols, device=device, dtype=dtype) * config.stride  # (W',)
    y0, x0 = torch.meshgrid(ys, xs, indexing="ij")  # (H', W') each
    corners = torch.stack((x0, y0), -1).reshape(-1, 2) - config.border  # (H' * W', 2)
    return torch.cat((corners, corners + config.window), 1)


@dataclass
class WindowCandidates:
    """The candidates of one image, before any threshold or NMS.

    Attributes:
        boxes: ``(N, 4)`` float xyxy in original image pixels (not clipped).
        scores: ``(N,)`` the best non-background class probability.
        class_ids: ``(N,)`` int64 in ``[0, C)``.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor

    @staticmethod
    def cat(parts: Sequence[WindowCandidates]) -> WindowCandidates:
        """Concatenate candidates of one image (e.g. its pyramid levels), in order."""
        if not parts:
            raise ValueError("need at least one WindowCandidates to concatenate")
        return WindowCandidates(
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.scores for p in parts]),
            torch.cat([p.class_ids for p in parts]),
        )


def window_candidates(
    raw: torch.Tensor, config: WindowConfig, level: PyramidLevel
) -> list[WindowCandidates]:
    """Turn one level's raw output into candidates in original image pixels.

    Each window's box is decoded from its regression (:func:`decode_window_boxes`; the
    window itself when ``config.regress_boxes`` is False) in the level's pixels and mapped
    back by the level's exact per-axis scale. Its score is the largest softmax probability
    over the C + 1 logits among the C object classes.

    Args:
        raw: ``(B, C + 5, H', W')`` output of the classifier on ``level_input(images,
            level, config.border)``.

    Returns:
        Per image, one :class:`WindowCandidates` with ``N = H' * W'`` rows, row-major.
    """
    if raw.ndim != 4 or raw.shape[1] != config.num_outputs:
        raise ValueError(f"raw must be (B, {config.num_outputs}, H', W'), got {tuple(raw.shape)}")
    c = config.num_classes
    flat = raw.float().flatten(2)  # (B, C + 5, P), P = H' * W'
    probs = flat[:, : c + 1].softmax(1)  # (B, C + 1, P)
    scores, labels = probs[:, BACKGROUND + 1 :].max(1)  # (B, P) each, labels in [0, C)
    windows = window_boxes(config, tuple(raw.shape[-2:]), raw.device)  # (P, 4)
    if config.regress_boxes:
        deltas = flat[:, c + 1 :].transpose(1, 2)  # (B, P, 4)
        boxes = decode_window_boxes(deltas, windows)  # (B, P, 4) in level pixels
    else:  # the window itself
        boxes = windows.expand(raw.shape[0], -1, -1)  # (B, P, 4)
    lb = level.letterbox()
    return [
        WindowCandidates(boxes_to_original(boxes[b], lb, clip=False), scores[b], labels[b])
        for b in range(raw.shape[0])
    ]


def pyramid_candidates(
    model: WindowClassifier, images: torch.Tensor, levels: Sequence[PyramidLevel]
) -> list[WindowCandidates]:
    """Run the classifier over every pyramid level and gather each image's candidates.

    Args:
        model: the classifier, in eval mode for inference; this function changes
            neither its mode nor the grad state.
        images: ``(B, 3, H, W)`` float RGB in [0, 1], ``(H, W)`` the levels' original size.
        levels: from :func:`pyramid_levels`; may be empty.

    Returns:
        Per image, the candidates of all levels in level order (empty tensors when there
        is no level).
    """
    config = model.config
    per_level = [
        window_candidates(model(level_input(images, lv, config.border)), config, lv)
        for lv in levels
    ]
    if not per_level:
        return [
            WindowCandidates(
                images.new_zeros((0, 4)),
                images.new_zeros((0,)),
                torch.zeros(0, dtype=torch.int64, device=images.device),
            )
            for _ in range(images.shape[0])
        ]
    return [WindowCandidates.cat(parts) for parts in zip(*per_level, strict=True)]


class WindowDetector(nn.Module):
    """The ``sliding-window`` model kind's network: a :class:`WindowClassifier` run over
    the image pyramid of its input (``config.smallest_object`` to the input's short side,
    ``config.scale_step`` apart).

    ``forward`` takes ``(B, 3, H, W)`` float RGB in [0, 1] and returns the raw output of
    every level, largest scale first: a tuple of ``(B, C + 5, H'_l, W'_l)``. Turn it into
    candidates with :func:`window_detector_candidates`.
    """

    def __init__(self, config: WindowConfig):
        super().__init__()
        self.config = config
        self.classifier = WindowClassifier(config)

    def levels(self, input_size: tuple[int, int]) -> list[PyramidLevel]:
        """The pyramid levels of an ``(H, W)`` input."""
        return pyramid_levels(
            input_size, self.config.window, self.config.smallest_object, self.config.scale_step
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels = self.levels(tuple(images.shape[-2:]))
        border = self.config.border
        return tuple(self.classifier(level_input(images, level, border)) for level in levels)


def window_detector_candidates(
    raw: Sequence[torch.Tensor], config: WindowConfig, input_size: tuple[int, int]
) -> Candidates:
    """The candidates of :class:`WindowDetector`'s raw output for a batch of ``(H, W) =
    input_size`` inputs: every window of every level, boxes in input pixels, score = the
    best non-background probability, no landmarks (``K = 0``)."""
    levels = pyramid_levels(input_size, config.window, config.smallest_object, config.scale_step)
    if len(levels) != len(raw):
        raise ValueError(f"{len(raw)} raw outputs for the {len(levels)} levels of {input_size}")
    per_level = [window_candidates(r, config, level) for r, level in zip(raw, levels, strict=True)]
    if not per_level:
        raise ValueError(f"input {input_size} is smaller than the window {config.window}")
    per_image = [WindowCandidates.cat(parts) for parts in zip(*per_level, strict=True)]
    boxes = torch.stack([c.boxes for c in per_image])  # (B, P, 4)
    return Candidates(
        boxes,
        torch.stack([c.scores for c in per_image]),  # (B, P)
        torch.stack([c.class_ids for c in per_image]),  # (B, P)
        boxes.new_zeros((*boxes.shape[:2], 0, 2)),  # (B, P, 0, 2)
    )
