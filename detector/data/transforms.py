"""Training augmentations on numpy images and their labels.

Every transform is a pure function: it returns a new image and a new :class:`Target` and
never writes into its inputs. Images are ``(H, W, 3)`` uint8 BGR, as OpenCV reads them.
Coordinates are continuous pixels: pixel ``(row i, column j)`` covers
``[j, j + 1) x [i, i + 1)``, its centre is ``(j + 0.5, i + 0.5)`` and an image of width W
spans ``x`` in ``[0, W]``. A landmark with visibility 0 carries no position: transforms move
its coordinates like any other, but they mean nothing.

Randomness comes only from the explicit ``rng`` argument, so a seed fixes the result. The
training pipeline is :class:`Augmenter`; evaluation uses :func:`letterbox` alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from detector.boxes import LETTERBOX_PAD_VALUE, letterbox_image
from detector.config import (  # noqa: F401  (AugmentConfig: re-exported, it lived here)
    DEFAULT_MIN_AREA_RATIO,
    DEFAULT_MIN_BOX_SIZE,
    AugmentConfig,
)

HUE_PERIOD = 180  # OpenCV stores the 8-bit hue of the colour wheel in [0, 180)
UINT8_LEVELS = 256  # entries of an 8-bit lookup table
MOSAIC_TILES = 4  # images in one mosaic: top-left, top-right, bottom-left, bottom-right
HIDDEN = 0.0  # landmark visibility "not labelled", given to points pushed off the image


@dataclass(frozen=True)
class Target:
    """The labels of one image, in pixels of that image.

    Attributes:
        boxes: ``(N, 4)`` float32 xyxy pixels.
        classes: ``(N,)`` int64 class ids.
        landmarks: ``(N, K, 3)`` float32 ``(x, y, visibility)`` pixels, or ``None`` when the
            dataset has no keypoints.
    """

    boxes: np.ndarray
    classes: np.ndarray
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes, classes, landmarks = self.boxes, self.classes, self.landmarks
        if not _is_array(boxes, np.float32) or boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4) float32, got {_describe(boxes)}")
        if not _is_array(classes, np.int64) or classes.shape != (len(boxes),):
            raise ValueError(f"classes must be ({len(boxes)},) int64, got {_describe(classes)}")
        if landmarks is not None and (
            not _is_array(landmarks, np.float32)
            or landmarks.ndim != 3
            or landmarks.shape[0] != len(boxes)
            or landmarks.shape[2] != 3
        ):
            raise ValueError(
                f"landmarks must be ({len(boxes)}, K, 3) float32 or None, got {_describe(landmarks)}"
            )

    @classmethod
    def empty(cls, num_landmarks: int | None = None) -> Target:
        """A target with no boxes; ``num_landmarks`` K gives ``(0, K, 3)`` landmarks."""
        landmarks = None if num_landmarks is None else np.zeros((0, num_landmarks, 3), np.float32)
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), landmarks)

    @property
    def num_landmarks(self) -> int | None:
        """K, or ``None`` without landmarks."""
        return None if self.landmarks is None else self.landmarks.shape[1]

    def select(self, keep: np.ndarray) -> Target:
        """The rows picked by ``keep``, an ``(N,)`` bool mask or an index array."""
        landmarks = None if self.landmarks is None else self.landmarks[keep]
        return Target(self.boxes[keep], self.classes[keep], landmarks)


def letterbox(
    image: np.ndarray, target: Target, size: int, pad_value: int = LETTERBOX_PAD_VALUE
) -> tuple[np.ndarray, Target]:
    """Resize keeping the aspect ratio and pad to a square (the evaluation transform).

    The geometry is :func:`detector.boxes.letterbox_params`; boxes and landmarks follow it
    exactly and are neither clipped nor dropped.

    Args:
        image: ``(H, W, 3)`` uint8.
        target: labels in pixels of ``image``.
        size: side of the square output.
        pad_value: grey level of the padding.

    Returns:
        The ``(size, size, 3)`` uint8 image and the target in its pixels.
    """
    _check_image(image, "image")
    out, lb = letterbox_image(image, size, pad_value)
    matrix = np.array([[lb.scale_x, 0.0, lb.pad_x], [0.0, lb.scale_y, lb.pad_y]])
    return out, _map_target(target, matrix)


def affine_matrix(
    image_size: tuple[int, int], gain: float, angle: float, centre: tuple[float, float]
) -> np.ndarray:
    """The ``(2, 3)`` map that zooms by ``gain``, turns by ``angle`` degrees (counter-clockwise
    on screen) about the image centre, and moves that centre to ``centre = (x, y)`` pixels.

    ``image_size`` is ``(height, width)`` of the source image.
    """
    height, width = image_size
    source_centre = (width / 2, height / 2)
    matrix = cv2.getRotationMatrix2D(source_centre, angle, gain)  # keeps the centre fixed
    matrix[:, 2] += np.asarray(centre) - np.asarray(source_centre)
    return matrix


def warp_affine(
    image: np.ndarray,
    target: Target,
    matrix: np.ndarray,
    size: int,
    *,
    min_box_size: float = DEFAULT_MIN_BOX_SIZE,
    min_area_ratio: float = DEFAULT_MIN_AREA_RATIO,
    pad_value: int = LETTERBOX_PAD_VALUE,
) -> tuple[np.ndarray, Target]:
    """Warp the image and its labels by one affine map into a ``size x size`` output.

    Boxes are mapped by their 4 corners, re-boxed and clipped to the output; a box is dropped
    (with its class and landmarks) when its clipped width or height is below
    ``min_box_size`` pixels or it keeps less than ``min_area_ratio`` of its mapped area.
    Landmarks that land outside the output get visibility 0.

    Args:
        image: ``(H, W, 3)`` uint8.
        target: labels in pixels of ``image``.
        matrix: ``(2, 3)`` map from source to output pixels (continuous coordinates).

    Returns:
        The ``(size, size, 3)`` uint8 image and the kept labels in its pixels.
    """
    _check_image(image, "image")
    matrix = np.asarray(matrix, np.float64)
    if matrix.shape != (2, 3):
        raise ValueError(f"matrix must be (2, 3), got {_describe(matrix)}")
    # warpAffine works on pixel indices, whose centres sit half a pixel off the continuous grid.
    index_matrix = matrix.copy()
    index_matrix[:, 2] += matrix[:, :2].sum(axis=1) / 2 - 1 / 2
    out = cv2.warpAffine(
        image, index_matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(pad_value,) * 3
    )
    mapped = _map_target(target, matrix)
    return out, _clip_and_filter(mapped, (size, size), min_box_size, min_area_ratio)


def random_affine(
    image: np.ndarray,
    target: Target,
    size: int,
    scale: float,
    translate: float,
    rng: np.random.Generator,
    *,
    degrees: float = 0.0,
    min_box_size: float = DEFAULT_MIN_BOX_SIZE,
    min_area_ratio: float = DEFAULT_MIN_AREA_RATIO,
    pad_value: int = LETTERBOX_PAD_VALUE,
) -> tuple[np.ndarray, Target]:
    """Random zoom, rotation and shift of any image into a ``size x size`` output.

    The zoom gain is drawn from ``[1 - scale, 1 + scale]``, the angle from
    ``[-degrees, degrees]``, and the image centre lands at ``size * u`` with ``u`` drawn from
    ``[0.5 - translate, 0.5 + translate]`` per axis. A ``2 size`` mosaic canvas therefore
    comes out as its central crop, zoomed. Labels follow :func:`warp_affine`.

    Returns:
        The ``(size, size, 3)`` uint8 image and the kept labels in its pixels.
    """
    if not 0 <= scale < 1:
        raise ValueError(f"scale must be in [0, 1), got {scale}")
    _check_image(image, "image")
    gain = rng.uniform(1 - scale, 1 + scale)
    angle = rng.uniform(-degrees, degrees)
    centre_x, centre_y = rng.uniform(0.5 - translate, 0.5 + translate, size=2) * size
    matrix = affine_matrix(image.shape[:2], gain, angle, (centre_x, centre_y))
    return warp_affine(
        image,
        target,
        matrix,
        size,
        min_box_size=min_box_size,
        min_area_ratio=min_area_ratio,
        pad_value=pad_value,
    )


def hflip(
    image: np.ndarray, target: Target, flip_idx: Sequence[int] | None = None
) -> tuple[np.ndarray, Target]:
    """Mirror left-right: ``x -> W - x``, so a box becomes ``(W - x2, y1, W - x1, y2)``.

    Landmarks are mirrored and re-ordered, ``new[:, k] = old[:, flip_idx[k]]``, so that a
    "left eye" stays the left eye of the mirrored face.

    Args:
        image: ``(H, W, 3)`` uint8.
        target: labels in pixels of ``image``.
        flip_idx: a permutation of ``0..K-1``; required when K > 0.

    Returns:
        The mirrored ``(H, W, 3)`` uint8 image and target.
    """
    _check_image(image, "image")
    width = image.shape[1]
    out = np.ascontiguousarray(image[:, ::-1])
    boxes = target.boxes[:, [2, 1, 0, 3]]  # (N, 4) with x1 and x2 swapped; a copy
    boxes[:, 0::2] = width - boxes[:, 0::2]
    landmarks = None
    if target.landmarks is not None:
        order = _check_flip_idx(flip_idx, target.landmarks.shape[1])
        landmarks = target.landmarks[:, order]  # fancy indexing copies
        landmarks[..., 0] = width - landmarks[..., 0]
    return out, Target(boxes, target.classes.copy(), landmarks)


def hsv_jitter(
    image: np.ndarray, gains: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """Random colour change in HSV through 8-bit lookup tables; labels are unaffected.

    Args:
        image: ``(H, W, 3)`` uint8 BGR.
        gains: ``(hue, saturation, value)``: the hue turns by up to ``hue`` of the colour
            wheel; saturation and value are multiplied by a gain in ``[1 - g, 1 + g]``.

    Returns:
        A new ``(H, W, 3)`` uint8 BGR image; an exact copy when every gain is 0.
    """
    _check_image(image, "image")
    hue_gain, sat_gain, val_gain = gains
    hue_shift, sat_factor, val_factor = rng.uniform(-1, 1, size=3) * gains + [0, 1, 1]
    if hue_gain == sat_gain == val_gain == 0:
        return image.copy()
    levels = np.arange(UINT8_LEVELS, dtype=np.float64)
    max_level = UINT8_LEVELS - 1
    hue_lut = np.round(levels + hue_shift * HUE_PERIOD) % HUE_PERIOD
    sat_lut = np.clip(np.round(levels * sat_factor), 0, max_level)
    val_lut = np.clip(np.round(levels * val_factor), 0, max_level)
    channels = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))  # hue, saturation, value
    luts = (hue_lut, sat_lut, val_lut)
    hsv = cv2.merge(
        [cv2.LUT(c, lut.astype(np.uint8)) for c, lut in zip(channels, luts, strict=True)]
    )
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def mosaic(
    samples: Sequence[tuple[np.ndarray, Target]],
    size: int,
    rng: np.random.Generator,
    *,
    min_box_size: float = DEFAULT_MIN_BOX_SIZE,
    min_area_ratio: float = DEFAULT_MIN_AREA_RATIO,
    pad_value: int = LETTERBOX_PAD_VALUE,
) -> tuple[np.ndarray, Target]:
    """Four images around a random centre of a ``2 size x 2 size`` canvas (Ultralytics scheme).

    Each image is resized so that its long side is ``size`` and placed with one corner at the
    centre, drawn from ``[size / 2, 3 size / 2]`` per axis: sample 0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right. Boxes are clipped to the canvas and filtered as in
    :func:`warp_affine`. Pass the result through :func:`random_affine` to get a ``size`` input.

    Args:
        samples: 4 ``(image, target)`` pairs, images ``(H, W, 3)`` uint8, all targets with the
            same landmark count K (or all without landmarks).

    Returns:
        The ``(2 size, 2 size, 3)`` uint8 canvas and the labels of all 4 in its pixels,
        in sample order.
    """
    if len(samples) != MOSAIC_TILES:
        raise ValueError(f"mosaic needs {MOSAIC_TILES} samples, got {len(samples)}")
    landmark_counts = {target.num_landmarks for _, target in samples}
    if len(landmark_counts) != 1:
        raise ValueError(f"mosaic samples must share one landmark count K, got {landmark_counts}")
    side = 2 * size
    canvas = np.full((side, side, 3), pad_value, np.uint8)
    centre_x, centre_y = rng.integers(size // 2, side - size // 2, size=2, endpoint=True)
    targets = []
    for index, (image, target) in enumerate(samples):
        _check_image(image, f"samples[{index}] image")
        height, width = image.shape[:2]
        boxed, lb = letterbox_image(image, size, pad_value)  # long side resized to size
        tile_w, tile_h = round(width * lb.scale_x), round(height * lb.scale_y)
        pad_x, pad_y = int(lb.pad_x), int(lb.pad_y)
        tile = boxed[pad_y : pad_y + tile_h, pad_x : pad_x + tile_w]  # the image without padding
        left = centre_x - tile_w if index % 2 == 0 else centre_x
        top = centre_y - tile_h if index < 2 else centre_y
        _paste(canvas, tile, left, top)
        matrix = np.array([[lb.scale_x, 0.0, left], [0.0, lb.scale_y, top]])
        targets.append(_map_target(target, matrix))
    merged = _concatenate(targets)
    return canvas, _clip_and_filter(merged, (side, side), min_box_size, min_area_ratio)


# Three (image, target) pairs, or a callable that draws them with the rng it is given.
ExtraSamples = (
    Sequence[tuple[np.ndarray, Target]]
    | Callable[[np.random.Generator], Sequence[tuple[np.ndarray, Target]]]
)


@dataclass(frozen=True)
class Augmenter:
    """The training pipeline: mosaic (with probability) or letterbox, then random affine,
    horizontal flip (with probability) and HSV jitter.

    ``Augmenter(config, size, flip_idx)(image, target, rng, extra_samples)`` returns a
    ``(size, size, 3)`` uint8 image and its target; :meth:`letterbox_only` is the evaluation
    path (exactly :func:`letterbox`).
    """

    config: AugmentConfig  # probabilities and ranges
    size: int  # side of the square output image in pixels
    flip_idx: tuple[int, ...] | None = None  # landmark permutation for flips; needed when K > 0

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"Augmenter size must be positive, got {self.size}")

    def __call__(
        self,
        image: np.ndarray,
        target: Target,
        rng: np.random.Generator,
        extra_samples: ExtraSamples | None = None,
    ) -> tuple[np.ndarray, Target]:
        """Augment one ``(H, W, 3)`` uint8 image and its target (pixels of ``image``).

        ``extra_samples`` gives the 3 other mosaic images; a callable is only called when a
        mosaic is drawn. Required when ``config.mosaic > 0``.
        """
        cfg = self.config
        if cfg.mosaic > 0 and extra_samples is None:
            raise ValueError("extra_samples is required when AugmentConfig.mosaic > 0")
        filters = {
            "min_box_size": cfg.min_box_size,
            "min_area_ratio": cfg.min_area_ratio,
            "pad_value": cfg.pad_value,
        }
        if rng.random() < cfg.mosaic:
            others = extra_samples(rng) if callable(extra_samples) else extra_samples
            if len(others) != MOSAIC_TILES - 1:
                raise ValueError(f"extra_samples must give {MOSAIC_TILES - 1}, got {len(others)}")
            image, target = mosaic([(image, target), *others], self.size, rng, **filters)
        else:
            image, target = letterbox(image, target, self.size, cfg.pad_value)
        image, target = random_affine(
            image, target, self.size, cfg.scale, cfg.translate, rng, degrees=cfg.degrees, **filters
        )
        if rng.random() < cfg.fliplr:
            image, target = hflip(image, target, self.flip_idx)
        image = hsv_jitter(image, (cfg.hsv_h, cfg.hsv_s, cfg.hsv_v), rng)
        return image, target

    def letterbox_only(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        """The evaluation path: :func:`letterbox` to ``size``, no randomness."""
        return letterbox(image, target, self.size, self.config.pad_value)


def _describe(array: object) -> str:
    if isinstance(array, np.ndarray):
        return f"shape {array.shape} dtype {array.dtype}"
    return type(array).__name__


def _is_array(value: object, dtype: type) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == dtype


def _check_image(image: np.ndarray, name: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"{name} must be an (H, W, 3) uint8 array, got {_describe(image)}")
    if image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (H, W, 3) array, got {_describe(image)}")


def _check_flip_idx(flip_idx: Sequence[int] | None, num_landmarks: int) -> list[int]:
    if num_landmarks == 0:
        return []
    if flip_idx is None:
        raise ValueError(f"flip_idx is required to flip {num_landmarks} landmarks per object")
    order = [int(i) for i in flip_idx]
    if sorted(order) != list(range(num_landmarks)):
        raise ValueError(
            f"flip_idx must be a permutation of 0..{num_landmarks - 1}, got {list(flip_idx)}"
        )
    return order


def _map_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``(..., 2)`` xy through a ``(2, 3)`` affine map."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def _map_target(target: Target, matrix: np.ndarray) -> Target:
    """Map boxes (as the box around their 4 mapped corners) and landmarks; no clipping."""
    x1, y1, x2, y2 = target.boxes.T
    corners = np.stack([x1, y1, x2, y1, x2, y2, x1, y2], axis=1).reshape(-1, 4, 2)  # (N, 4, 2)
    mapped = _map_points(corners, matrix)
    boxes = np.concatenate([mapped.min(axis=1), mapped.max(axis=1)], axis=1)  # (N, 4)
    landmarks = None
    if target.landmarks is not None:
        landmarks = target.landmarks.copy()
        landmarks[..., :2] = _map_points(target.landmarks[..., :2], matrix)
    return Target(boxes.astype(np.float32), target.classes.copy(), landmarks)


def _clip_and_filter(
    target: Target, image_size: tuple[int, int], min_box_size: float, min_area_ratio: float
) -> Target:
    """Clip boxes to ``image_size = (h, w)``, drop those cut too much, hide outside landmarks."""
    height, width = image_size
    boxes = target.boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    sides = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
    area = sides.prod(axis=1)
    mapped_area = (target.boxes[:, 2:] - target.boxes[:, :2]).prod(axis=1)
    keep = (sides >= min_box_size).all(axis=1) & (area > 0) & (area >= min_area_ratio * mapped_area)
    landmarks = target.landmarks
    if landmarks is not None:
        x, y = landmarks[..., 0], landmarks[..., 1]
        outside = (x < 0) | (x > width) | (y < 0) | (y > height)  # (N, K)
        landmarks = landmarks.copy()
        landmarks[..., 2][outside] = HIDDEN
    return Target(boxes, target.classes, landmarks).select(keep)


def _concatenate(targets: Sequence[Target]) -> Target:
    boxes = np.concatenate([t.boxes for t in targets])
    classes = np.concatenate([t.classes for t in targets])
    if targets[0].landmarks is None:
        return Target(boxes, classes)
    return Target(boxes, classes, np.concatenate([t.landmarks for t in targets]))


def _paste(canvas: np.ndarray, tile: np.ndarray, left: int, top: int) -> None:
    """Copy ``tile`` into ``canvas`` (a new array of the caller) with its top-left at
    ``(left, top)``, cutting what falls outside."""
    height, width = tile.shape[:2]
    x1, y1 = max(left, 0), max(top, 0)
    x2 = min(left + width, canvas.shape[1])
    y2 = min(top + height, canvas.shape[0])
    if x2 > x1 and y2 > y1:
        canvas[y1:y2, x1:x2] = tile[y1 - top : y2 - top, x1 - left : x2 - left]
