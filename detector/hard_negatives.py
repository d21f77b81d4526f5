"""Hard-negative mining for the sliding-window model kind.

The current model runs as a :class:`~detector.predict.Detector` over the training images;
its **false positives** (score at or above a threshold, IoU below ``FALSE_POSITIVE_IOU``
with every ground-truth box of the image, whatever its class) become negative windows of
the crop dataset for the rest of the training. A false positive's window is its
reference window (:func:`~detector.data.window_crops.reference_window`: square, centred
on the box, the box's longer side the positives' typical fill), integer-aligned: the
window a positive of that box would be drawn around.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from detector.boxes import box_iou
from detector.data.dataset import read_rgb
from detector.data.types import DatasetInfo
from detector.data.window_crops import aligned_window, reference_window
from detector.progress import progress as show_progress

FALSE_POSITIVE_IOU = 0.3  # a detection with IoU below this with every ground truth is false
HARD_NEGATIVE_SCORE = 0.5  # default score threshold of a false positive
HARD_NEGATIVES_PER_IMAGE = 10  # default cap: the highest-scoring false positives of an image


def false_positives(
    boxes: np.ndarray, scores: np.ndarray, truth: np.ndarray, limit: int
) -> np.ndarray:
    """The indices of the false positives among one image's detections, highest score first.

    Args:
        boxes: ``(N, 4)`` detections, xyxy pixels; scores: ``(N,)``.
        truth: ``(M, 4)`` ground-truth boxes, xyxy, the same pixels.
        limit: at most this many (the highest-scoring).

    Returns:
        ``(K,)`` int64 indices into ``boxes``.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    truth = np.asarray(truth, np.float64).reshape(-1, 4)
    false = np.ones(len(boxes), bool)
    if len(truth) and len(boxes):
        iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(truth)).numpy()  # (N, M)
        false = (iou < FALSE_POSITIVE_IOU).all(1)
    picked = np.flatnonzero(false)
    order = np.argsort(-np.asarray(scores)[picked], kind="stable")
    return picked[order][:limit].astype(np.int64)


def false_positive_windows(
    detector,
    info: DatasetInfo,
    score_threshold: float = HARD_NEGATIVE_SCORE,
    per_image: int = HARD_NEGATIVES_PER_IMAGE,
    batch_size: int = 16,
    progress: bool = False,
) -> list[np.ndarray]:
    """Run ``detector`` over every sample of ``info``; the windows of its false positives.

    Args:
        detector: anything with ``detect(images, score_threshold=...)`` returning per
            image an object with ``boxes`` ``(N, 4)`` xyxy image pixels and ``scores``
            (a :class:`~detector.predict.Detector`).
        info: the images and their ground truth.
        score_threshold: detections below it are ignored.
        per_image: at most this many windows per image (the highest-scoring).

    Returns:
        Per sample, ``(K, 4)`` float64 xyxy integer-aligned windows in its image's pixels.
    """
    windows: list[np.ndarray] = []
    starts = range(0, len(info.samples), batch_size)
    for start in show_progress(starts, desc="hard negatives", unit="batch", enabled=progress):
        samples = info.samples[start : start + batch_size]
        images = [read_rgb(s.image_path) for s in samples]
        detections = detector.detect(images, score_threshold=score_threshold)
        for sample, det in zip(samples, detections, strict=True):
            picked = false_positives(det.boxes, det.scores, sample.boxes, per_image)
            windows.append(_aligned(reference_window(np.asarray(det.boxes)[picked])))
    return windows


def _aligned(windows: np.ndarray) -> np.ndarray:
    """Each ``(4,)`` window as the smallest integer-aligned square containing it."""
    rows: Sequence[np.ndarray] = [aligned_window(w[0], w[1], w[2] - w[0]) for w in windows]
    return np.asarray(rows, np.float64).reshape(-1, 4)
