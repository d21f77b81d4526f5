"""From candidates to final detections: threshold, per-class NMS, top-k, merging.

Every model kind turns its raw output into :class:`Candidates` (see
:mod:`detector.kinds`); from there on, everything is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

from detector.boxes import nms, ranked_candidates

MAX_CANDIDATES = 10_000  # boxes entering NMS per image, highest scores first
# merge_kept compares every kept box with every candidate up to this many pairs, and
# class by class above it (300 kept of 3,000 candidates of 10 classes: 32 -> 10 ms in
# bench/bench_predict.py on the 2-core CPU).
MERGE_DENSE_PAIRS = 65_536


@dataclass
class Candidates:
    """A batch's candidate boxes before any threshold, in model-input pixels (``P``
    candidates per image, the same count for every image of the batch).

    Attributes:
        boxes: ``(B, P, 4)`` xyxy.
        scores: ``(B, P)`` in [0, 1] (a grid model: objectness × best class probability).
        class_ids: ``(B, P)`` int64, each candidate's best class.
        landmarks: ``(B, P, K, 2)`` xy (``K`` may be 0).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    landmarks: torch.Tensor

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def take(self, indices: Sequence[int]) -> Candidates:
        """The candidates of the images at ``indices`` (a new batch of len(indices))."""
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.boxes.device)
        return Candidates(
            self.boxes[idx], self.scores[idx], self.class_ids[idx], self.landmarks[idx]
        )


@dataclass
class RawDetections:
    """Detections of one image in model-input pixels.

    Attributes:
        boxes: ``(N, 4)`` xyxy.
        scores: ``(N,)`` objectness × class probability, decreasing.
        class_ids: ``(N,)`` int64.
        landmarks: ``(N, K, 2)`` xy (``K`` may be 0).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    landmarks: torch.Tensor


def select_detections(
    candidates: Candidates,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    classes: Sequence[int] | None = None,
    merge_iou: float = 0.0,
) -> list[RawDetections]:
    """Turn a batch of candidates into per-image detections.

    The settings are those of :class:`~detector.settings.DetectOptions`, already checked
    there; ``classes`` are class ids in ``[0, C)`` (see :func:`detector.settings.class_ids`).
    With ``classes``, candidates whose best class is not among them are dropped, so the result equals the unfiltered one restricted to those classes (up to
    the ``max_detections`` cut). Scores at or below ``score_threshold`` are dropped, at
    most ``MAX_CANDIDATES`` enter per-class NMS, at most ``max_detections`` come out;
    with ``merge_iou > 0`` their boxes and landmarks are merged (:func:`merge_kept`).

    Returns:
        One :class:`RawDetections` per image, on the input's device.
    """
    scores, best_class = candidates.scores, candidates.class_ids  # (B, P) each
    if classes is not None:
        wanted = torch.as_tensor(list(classes), dtype=best_class.dtype, device=best_class.device)
        # (B, P), 0 where the best class is filtered out
        scores = scores * torch.isin(best_class, wanted)
    results = []
    for b in range(scores.shape[0]):
        idx = nms(
            candidates.boxes[b],
            scores[b],
            best_class[b],
            iou_threshold,
            score_threshold,
            max_detections=max_detections,
            max_candidates=MAX_CANDIDATES,
        )
        boxes, landmarks = candidates.boxes[b, idx], candidates.landmarks[b, idx]
        if merge_iou > 0 and len(idx):
            pool = ranked_candidates(scores[b], score_threshold, MAX_CANDIDATES)
            boxes, landmarks = merge_kept(
                candidates.boxes[b],
                scores[b],
                best_class[b],
                candidates.landmarks[b],
                idx,
                pool,
                merge_iou,
            )
        results.append(
            RawDetections(
                boxes=boxes,
                scores=scores[b, idx],
                class_ids=best_class[b, idx],
                landmarks=landmarks,
            )
        )
    return results


def merge_kept(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    landmarks: torch.Tensor,
    kept: torch.Tensor,
    pool: torch.Tensor,
    merge_iou: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge-NMS (YOLOv5's ``merge``): each kept box, and its landmarks, becomes the
    score-weighted mean of those of the ``pool`` candidates of its class whose box IoU
    with it is ``>= merge_iou``. Neighbouring anchors predict the same object with partly
    independent errors; their mean is the better estimate.

    Args:
        boxes: ``(P, 4)`` one image's candidate boxes, xyxy.
        scores, classes: ``(P,)`` their scores and class ids.
        landmarks: ``(P, K, 2)`` their points (``K`` may be 0).
        kept: ``(N,)`` indices of the boxes NMS kept; each must be in ``pool``.
        pool: ``(M,)`` indices of the candidates that entered NMS.
        merge_iou: in ``(0, 1]``.

    Returns:
        ``(N, 4)`` boxes and ``(N, K, 2)`` landmarks, in the input dtypes.
    """
    merged_boxes = torch.empty((len(kept), 4), dtype=torch.float32, device=boxes.device)
    merged_points = torch.empty(
        (len(kept), *landmarks.shape[1:]), dtype=torch.float32, device=boxes.device
    )
    blocks: list[tuple[slice | torch.Tensor, torch.Tensor]] = [(slice(None), pool)]
    if len(kept) * len(pool) > MERGE_DENSE_PAIRS:  # per class: far fewer pairs, same sums
        kept_classes, pool_classes = classes[kept], classes[pool]
        blocks = [
            (torch.nonzero(kept_classes == c).squeeze(1), pool[pool_classes == c])
            for c in torch.unique(kept_classes)
        ]
    for rows, members in blocks:  # rows: positions in kept; members: candidate indices
        k = kept[rows]
        member_boxes = boxes[members].float()  # (Mc, 4)
        iou = box_iou(boxes[k].float(), member_boxes)  # (Nc, Mc)
        voters = (iou >= merge_iou) & (classes[k][:, None] == classes[members][None, :])
        weights = voters * scores[members].float()[None, :]  # a kept box votes for itself
        total = weights.sum(1).clamp_min(torch.finfo(torch.float32).tiny)  # (Nc,)
        points = torch.einsum("nm,mkd->nkd", weights, landmarks[members].float())
        merged_boxes[rows] = (weights @ member_boxes) / total[:, None]
        merged_points[rows] = points / total[:, None, None]
    return merged_boxes.to(boxes.dtype), merged_points.to(landmarks.dtype)
