"""Pieces shared by the YOLO, COCO and VOC readers and writers.

Every reader builds :class:`~detector.data.types.Sample` objects through
:func:`make_sample`, so that all formats agree on dtypes, shapes and clipping:
boxes ``(N, 4)`` float32 xyxy pixels clipped to the image, classes ``(N,)`` int64,
landmarks ``(N, K, 3)`` float32 ``(x, y, visibility)`` pixels or ``None``.

A problem with one sample's labels is a :class:`LabelError`; readers hand it to
:func:`report` which raises it (``strict=True``) or records it in ``skipped`` and drops
the whole sample, so that a half-labelled image never trains as background.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from detector.boxes import box_convert, clip_boxes
from detector.data.types import Sample
from detector.inputs import IMAGE_SUFFIXES  # read as images in a folder; defined torch-free

# Keypoint visibility, as in COCO.
VIS_UNLABELLED = 0  # no label: coordinates are meaningless and stored as 0
VIS_OCCLUDED = 1  # labelled but not visible
VIS_VISIBLE = 2  # labelled and visible
VISIBILITIES = (VIS_UNLABELLED, VIS_OCCLUDED, VIS_VISIBLE)

# Values per keypoint in the in-memory form: (x, y, visibility).
KPT_DIMS = 3

# Left/right words swapped to pair keypoint names for a horizontal flip.
FLIP_WORDS = (("left", "right"), ("Left", "Right"), ("LEFT", "RIGHT"))


class LabelError(ValueError):
    """A problem with one sample's labels.

    The message names the file and, where the format has lines, the 1-based line:
    ``"labels/train/a.txt:3: class id 7 out of range [0, 3)"``.
    """

    def __init__(self, source: Path | str, problem: str, line: int | None = None) -> None:
        where = f"{source}:{line}" if line is not None else f"{source}"
        super().__init__(f"{where}: {problem}")


def report(error: LabelError, strict: bool, skipped: list[str]) -> None:
    """Raise ``error`` when ``strict``, else append its message to ``skipped``."""
    if strict:
        raise error
    skipped.append(str(error))


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` in pixels of the image at ``path``, as ``cv2.imread`` sees it.

    Raises:
        LabelError: the file does not exist or OpenCV cannot decode it.
    """
    if not path.is_file():
        raise LabelError(path, "image file not found")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise LabelError(path, "image file cannot be decoded (unreadable or not an image)")
    height, width = image.shape[:2]
    return int(width), int(height)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by path."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def boxes_to_xyxy(boxes: np.ndarray, in_fmt: str) -> np.ndarray:
    """Convert ``(N, 4)`` boxes in ``in_fmt`` (``"xywh"`` or ``"cxcywh"``) to xyxy, float64."""
    tensor = torch.from_numpy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    return box_convert(tensor, in_fmt, "xyxy").numpy()


def boxes_from_xyxy(boxes: np.ndarray, out_fmt: str) -> np.ndarray:
    """Convert ``(N, 4)`` xyxy boxes to ``out_fmt`` (``"xywh"`` or ``"cxcywh"``), float64."""
    tensor = torch.from_numpy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    return box_convert(tensor, "xyxy", out_fmt).numpy()


def make_sample(
    image_path: Path,
    width: int,
    height: int,
    boxes: np.ndarray,
    classes: Sequence[int],
    landmarks: np.ndarray | None,
    source: Path | str,
) -> Sample:
    """Build a :class:`Sample`, clipping boxes to the image.

    Args:
        image_path: the image file.
        width, height: image size in pixels.
        boxes: ``(N, 4)`` xyxy pixels (any float dtype); clipped to ``[0, width] x [0, height]``.
        classes: ``N`` class ids.
        landmarks: ``(N, K, 3)`` ``(x, y, visibility)`` pixels, or ``None`` without keypoints.
        source: the label file, named in the error.

    Raises:
        LabelError: a box has no area left inside the image after clipping.
    """
    xyxy = torch.from_numpy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    clipped = clip_boxes(xyxy, (height, width)).numpy()
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if empty.any():
        index = int(np.flatnonzero(empty)[0])
        raise LabelError(
            source, f"box {boxes[index].tolist()} lies outside the {width}x{height} image"
        )
    if landmarks is not None:
        landmarks = np.asarray(landmarks, dtype=np.float32)
        assert landmarks.ndim == 3 and landmarks.shape[::2] == (len(clipped), KPT_DIMS)
    return Sample(
        image_path=image_path,
        width=int(width),
        height=int(height),
        boxes=clipped.astype(np.float32),
        classes=np.asarray(classes, dtype=np.int64).reshape(-1),
        landmarks=landmarks,
    )


def check_visibility(values: np.ndarray, source: Path | str, line: int | None = None) -> None:
    """Raise :class:`LabelError` unless every value is one of :data:`VISIBILITIES`."""
    bad = ~np.isin(values, VISIBILITIES)
    if bad.any():
        raise LabelError(
            source,
            f"keypoint visibility {values[bad][0]:g} is not one of {list(VISIBILITIES)}",
            line,
        )


def check_flip_idx(flip_idx: Sequence[int] | None, num_kpts: int, source: Path | str) -> list[int]:
    """Validate that ``flip_idx`` is a permutation of ``0..K-1`` and return it as a list.

    Raises:
        ValueError: naming ``source``, when it is not.
    """
    if flip_idx is None:
        raise ValueError(f"{source}: flip_idx is missing")
    values = [int(i) for i in flip_idx]
    if sorted(values) != list(range(num_kpts)):
        raise ValueError(
            f"{source}: flip_idx {values} must be a permutation of 0..{num_kpts - 1} "
            f"(one entry per keypoint)"
        )
    return values


def check_kpt_names(names: object, num_kpts: int, source: Path | str) -> list[str]:
    """Validate K landmark names: a list, or Ultralytics' per-class ``{class_id: [names]}``
    (the lowest class id's list is taken: every class shares one K here).

    Raises:
        ValueError: naming ``source``, when it is neither or does not hold K names.
    """
    if isinstance(names, dict) and names:
        try:
            names = names[min(names, key=int)]
        except (TypeError, ValueError):
            raise ValueError(f"{source}: kpt_names keys must be class ids") from None
    if not isinstance(names, list | tuple) or not all(isinstance(n, str | int) for n in names):
        raise ValueError(
            f"{source}: kpt_names must be a list of names or {{class_id: [names]}}, got {names!r}"
        )
    if len(names) != num_kpts:
        raise ValueError(f"{source}: {len(names)} kpt_names for {num_kpts} keypoints")
    return [str(n) for n in names]


def check_skeleton(
    pairs: object, num_kpts: int, source: Path | str, base: int = 0
) -> list[tuple[int, int]]:
    """Validate a skeleton, ``[[i, j], ...]`` of keypoint indices counted from ``base``
    (0 in YOLO data.yaml, 1 in COCO), and return it 0-based as ``[(i, j), ...]``.

    Raises:
        ValueError: naming ``source``, when a pair is not two indices in
            ``[base, base + K)``.
    """
    if not isinstance(pairs, list | tuple):
        raise ValueError(f"{source}: skeleton must be a list of [i, j] pairs, got {pairs!r}")
    edges = []
    for pair in pairs:
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(v, int) and base <= v < base + num_kpts for v in pair)
        ):
            raise ValueError(
                f"{source}: skeleton pair {pair!r} must be two keypoint indices in "
                f"[{base}, {base + num_kpts - 1}]"
            )
        edges.append((pair[0] - base, pair[1] - base))
    return edges


def flip_idx_from_names(kpt_names: Sequence[str]) -> list[int] | None:
    """Pair keypoint names that differ only by left/right (``"left_eye"`` <-> ``"right_eye"``).

    Returns:
        The flip permutation, or ``None`` when no name has a left/right partner.
    """
    index = {name: i for i, name in enumerate(kpt_names)}
    flip = list(range(len(kpt_names)))
    paired = False
    for i, name in enumerate(kpt_names):
        for left, right in FLIP_WORDS:
            for a, b in ((left, right), (right, left)):
                partner = name.replace(a, b)
                if a in name and partner in index:
                    flip[i] = index[partner]
                    paired = True
    if not paired or sorted(flip) != list(range(len(kpt_names))):
        return None
    return flip
