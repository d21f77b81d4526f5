"""The in-memory form of a labelled dataset, shared by every reader and writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Sample:
    """One labelled image.

    Attributes:
        image_path: path of the image file.
        width, height: image size in pixels.
        boxes: ``(N, 4)`` float32, xyxy in pixels of this image.
        classes: ``(N,)`` int64 class ids in ``[0, num_classes)``.
        landmarks: ``(N, K, 3)`` float32 ``(x, y, visibility)`` in pixels, visibility
            0 = not labelled, 1 = labelled but occluded, 2 = visible; ``None`` when the
            dataset has no keypoints.
    """

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray
    landmarks: np.ndarray | None = None


@dataclass
class DatasetInfo:
    """A split of a dataset: its samples and class / keypoint metadata."""

    names: list[str]
    samples: list[Sample]
    kpt_shape: tuple[int, int] | None = None  # (K, 3) when the dataset has keypoints
    flip_idx: list[int] | None = None  # landmark permutation for horizontal flips
    skipped: list[str] = field(default_factory=list)  # one message per skipped sample/label
    kpt_names: list[str] | None = None  # the K landmark names, when the dataset names them
    # Pairs (i, j) of 0-based landmark indices joined by a line when drawn; None when not given.
    skeleton: list[tuple[int, int]] | None = None
